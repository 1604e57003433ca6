"""Launch configs (`LaunchConfig`, loaded from `launch/*.yaml`) and `dv-launch`, which runs a whole workcell."""

from robot.launch.config import (
    DEFAULT_LAUNCH_FILE,
    LaunchConfig,
    LaunchConfigError,
    load_launch_config,
    parse_launch_config,
)

__all__ = ["DEFAULT_LAUNCH_FILE", "LaunchConfig", "LaunchConfigError", "load_launch_config", "parse_launch_config"]
