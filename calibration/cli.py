"""`dv-calib intrinsics | handeye | check`: calibrate the rig's two D415s and keep the results in the launch file.

- `intrinsics --launch FILE [--sim] [--charuco] [--camera ROLE] [--out FILE] [--write-launch FILE]`: each
  camera's intrinsics and depth scale (factory values from the device, the sim's ground truth, or a ChArUco
  re-calibration with its RMS reprojection error).
- `handeye --camera wrist|static (--launch FILE | --sim) [--render] [--poses N] [--dynamics F]
  [--board-in-base X,Y,Z] [--out FILE] [--write-launch FILE]`: the extrinsic (`T_ee_cam_wrist` or
  `T_base_cam_static`) as xyz + quaternion xyzw, the winning method, its held-out reprojection error, a UTC
  timestamp and a hash of the numbers. A real rig's launch file drives its FR3 around the pose the operator
  jogged it to (board in view) and reads its D415 (`calibration.rig`); a sim one drives franky-sim. Both go
  through the same collector (`calibration.collect`): envelope check before each move, dynamics at most the
  file's `safety.relative_dynamics_factor`, the e-stop console when the file requires one, settled arm, fresh
  frame; an arm error or an e-stop latch stops the arm and refuses the calibration. The rig (arm, the one
  camera, e-stop) is planned and opened as a typed workcell (`calibration.workcell`, `robot.workcell`), as
  every dv-* command opens its devices.
- `check --launch FILE --camera wrist|static [--sim] [--max-age-h 1] [--tol-mm 2] [--tol-deg 0.5]
  [--age-only]`: exit 0 when the stored extrinsic is present, fresh and agrees with a re-measurement (a few
  poses through the same collector, real rig or sim); 1 with the reason otherwise.

Exit codes: 0 done / ok, 1 calibration refused or check failed, 2 usage error (bad arguments or launch file) or a
device that is missing or failing (one line naming the camera or the arm and what to check).
Written entries go only into the file's `calibration:` section (`calibration.launch_file`). A safety override in
force (`estop.allow_real_robot_without_estop`) is printed in red at the start and the end, and recorded in the
hand-eye entry it produced.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.text import Text

from calibration.collect import CALIBRATION_DYNAMICS
from calibration.handeye import CalibrationError, HandEyeResult, calibrate
from calibration.record import pose_numbers, stamped
from robot.errors import UsageError  # bad arguments or an unusable launch file: exit 2 with the message
from robot.geometry import pose_error

console = Console(stderr=True, soft_wrap=True)  # messages name files: never wrap them


def _error(message: str) -> None:
    """In red, verbatim: messages quote YAML and field paths, whose brackets must not read as rich markup."""
    console.print(Text(message, style="red"))


def result_fragment(camera: str, result: HandEyeResult, overrides: list[str] | None = None) -> dict[str, Any]:
    """`{"calibration": {"T_ee_cam_wrist" | "T_base_cam_static": entry}}`, the launch file's own shape; the safety
    overrides in force while it was measured are part of the entry."""
    from calibration.check import EXTRINSIC_KEY

    extra: dict[str, Any] = {"overrides": overrides} if overrides else {}
    entry = stamped(pose_numbers(result.best.T), method=result.best.method,
                    reprojection_px=round(result.best.reproj_px, 4), **extra)
    return {"calibration": {EXTRINSIC_KEY[camera]: entry}}


def overrides(config: Any) -> list[str]:
    """The safety overrides a calibration run is under (dv-calib never talks to a policy server)."""
    from robot.launch.config import override_notes

    return override_notes(config is not None and config.without_estop, None)


def _load(path: str | None, sim: bool) -> Any:
    """The launch config at `path` (None: none given); `--sim` is refused with a real rig's file."""
    if path is None:
        return None
    from robot.launch.config import LaunchConfigError, load_launch_config

    try:
        config = load_launch_config(path)
    except LaunchConfigError as e:
        raise UsageError(str(e)) from None
    if sim and config.robot.kind != "sim":
        raise UsageError(f"{path}: --sim needs a sim launch file (robot.kind: sim), this one is "
                         f"{config.robot.kind!r}; sim results must not land in a real rig's file")
    return config


