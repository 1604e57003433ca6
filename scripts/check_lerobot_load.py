#!/usr/bin/env python
"""Write a dataset with teleop.dataset's writer, load it with the real lerobot `LeRobotDataset`, check every value.

Runs in a separate venv that holds lerobot (lerobot 0.6 needs Python >= 3.12 and its own torch), never in the
project's venv:

    python3.12 -m venv .venv-lerobot && .venv-lerobot/bin/pip install "lerobot[dataset]==0.6.1" pydantic
    .venv-lerobot/bin/python scripts/check_lerobot_load.py [--root DIR] [--codec auto|mp4v|h264]
                                                           [--backend auto|pyav|torchcodec|all]

For each codec (mp4v, the default, and h264): the meta files against what lerobot's own create() writes for the
same episodes (info.json keys and features, meta/episodes and data columns with their types, tasks.parquet,
stats.json keys); depth PNGs beside the layout bit-exact; then per decoding backend: len / num_episodes / tasks /
fps / video keys; for every frame the state, action and extra vectors bit-exact, timestamp == frame_index / fps,
indices, the task string, and both cameras' decoded RGB against what was written (mp4 is lossy: mean and max error
bounds, and the frame must be nearest to its own among its episode's frames, so an off-by-one decode fails); a
delta_timestamps window across episode boundaries (padding flags); stats.json as lerobot reads it. Last,
lerobot's dataset_tools.delete_episodes on it (reported: lerobot refuses to re-mux mp4v/mpeg4).
Exit status 0 only if every check passed. `torchcodec` is checked only where it loads (it needs FFmpeg's shared
libraries, e.g. Debian's libavdevice59); `--backend all` fails if it does not.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local root must never reach for the hub
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 (lerobot's reference encoder): errors only
warnings.filterwarnings("ignore", message="Cannot enable progress bars")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from dreamvla_client.conventions import ACTION_NAMES, STATE_LAYOUT  # noqa: E402
from teleop.dataset import CameraSpec, DatasetConfig, DatasetWriter  # noqa: E402

H, W, FPS = 48, 64, 15
LENGTHS = [5, 7, 4]
TASKS = ["open the drawer", "pick up the red cube"]
CAMS = {"wrist": CameraSpec(height=H, width=W, depth=True), "static": CameraSpec(height=H, width=W)}
MEAN_ERR, MAX_ERR = 6.0, 16.0  # uint8 levels in block interiors: mp4 is lossy (seen here: mp4v darkens by 2-3)


def config(codec: str = "mp4v") -> DatasetConfig:
    return DatasetConfig(
        fps=FPS, robot_type="franka", cameras=CAMS, video_codec=codec,
        state_names=list(STATE_LAYOUT), action_names=list(ACTION_NAMES),
        extra_features={"observation.capture_s": ["tick", "wrist", "static"]},
    )


def image(cam: str, ep: int, i: int) -> np.ndarray:
    """Left and right halves in two different colours that change every frame (catches RGB/BGR swaps,
    mirrored or transposed frames and off-by-one decodes)."""
    c = 0 if cam == "wrist" else 1
    left = [(40 + 60 * ep + 23 * i + 7 * c) % 180 + 40, 200 - 15 * i % 150, 60 + 40 * c]
    right = [90 + 30 * c, (50 + 31 * i + 17 * ep) % 160 + 40, (220 - 9 * i - 20 * ep) % 170 + 40]
    img = np.empty((H, W, 3), np.uint8)
    img[:, : W // 2], img[:, W // 2:] = left, right
    return img


def vectors(ep: int, i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 * ep + i)  # arbitrary float32 bits: any rounding would show
    return {"state": rng.standard_normal(7).astype(np.float32), "action": rng.standard_normal(7).astype(np.float32),
            "observation.capture_s": np.array([i / FPS, i / FPS + 0.003, i / FPS + 0.004], np.float32)}


def depth(ep: int, i: int) -> np.ndarray:
    return (np.arange(H * W, dtype=np.uint32).reshape(H, W) * 7 + 1000 * ep + i).astype(np.uint16)


def write(root: Path, codec: str) -> None:
    ds = DatasetWriter(root, config(codec))
    for ep, n in enumerate(LENGTHS):
        with ds.episode(TASKS[ep % 2]) as e:
            for i in range(n):
                v = vectors(ep, i)
                e.add_frame(v["state"], v["action"], images={c: image(c, ep, i) for c in CAMS},
                            depth={"wrist": depth(ep, i)}, extras={"observation.capture_s": v["observation.capture_s"]})
    ds.close()


class Checker:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def __call__(self, ok: bool, what: str) -> None:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)


def decoded_error(got, want: np.ndarray) -> tuple[float, float]:
    """Mean/max abs error over the block interiors (2 px from the halves' seam and the borders)."""
    g = (got.permute(1, 2, 0).numpy() * 255.0).round()
    m = np.zeros((H, W), bool)
    m[2:-2, 2: W // 2 - 4] = m[2:-2, W // 2 + 4: -2] = True
    d = np.abs(g - want.astype(np.float64))[m]
    return float(d.mean()), float(d.max())


def check_tools(root: Path, ck: Checker) -> bool:
    """lerobot's dataset tools (here delete_episodes) re-mux videos and must accept the recorded codec."""
    from lerobot.datasets import dataset_tools
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    try:
        out = dataset_tools.delete_episodes(LeRobotDataset("local/dv_check", root=root), episode_indices=[1],
                                            output_dir=root.parent / f"{root.name}-deleted", repo_id="local/dv_del")
    except ValueError as exc:
        if "vcodec" in str(exc):
            return False  # lerobot's tools re-encode only codecs lerobot itself writes (mp4v/mpeg4 is not one)
        ck(False, f"delete_episodes: {exc}")
        return True
    ok = (out.num_episodes, len(out)) == (2, LENGTHS[0] + LENGTHS[2])
    it = out[LENGTHS[0]]  # first frame of the old episode 2
    ok = ok and torch_equal(it["observation.state"], vectors(2, 0)["state"])
    ok = ok and decoded_error(it["observation.images.static"], image("static", 2, 0))[0] <= MEAN_ERR
    ck(ok, "delete_episodes: the remaining episodes do not read back")
    return True


def torch_equal(t, a: np.ndarray) -> bool:
    import torch

    return torch.equal(t, torch.from_numpy(a))


def check_backend(root: Path, backend: str, ck: Checker) -> dict[str, float]:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/dv_check", root=root, video_backend=backend)
    ck(len(ds) == sum(LENGTHS), f"[{backend}] len(ds) {len(ds)} != {sum(LENGTHS)}")
    ck(ds.num_episodes == len(LENGTHS), f"[{backend}] num_episodes {ds.num_episodes}")
    ck(ds.fps == FPS, f"[{backend}] fps {ds.fps}")
    ck(sorted(ds.meta.video_keys) == sorted(f"observation.images.{c}" for c in CAMS),
       f"[{backend}] video_keys {ds.meta.video_keys}")
    ck(list(ds.meta.tasks.index) == TASKS, f"[{backend}] tasks {list(ds.meta.tasks.index)}")
    worst = {"mean": 0.0, "max": 0.0}
    k = 0
    for ep, n in enumerate(LENGTHS):
        for i in range(n):
            it = ds[k]
            v = vectors(ep, i)
            ck(torch.equal(it["observation.state"], torch.from_numpy(v["state"])), f"[{backend}] state at {k}")
            ck(torch.equal(it["action"], torch.from_numpy(v["action"])), f"[{backend}] action at {k}")
            ck(torch.equal(it["observation.capture_s"], torch.from_numpy(v["observation.capture_s"])),
               f"[{backend}] extras at {k}")
            ck(float(it["timestamp"]) == np.float32(i / FPS), f"[{backend}] timestamp at {k}: {float(it['timestamp'])}")
            ck((int(it["episode_index"]), int(it["frame_index"]), int(it["index"])) == (ep, i, k),
               f"[{backend}] indices at {k}")
            ck(it["task"] == TASKS[ep % 2] and int(it["task_index"]) == ep % 2, f"[{backend}] task at {k}")
            for c in CAMS:
                got = it[f"observation.images.{c}"]
                ck(tuple(got.shape) == (3, H, W) and got.dtype == torch.float32,
                   f"[{backend}] {c} shape {tuple(got.shape)} {got.dtype} at {k}")
                errs = [decoded_error(got, image(c, ep, j))[0] for j in range(n)]
                mean, mx = decoded_error(got, image(c, ep, i))
                worst = {"mean": max(worst["mean"], mean), "max": max(worst["max"], mx)}
                ck(mean <= MEAN_ERR and mx <= MAX_ERR, f"[{backend}] {c} frame {k}: error mean {mean:.1f} max {mx:.0f}")
                ck(int(np.argmin(errs)) == i, f"[{backend}] {c} frame {k} decodes nearest to frame {np.argmin(errs)}")
            k += 1
    # A training-style window: 3 future actions and the previous static frame, across episode boundaries.
    dt = {"action": [0.0, 1 / FPS, 2 / FPS], "observation.images.static": [-1 / FPS, 0.0]}
    win = LeRobotDataset("local/dv_check", root=root, video_backend=backend, delta_timestamps=dt)
    last = LENGTHS[0] - 1  # last frame of episode 0: two padded future actions
    it = win[last]
    ck(it["action"].shape == (3, 7) and it["action_is_pad"].tolist() == [False, True, True],
       f"[{backend}] action window at {last}: pad {it['action_is_pad'].tolist()}")
    ck(torch.equal(it["action"][0], torch.from_numpy(vectors(0, last)["action"])), f"[{backend}] window action[0]")
    first = LENGTHS[0]  # first frame of episode 1: the previous frame is padded, not episode 0's
    it = win[first]
    ck(it["observation.images.static_is_pad"].tolist() == [True, False], f"[{backend}] image window pad at {first}")
    ck(decoded_error(it["observation.images.static"][1], image("static", 1, 0))[0] <= MEAN_ERR,
       f"[{backend}] window image at {first}")
    it = win[first + 2]
    ck(decoded_error(it["observation.images.static"][0], image("static", 1, 1))[0] <= MEAN_ERR,
       f"[{backend}] window previous image at {first + 2}")
    # stats.json as lerobot loads it
    allv = np.stack([vectors(ep, i)["state"] for ep, n in enumerate(LENGTHS) for i in range(n)]).astype(np.float64)
    st = ds.meta.stats["observation.state"]
    ck(np.allclose(st["mean"], allv.mean(0), atol=1e-6) and np.allclose(st["std"], allv.std(0), atol=1e-6),
       f"[{backend}] stats.json observation.state mean/std")
    ck(np.asarray(ds.meta.stats["observation.images.wrist"]["mean"]).shape == (3, 1, 1),
       f"[{backend}] image stats shape")
    return worst


def reference(root: Path) -> Path:
    """The same episodes written by lerobot's own LeRobotDataset.create / add_frame / save_episode / finalize."""
    import av
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    av.logging.set_level(av.logging.ERROR)
    cfg = config()
    feats = {f"observation.images.{c}": {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"]}
             for c in CAMS}
    for k, names in [("observation.state", cfg.state_names), ("action", cfg.action_names), *cfg.extra_features.items()]:
        feats[k] = {"dtype": "float32", "shape": [len(names)], "names": names}
    ref = root.parent / f"{root.name}-lerobot"
    ds = LeRobotDataset.create("local/dv_reference", fps=FPS, root=ref, robot_type=cfg.robot_type, features=feats)
    for ep, n in enumerate(LENGTHS):
        for i in range(n):
            v = vectors(ep, i)
            ds.add_frame({**{f"observation.images.{c}": image(c, ep, i) for c in CAMS}, "observation.state": v["state"],
                          "action": v["action"], "observation.capture_s": v["observation.capture_s"],
                          "task": TASKS[ep % 2]})
        ds.save_episode()
    ds.finalize()
    return ref


def compare_schema(ours: Path, ref: Path, ck: Checker) -> None:
    """Our meta files against what lerobot itself writes for the same episodes (keys, columns, types)."""
    import json

    import pyarrow.parquet as pq

    a, b = (json.loads((r / "meta/info.json").read_text()) for r in (ours, ref))
    ck(set(a) == set(b), f"info.json keys: ours lack {set(b) - set(a)}, extra {set(a) - set(b)}")
    ck(set(a["features"]) == set(b["features"]), f"features: {set(a['features']) ^ set(b['features'])}")
    for k, f in b["features"].items():
        g = a["features"].get(k, {})
        ck({x: g.get(x) for x in ("dtype", "shape", "names")} == {x: f.get(x) for x in ("dtype", "shape", "names")},
           f"feature {k}: ours {g} vs lerobot {f}")
        if f["dtype"] == "video":  # the stream-derived entries (lerobot adds its encoder settings on top)
            probed = ("video.height", "video.width", "video.pix_fmt", "video.fps", "video.channels", "has_audio",
                      "is_depth_map")
            ck(all(g["info"].get(x) == f["info"][x] for x in probed),
               f"feature {k} info: ours {g.get('info')} vs lerobot {f['info']}")
    ea = pq.read_schema(ours / "meta/episodes/chunk-000/file-000.parquet")
    eb = pq.read_schema(ref / "meta/episodes/chunk-000/file-000.parquet")
    ta = {f.name: str(f.type) for f in ea if not f.name.startswith("dv/")}
    tb = {f.name: str(f.type) for f in eb}
    ck(ta == tb, f"meta/episodes columns differ: {sorted(set(ta.items()) ^ set(tb.items()))}")
    da, db = (pq.read_schema(r / "data/chunk-000/file-000.parquet") for r in (ours, ref))
    ck({f.name: str(f.type) for f in da} == {f.name: str(f.type) for f in db}, f"data columns: {da} vs {db}")
    qa, qb = (pq.read_table(r / "meta/tasks.parquet") for r in (ours, ref))
    ck(qa.to_pandas().equals(qb.to_pandas()), f"tasks.parquet: {qa.to_pandas()} vs {qb.to_pandas()}")
    sa, sb = (json.loads((r / "meta/stats.json").read_text()) for r in (ours, ref))
    ck({k: sorted(v) for k, v in sa.items()} == {k: sorted(v) for k, v in sb.items()}, "stats.json keys differ")


def available_backends() -> list[str]:
    out = ["pyav"]
    try:
        importlib.import_module("torchcodec.decoders")
        out.append("torchcodec")
    except (ImportError, OSError, RuntimeError):
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, help="where to write the dataset (default: a temporary folder)")
    ap.add_argument("--codec", default="auto", choices=["auto", "mp4v", "h264"],
                    help="auto: mp4v (the default) and h264 (needs PyAV, which lerobot brings)")
    ap.add_argument("--backend", default="auto", choices=["auto", "pyav", "torchcodec", "all"],
                    help="auto: every backend that loads here; all: pyav and torchcodec, failing if one is missing")
    args = ap.parse_args(argv)
    import lerobot

    have = available_backends()
    want = {"auto": have, "all": ["pyav", "torchcodec"]}.get(args.backend, [args.backend])
    tmp = None if args.root else tempfile.mkdtemp(prefix="dv-lerobot-")
    root = args.root or Path(tmp) / "ds"
    if root.exists():
        shutil.rmtree(root)
    ck = Checker()
    codecs = ["mp4v", "h264"] if args.codec == "auto" else [args.codec]
    try:
        print(f"lerobot {lerobot.__version__}; decoders here: {', '.join(have)}; datasets under {root}")
        for codec in codecs:
            croot = root / codec
            write(croot, codec)
            for c, spec in CAMS.items():
                if spec.depth:
                    for ep, n in enumerate(LENGTHS):
                        for i in range(n):
                            p = croot / f"depth/observation.depth.{c}/chunk-000/file-{ep:03d}/{i:06d}.png"
                            ok = p.exists() and np.array_equal(cv2.imread(str(p), cv2.IMREAD_UNCHANGED), depth(ep, i))
                            ck(ok, f"{codec}: depth {c} episode {ep} frame {i} not bit-exact")
            n0 = ck.passed + len(ck.failures)
            compare_schema(croot, reference(croot), ck)
            print(f"{codec}: meta vs lerobot's own create() of the same episodes: "
                  f"{ck.passed + len(ck.failures) - n0} checks; depth PNGs bit-exact")
            for b in want:
                if b not in have:
                    ck(False, f"backend {b} cannot be loaded here")
                    continue
                w = check_backend(croot, b, ck)
                print(f"  {b}: {len(LENGTHS)} episodes, {sum(LENGTHS)} frames, 2 cameras loaded; RGB error "
                      f"worst mean {w['mean']:.2f}, worst max {w['max']:.0f} (bounds {MEAN_ERR}, {MAX_ERR:.0f})")
            tools = check_tools(croot, ck)
            print(f"  lerobot dataset_tools.delete_episodes: {'works' if tools else 'refuses this codec'}")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    for f in ck.failures:
        print("FAIL", f)
    print(f"{ck.passed} passed, {len(ck.failures)} failed")
    return 0 if not ck.failures else 1


if __name__ == "__main__":
    sys.exit(main())
