"""verify(root): is every indexed episode consistent?  repair(root): back to the longest verified prefix."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from robot.video import count_video_frames
from teleop.dataset import layout as L
from teleop.dataset.stats import aggregate, close, vector_stats
from teleop.dataset.writer import load_manifests, publish, write_meta


@dataclass
class Report:
    ok: bool = True
    episodes: int = 0
    frames: int = 0
    errors: list[str] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)  # interrupted/pending work: not errors
    bad_episode: int | None = None  # first episode that failed

    def error(self, msg: str, ep: int | None = None) -> None:
        self.ok = False
        self.errors.append(msg)
        if ep is not None and (self.bad_episode is None or ep < self.bad_episode):
            self.bad_episode = ep


def _load_cfg(root: Path) -> L.DatasetConfig:
    return L.DatasetConfig.model_validate_json((root / L.DV_CONFIG).read_text())


def verify_episode(root: Path, cfg: L.DatasetConfig, m: dict[str, Any], expect_from: int,
                   check_hashes: bool = True) -> list[str]:
    """Problems with one published episode (empty list = fine)."""
    errs: list[str] = []
    ep, n = m["episode_index"], m["length"]
    cf = L.chunk_file(ep)
    if m.get("status") != "complete":
        errs.append(f"episode {ep}: manifest status {m.get('status')!r}")
    if m["dataset_from_index"] != expect_from:
        errs.append(f"episode {ep}: dataset_from_index {m['dataset_from_index']} != {expect_from} (index gap)")
    for rel, info in m["files"].items():
        p = root / rel
        if not p.exists():
            errs.append(f"episode {ep}: missing {rel}")
        elif check_hashes and L.sha256_tree(p) != info["sha256"]:
            errs.append(f"episode {ep}: checksum mismatch in {rel}")
    if errs:
        return errs
    try:
        t = pq.read_table(root / L.DATA_PATH.format(**cf))
    except Exception as exc:  # noqa: BLE001 - any unreadable parquet is a verification failure
        return [f"episode {ep}: data parquet unreadable: {exc}"]
    if t.num_rows != n:
        errs.append(f"episode {ep}: {t.num_rows} parquet rows, manifest says {n}")
        return errs
    fi = t.column("frame_index").to_numpy()
    idx = t.column("index").to_numpy()
    if not np.array_equal(fi, np.arange(n)):
        errs.append(f"episode {ep}: frame_index not 0..{n - 1}")
    if not np.array_equal(idx, np.arange(expect_from, expect_from + n)):
        errs.append(f"episode {ep}: global index not contiguous from {expect_from}")
    if not np.all(t.column("episode_index").to_numpy() == ep):
        errs.append(f"episode {ep}: episode_index column wrong")
    for cam, spec in cfg.cameras.items():
        v = count_video_frames(root / L.VIDEO_PATH.format(video_key=L.video_key(cam), **cf))
        if v != n:
            errs.append(f"episode {ep}: video {cam} has {v} frames, parquet has {n} rows")
        if spec.depth:
            d = len(list((root / L.DEPTH_PATH.format(depth_key=L.depth_key(cam), **cf)).glob("*.png")))
            if d != n:
                errs.append(f"episode {ep}: depth {cam} has {d} frames, parquet has {n} rows")
    meta = pq.read_table(root / L.EPISODES_PATH.format(**cf)).to_pylist()
    if len(meta) != 1 or meta[0]["episode_index"] != ep or meta[0]["length"] != n or \
            meta[0]["dataset_from_index"] != expect_from or meta[0]["dataset_to_index"] != expect_from + n:
        errs.append(f"episode {ep}: meta/episodes row inconsistent")
    for k in L.vector_features(cfg):
        arr = np.stack(t.column(k).to_numpy(zero_copy_only=False)).astype(np.float64)
        s = vector_stats(arr)
        if not all(close(s[x], m["stats"][k][x]) for x in ("mean", "std", "min", "max", "count")):
            errs.append(f"episode {ep}: stats for {k} do not match the data")
    return errs


def verify(root: str | Path, check_hashes: bool = True) -> Report:
    root = Path(root)
    r = Report()
    try:
        info = json.loads((root / L.INFO).read_text())
        cfg = _load_cfg(root)
    except (OSError, ValueError) as exc:
        r.error(f"cannot open dataset: {exc}")
        return r
    if info.get("codebase_version") != L.CODEBASE_VERSION:
        r.error(f"codebase_version {info.get('codebase_version')!r} != {L.CODEBASE_VERSION}")
    if info.get("features") != L.features(cfg):
        r.error("info.json features do not match the recorded config")
    manifests = load_manifests(root)
    n_ep = info.get("total_episodes", 0)
    for i, m in enumerate(manifests):
        if m["episode_index"] != i:
            r.error(f"committed episodes not contiguous: position {i} holds episode {m['episode_index']}", i)
            break
    if len(manifests) < n_ep:
        r.error(f"info.json counts {n_ep} episodes but only {len(manifests)} are committed", len(manifests))
    indexed = manifests[:n_ep]
    for m in manifests[n_ep:]:
        r.flagged.append(f"episode {m['episode_index']}: committed, not yet indexed (rolled forward on next open)")
    st = root / L.STAGING
    if st.exists():
        r.flagged += [f"{d.name}: interrupted episode (not committed; deleted on next open)" for d in st.iterdir()]
    frm = 0
    for m in indexed:
        for e in verify_episode(root, cfg, m, frm, check_hashes):
            r.error(e, m["episode_index"])
        frm += m["length"]
    r.episodes, r.frames = len(indexed), frm
    if info.get("total_frames") != frm:
        r.error(f"info.json total_frames {info.get('total_frames')} != {frm}")
    # meta/tasks.parquet and meta/stats.json are rewritten just before info.json, so after a crash in that
    # window they may already describe the committed-but-not-indexed episodes: both states are consistent.
    candidates = [indexed] + ([manifests] if len(manifests) > n_ep else [])
    try:
        stats = json.loads((root / L.STATS).read_text())
        tasks = pq.read_table(root / L.TASKS).column("task").to_pylist()
    except (OSError, ValueError, KeyError) as exc:
        r.error(f"meta unreadable: {exc}")
        return r

    def stats_ok(ms: list[dict[str, Any]]) -> bool:
        want = aggregate([m["stats"] for m in ms]) if ms else {}
        return set(want) <= set(stats) and all(
            all(close(stats[k][x], s[x]) for x in s) for k, s in want.items())

    if not any(stats_ok(c) for c in candidates):
        r.error("stats.json inconsistent with the episodes' data (run `dv-data stats`)")
    if not any(tasks == list(dict.fromkeys(m["task"] for m in c)) for c in candidates):
        r.error(f"tasks.parquet {tasks} does not match the tasks the episodes use")
    return r


def repair(root: str | Path) -> Report:
    """Roll forward committed episodes, drop interrupted ones, and cut back to the longest verified prefix.

    Episodes after the first bad one are moved to ``.dv/quarantine/<stamp>/`` (never deleted) so indices
    stay contiguous and no positional metadata can point at the wrong video.
    """
    root = Path(root)
    cfg = _load_cfg(root)
    st = root / L.STAGING
    if st.exists():
        shutil.rmtree(st)
    manifests = load_manifests(root)
    good: list[dict[str, Any]] = []
    frm = 0
    for i, m in enumerate(manifests):
        if m["episode_index"] != i:
            break
        publish(root, m)
        if verify_episode(root, cfg, m, frm):
            break
        good.append(m)
        frm += m["length"]
    q = root / L.QUARANTINE / time.strftime("%Y%m%dT%H%M%S")
    for m in manifests[len(good):]:
        ep = m["episode_index"]
        dst = q / f"episode_{ep:06d}"
        dst.mkdir(parents=True, exist_ok=True)
        for rel in m["files"]:
            p = root / rel
            if p.exists() and m in manifests[len(good):]:
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(p), dst / rel)
        shutil.move(str(L.committed_dir(root, ep)), dst / "committed")
    for d in (root / L.COMMITTED).glob("episode_*") if (root / L.COMMITTED).exists() else []:
        if not (d / L.MANIFEST).exists():  # a committed dir without manifest cannot be trusted
            shutil.rmtree(d)
    write_meta(root, cfg, good)
    return verify(root)