def _emit(fragment: dict[str, Any], args: argparse.Namespace) -> int:
    """Print or write the JSON fragment, and merge it into the launch file when asked."""
    text = json.dumps(fragment, indent=2)
    if args.out:
        try:
            Path(args.out).write_text(text + "\n")
        except OSError as e:
            raise UsageError(f"cannot write --out {args.out}: {e.strerror}") from None
        console.print(f"wrote {args.out}")
    elif not args.write_launch:
        print(text)
    if args.write_launch:
        from calibration.launch_file import LaunchWriteError, write_calibration

        try:
            write_calibration(args.write_launch, fragment["calibration"])
        except LaunchWriteError as e:
            _error(str(e))
            return 1
        console.print(f"updated the calibration section of {args.write_launch}")
    return 0


# ------------------------------------------------------------------------------------------------ handeye


def _measure(args: argparse.Namespace, config: Any,
             launch: Path | None) -> tuple[HandEyeResult, Any, np.ndarray | None]:
    """Collect (sim, or the rig the launch file `launch` names) and calibrate: (result, collection, sim truth or
    None). The real rig is planned and opened as a workcell with only `args.camera` (`calibration.workcell`)."""
    if config is None or config.robot.kind == "sim":
        sim = _collect_sim(args, launch)
        col, truth = sim.collection, sim.T_true
    else:
        col, truth = _collect_real(args, launch), None
    console.print(Text(col.summary()))
    for why in col.refused:
        console.print(Text(f"refused {why}", style="yellow"))
    return calibrate(col.observations, col.mode, col.K, col.dist), col, truth


def _collect_sim(args: argparse.Namespace, launch: Path | None) -> Any:
    """The hand-eye collection in the sim: the board projected on a sim workcell opened without cameras (the
    board is projected through the camera's true model), or rendered as a plate added to the workcell's scene
    (`--render`)."""
    from calibration import sim_board
    from calibration.workcell import calibration_plan
    from robot.workcell import open_workcell

    plan = calibration_plan(launch, [], sim=True, seed=args.seed)
    if args.render:
        with sim_board.rendered_board_workcell(plan, args.camera) as cell:
            return sim_board.collect_sim_rendered(cell, args.camera, n_poses=args.poses, seed=args.seed,
                                                  dynamics=args.dynamics)
    with contextlib.ExitStack() as stack:
        cell = open_workcell(plan, stack)
        return sim_board.collect_sim(cell, args.camera, n_poses=args.poses, noise_px=args.noise_px, seed=args.seed,
                                     dynamics=args.dynamics)


def _collect_real(args: argparse.Namespace, launch: Path | None) -> Any:
    """The hand-eye collection on the real rig: its workcell opened (one line naming a device that cannot be),
    the collection run on it, every device closed after; an arm or camera failure mid-run names that device."""
    import franky

    from calibration.rig import collect_real
    from calibration.workcell import calibration_plan
    from robot.cameras import CameraError
    from robot.devices import ARM_CHECK, camera_check
    from robot.errors import opening
    from robot.workcell import open_workcell

    plan = calibration_plan(launch, [args.camera])
    assert plan.launch is not None  # a real rig's plan comes from its launch file
    with contextlib.ExitStack() as stack:
        cell = open_workcell(plan, stack)
        with opening(f"arm (FCI at {plan.launch.robot.arm.host})", ARM_CHECK, franky.Exception), \
                opening(f"camera {args.camera!r}", camera_check(plan.cameras[0]), CameraError):
            return collect_real(cell, args.camera, args.poses, seed=args.seed, board_in_base=args.board_in_base,
                                dynamics=args.dynamics, progress=lambda m: console.print(Text(m)))


def _handeye(args: argparse.Namespace) -> int:
    from rich.table import Table

    path = args.launch or args.write_launch
    config = _load(path, args.sim)
    if config is None and not args.sim:
        raise UsageError("name the rig with --launch FILE (a real rig's or a sim one), or use --sim")
    try:
        result, _, truth = _measure(args, config, Path(path) if path else None)
    except CalibrationError as e:
        _error(f"calibration refused: {e}")
        return 1
    columns = ["method", "held-out reproj [px]"] + (["err vs sim truth [mm]", "[deg]"] if truth is not None else [])
    table = Table(*columns)
    for m, r in result.methods.items():
        row = [m, f"{r.reproj_px:.3f}"]
        if truth is not None:
            dt, dr = pose_error(r.T, truth)
            row += [f"{dt * 1e3:.2f}", f"{dr:.3f}"]
        table.add_row(*row)
    console.print(table)
    console.print(f"best: {result.best.method}, held-out reprojection {result.best.reproj_px:.3f} px "
                  f"({result.n_train} training, {result.n_holdout} held-out poses)")
    return _emit(result_fragment(args.camera, result, overrides(config)), args)


