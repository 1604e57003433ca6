"""`dv-calib check`: is the stored extrinsic of a camera there, fresh and still right?

DROID's rule (`check_calibration_info(time_threshold=3600)`): a calibration older than an hour is stale: a
bumped camera mount or a re-clamped wrist camera does not announce itself. Beyond age, the extrinsic is
re-measured (a few poses through the same hand-eye pipeline) and compared with the stored one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np

from calibration.record import numbers_hash, pose_from_numbers
from robot.geometry import pose_error
from robot.launch.config import CalibratedPose, LaunchConfig

Status = Literal["ok", "missing", "stale", "off"]
EXTRINSIC_KEY = {"wrist": "T_ee_cam_wrist", "static": "T_base_cam_static"}


@dataclass(frozen=True)
class CheckResult:
    status: Status
    message: str

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "ok" else 1


def stored_pose(config: LaunchConfig, camera: str) -> CalibratedPose:
    return getattr(config.calibration, EXTRINSIC_KEY[camera])


def check_age(pose: CalibratedPose, camera: str, max_age_h: float, now: datetime | None = None) -> CheckResult:
    """Missing (never calibrated, or without a timestamp) or stale (older than `max_age_h`), else ok."""
    key = EXTRINSIC_KEY[camera]
    if not pose.calibrated:
        return CheckResult("missing", f"{key} is not calibrated: run `dv-calib handeye --camera {camera} "
                           "--write-launch FILE`")
    if not pose.timestamp:
        return CheckResult("missing", f"{key} has no timestamp, so its age is unknown: re-run dv-calib handeye")
    age_h = ((now or datetime.now(UTC)) - datetime.fromisoformat(pose.timestamp)).total_seconds() / 3600
    if age_h > max_age_h:
        return CheckResult("stale", f"{key} is stale: calibrated {age_h:.1f} h ago ({pose.timestamp}), "
                           f"older than {max_age_h:g} h; re-run dv-calib handeye --camera {camera}")
    if pose.hash and pose.hash != numbers_hash({"xyz": list(pose.xyz or ()), "quat_xyzw": list(pose.quat_xyzw or ())}):
        return CheckResult("off", f"{key} does not match its hash {pose.hash}: edited by hand or copied; "
                           "re-run dv-calib handeye")
    return CheckResult("ok", f"{key} calibrated {age_h * 60:.0f} min ago")


def compare(pose: CalibratedPose, measured: np.ndarray, camera: str, tol_mm: float, tol_deg: float) -> CheckResult:
    """Off when the re-measured extrinsic differs from the stored one by more than the tolerances."""
    key = EXTRINSIC_KEY[camera]
    dt, dr = pose_error(measured, pose_from_numbers(pose.xyz, pose.quat_xyzw))
    summary = (f"re-measured {key} differs by {dt * 1e3:.2f} mm / {dr:.3f} deg "
               f"(tolerance {tol_mm:g} mm / {tol_deg:g} deg)")
    if dt * 1e3 > tol_mm or dr > tol_deg:
        return CheckResult("off", f"{key} is off: {summary}; re-run dv-calib handeye --camera {camera}")
    return CheckResult("ok", summary)
