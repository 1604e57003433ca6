"""`dv-calib handeye --camera wrist|static [--sim] [--poses N] [--out FILE]`.

Writes a fragment for the launch config's `calibration` section: the extrinsic as xyz + quaternion xyzw
(`T_ee_cam_wrist` or `T_base_cam_static`), the method, held-out reprojection error, a UTC timestamp and a
sha256 hash of the numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from datetime import UTC, datetime

from scipy.spatial.transform import Rotation

from calibration.handeye import CalibrationError, HandEyeResult, calibrate, pose_error


def result_fragment(camera: str, result: HandEyeResult) -> dict:
    T = result.best.T
    key = "T_ee_cam_wrist" if camera == "wrist" else "T_base_cam_static"
    pose = {"xyz": [round(float(v), 6) for v in T[:3, 3]],
            "quat_xyzw": [round(float(v), 8) for v in Rotation.from_matrix(T[:3, :3]).as_quat()]}
    body = {
        key: pose,
        "method": result.best.method,
        "mode": result.mode,
        "heldout_reprojection_px": round(result.best.reproj_px, 4),
        "n_train": result.n_train,
        "n_holdout": result.n_holdout,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    body["hash"] = hashlib.sha256(json.dumps(pose, sort_keys=True).encode()).hexdigest()[:16]
    return {"calibration": {camera: body}}


def _handeye(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    if not args.sim:
        console.print("[red]hand-eye on the real arm is not implemented yet; use --sim[/red]")
        return 2
    from calibration.sim_board import collect_sim

    col = collect_sim(args.camera, n_poses=args.poses, noise_px=args.noise_px, seed=args.seed)
    console.print(f"{len(col.observations)} usable poses ({col.skipped_unreachable} unreachable, "
                  f"{col.skipped_not_visible} without the board in view)")
    try:
        result = calibrate(col.observations, col.mode, col.K)
    except CalibrationError as e:
        console.print(f"[red]calibration refused: {e}[/red]")
        return 1
    table = Table("method", "held-out reproj [px]", "err vs sim truth [mm]", "[deg]")
    for m, r in result.methods.items():
        dt, dr = pose_error(r.T, col.T_true)
        table.add_row(m, f"{r.reproj_px:.3f}", f"{dt * 1e3:.2f}", f"{dr:.3f}")
    console.print(table)
    frag = result_fragment(args.camera, result)
    text = json.dumps(frag, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
        console.print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dv-calib", description="Camera calibration for the DreamVLA rig.")
    sub = parser.add_subparsers(dest="command", required=True)
    he = sub.add_parser("handeye", help="hand-eye calibration (eye-in-hand wrist, eye-to-base static)")
    he.add_argument("--camera", choices=["wrist", "static"], required=True)
    he.add_argument("--sim", action="store_true", help="use the sim workcell (virtual board, true intrinsics)")
    he.add_argument("--poses", type=int, default=12)
    he.add_argument("--out", default=None, help="write the JSON fragment here (default: stdout)")
    he.add_argument("--noise-px", type=float, default=0.2, help="sim only: corner noise")
    he.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "handeye":
        return _handeye(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