# ------------------------------------------------------------------------------------------------ intrinsics


def _intrinsics(args: argparse.Namespace) -> int:
    from calibration import intrinsics as intr
    from calibration.workcell import calibration_plan, open_cameras

    config = _load(args.launch, args.sim)
    roles = [args.camera] if args.camera else ["static", "wrist"]
    sim = config.robot.kind == "sim"
    entries = {}
    with contextlib.ExitStack() as stack:
        cameras = open_cameras(calibration_plan(Path(args.launch), roles, sim=args.sim), stack)
        numbers = intr.sim_intrinsics(cameras) if sim else intr.factory_intrinsics(cameras)
        for role in roles:
            n = numbers[role]
            console.print(f"{role}: {n['width']}x{n['height']} fx {n['fx']:.2f} fy {n['fy']:.2f} cx {n['cx']:.2f} "
                          f"cy {n['cy']:.2f} {n['model']} depth scale {n['depth_scale_m']}", highlight=False)
            if not args.charuco:
                entries[role] = intr.entry(n, "sim" if sim else "factory")
                continue
            try:
                entries[role] = _charuco_entry(cameras[role], n, sim, args)
            except CalibrationError as e:
                _error(f"{role}: ChArUco calibration refused: {e}")
                return 1
    return _emit({"calibration": {"intrinsics": entries}}, args)


def _charuco_entry(camera: Any, truth: dict[str, Any], sim: bool, args: argparse.Namespace) -> dict[str, Any]:
    """The ChArUco re-calibration of the opened `camera`, whose reported intrinsics are `truth`."""
    from calibration import intrinsics as intr
    from calibration.charuco import BoardSpec, camera_matrix

    role, size = camera.name, (truth["width"], truth["height"])
    if sim:  # views of a board held in front of the camera: corners projected through the true camera
        K = camera_matrix(truth["fx"], truth["fy"], truth["cx"], truth["cy"])
        views = intr.synthetic_views(K, size, n=args.views, noise_px=args.noise_px, seed=args.seed)
    else:
        console.print(f"{role}: move the ChArUco board through the view ({args.views * 5} frames)")
        images = intr.capture_images(camera, args.views * 5)
        views, missed = intr.views_from_images(images[::5], BoardSpec())
        if not views:
            raise CalibrationError(f"the ChArUco board was not visible in any of {missed} frames")
    K, dist, rms = intr.charuco_calibrate(views, size)
    console.print(f"{role}: ChArUco from {len(views)} views: fx {K[0, 0]:.2f} fy {K[1, 1]:.2f} cx {K[0, 2]:.2f} "
                  f"cy {K[1, 2]:.2f}, RMS reprojection {rms:.3f} px", highlight=False)
    return intr.entry(intr.charuco_numbers(K, dist, size, truth["depth_scale_m"]), "charuco", rms)


# ------------------------------------------------------------------------------------------------ check


def _check(args: argparse.Namespace) -> int:
    from calibration.check import check_age, compare, stored_pose

    config = _load(args.launch, args.sim)
    pose = stored_pose(config, args.camera)
    result = check_age(pose, args.camera, args.max_age_h)
    if result.status == "ok" and not args.age_only:
        console.print(result.message)
        try:
            measured, _, _ = _measure(args, config, Path(args.launch))
        except CalibrationError as e:
            _error(f"re-measurement refused: {e}")
            return 1
        result = compare(pose, measured.best.T, args.camera, args.tol_mm, args.tol_deg)
    style = "green" if result.status == "ok" else "yellow"
    console.print(Text.assemble((result.status.upper(), style), f": {result.message}"))
    return result.exit_code


# ------------------------------------------------------------------------------------------------ main


