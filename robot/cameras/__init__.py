"""Camera drivers behind one interface (`Camera`), built from a config by `make_camera`.

Vendor SDKs are imported only by the driver modules (`realsense`, `sim`), which `make_camera` loads on demand.
"""

from robot.cameras.base import (
    Camera,
    CameraConfig,
    CameraError,
    CameraStats,
    CameraTimeout,
    Frame,
    LatestFrame,
    camera_config_from_dict,
    make_camera,
    register_camera,
)

__all__ = [
    "Camera",
    "CameraConfig",
    "CameraError",
    "CameraStats",
    "CameraTimeout",
    "Frame",
    "LatestFrame",
    "camera_config_from_dict",
    "make_camera",
    "register_camera",
]