def _xyz(text: str) -> np.ndarray:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not np.all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"expected X,Y,Z in metres, got {text!r}")
    return np.array(values)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dv-calib", description="Camera calibration for the DreamVLA rig.")
    sub = parser.add_subparsers(dest="command", required=True)
    camera = {"choices": ["wrist", "static"]}

    def motion_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dynamics", type=float, default=CALIBRATION_DYNAMICS,
                       help="relative dynamics factor of the calibration moves, capped by the launch file's "
                       "safety.relative_dynamics_factor (default %(default)s)")
        p.add_argument("--board-in-base", type=_xyz, default=None, metavar="X,Y,Z",
                       help="real wrist camera: the board's centre in base (m); the poses pivot about it "
                       "(default: a point 0.35 m in front of the camera at the start pose)")

    def sim_args(p: argparse.ArgumentParser, render: bool = True) -> None:
        p.add_argument("--sim", action="store_true", help="the sim workcell (implied by a sim launch file)")
        p.add_argument("--noise-px", type=float, default=0.2, help="sim only: corner noise in pixels")
        if render:
            p.add_argument("--render", action="store_true",
                           help="sim only: render the board in the scene and detect its corners (default: project)")
        p.add_argument("--seed", type=int, default=0)

    def output_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", default=None, help="write the JSON fragment here (default: stdout)")
        p.add_argument("--write-launch", default=None, metavar="FILE",
                       help="merge the result into this launch file's calibration section")

    he = sub.add_parser("handeye", help="hand-eye calibration (eye-in-hand wrist, eye-to-base static)")
    he.add_argument("--camera", required=True, **camera)
    he.add_argument("--launch", default=None, help="launch file of the rig (robot, cameras, safety, e-stop, "
                    "intrinsics); default: the --write-launch file")
    he.add_argument("--poses", type=int, default=12)
    motion_args(he)
    sim_args(he)
    output_args(he)

    it = sub.add_parser("intrinsics", help="store each camera's intrinsics and depth scale")
    it.add_argument("--launch", required=True, help="launch file naming the cameras")
    it.add_argument("--camera", default=None, help="one role only (default: both)", **camera)
    it.add_argument("--charuco", action="store_true", help="re-calibrate from ChArUco views instead")
    it.add_argument("--views", type=int, default=25, help="ChArUco views")
    sim_args(it, render=False)
    output_args(it)

    ck = sub.add_parser("check", help="warn when a stored extrinsic is missing, stale or off")
    ck.add_argument("--launch", required=True)
    ck.add_argument("--camera", required=True, **camera)
    ck.add_argument("--max-age-h", type=float, default=1.0, help="older is stale (DROID: 1 h)")
    ck.add_argument("--tol-mm", type=float, default=2.0)
    ck.add_argument("--tol-deg", type=float, default=0.5)
    ck.add_argument("--poses", type=int, default=8, help="poses for the re-measurement")
    ck.add_argument("--age-only", action="store_true", help="check presence and age only, no re-measurement")
    motion_args(ck)
    sim_args(ck)
    ck.set_defaults(seed=1)  # other poses than the calibration's default seed: an independent re-measurement
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name in ("poses", "views", "max_age_h", "tol_mm", "tol_deg", "noise_px", "dynamics"):
        value = getattr(args, name, None)
        if value is not None and (value < 0 or (name in ("poses", "views") and value < 1)
                                  or (name == "dynamics" and not 0 < value <= 1)):
            rule = "in (0, 1]" if name == "dynamics" else "positive"
            _error(f"dv-calib: --{name.replace('_', '-')} must be {rule}, got {value}")
            return 2
    from robot.cli_support import announce_overrides
    from robot.errors import DeviceUnavailable

    try:
        notes = overrides(_load(args.launch or getattr(args, "write_launch", None), args.sim))
    except UsageError as e:
        _error(f"dv-calib {args.command}: {e}")
        return 2
    announce_overrides(console, notes)
    try:
        return {"handeye": _handeye, "intrinsics": _intrinsics, "check": _check}[args.command](args)
    except (UsageError, DeviceUnavailable) as e:
        _error(f"dv-calib {args.command}: {e}")
        return 2
    finally:
        announce_overrides(console, notes)


if __name__ == "__main__":
    sys.exit(main())
