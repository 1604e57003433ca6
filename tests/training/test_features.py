"""dv-features: correct targets on synthetic recordings, crash-safe resumable builds, stale caches refused."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from policy_server.model.config import ModelConfig, VisionConfig, preset
from policy_server.model.knowledge import flow_motion_mask
from policy_server.model.vision import crop_box, preprocess_images
from policy_server.training import features as features_mod
from policy_server.training.features import build, model_images
from policy_server.training.features_cache import (
    EPISODES,
    MANIFEST,
    FeatureCache,
    FeatureCacheError,
    array_names,
    cache_root,
    feature_spec,
)
from policy_server.training.features_cli import main as dv_features
from policy_server.training.features_source import depth_metres
from teleop.dataset import layout as L

TINY = preset("tiny")


def snapshot(cache: FeatureCache) -> dict[str, np.ndarray]:
    """Every array of an open cache, copied out of its memory maps."""
    return {name: np.array(np.load(cache.root / f"{name}.npy")) for name in array_names(cache.spec)}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ------------------------------------------------------------------------------------------- targets

SQUARE, STEP, SIZE = 32, 4, 128  # source px: a 32-px textured square moving 4 px per frame in a 128-px frame
TEXTURE = np.random.default_rng(0).integers(0, 2, (SQUARE // 8, SQUARE // 8)).astype(np.uint8)  # not periodic


def moving_square(ep: int, i: int, cam: str) -> tuple[np.ndarray, np.ndarray]:
    """A static smooth background; on 'static' the square moves right, on 'wrist' it moves down."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    rgb = np.stack([90 + 40 * np.sin(x / 9), 110 + 40 * np.cos(y / 13), 100 + 0 * x], axis=-1).astype(np.uint8)
    top, left = (16, 8 + STEP * i) if cam == "static" else (8 + STEP * i, 40)
    checks = np.kron(TEXTURE, np.ones((8, 8), np.uint8))[..., None]
    rgb[top : top + SQUARE, left : left + SQUARE] = checks * np.array([230, 40, 40], np.uint8) + (1 - checks) * 20
    return rgb, np.full((SIZE, SIZE), 800, np.uint16)


def square_cells(cam: str, frames: list[int], grid: int, cover: str) -> np.ndarray:
    """(grid^2,) bool over the 8-px model patches: 'any' = the square touches the patch in one of `frames`,
    'all' = the square fills the patch in one of them (model px = source px / 2)."""
    out = np.zeros((grid, grid), bool)
    patch = SIZE // 2 // grid * 2  # source px per model patch
    for i in frames:
        top, left = (16, 8 + STEP * i) if cam == "static" else (8 + STEP * i, 40)
        for r in range(grid):
            for c in range(grid):
                y0, x0 = r * patch, c * patch
                oy = min(y0 + patch, top + SQUARE) - max(y0, top)
                ox = min(x0 + patch, left + SQUARE) - max(x0, left)
                out[r, c] |= (oy > 0 and ox > 0) if cover == "any" else (oy == patch and ox == patch)
    return out.ravel()


def dilate(cells: np.ndarray, grid: int) -> np.ndarray:
    m = torch.from_numpy(cells.reshape(1, 1, grid, grid).astype(np.float32))
    return F.max_pool2d(m, 3, stride=1, padding=1).numpy().ravel() > 0


def test_moving_square_mask_covers_the_square_and_only_it(dataset_factory):
    """Tracks from frame j to j+gap, through the model's own flow_motion_mask (dilated on the primary view): every
    patch the square fills is dynamic, no patch the square never touched is, and the moving cells' displacement is
    the square's motion in model pixels; the last `gap` frames carry no motion."""
    n = 12
    root = dataset_factory([n], frame=moving_square, size=(SIZE, SIZE))
    build(root, feature_spec(TINY))
    cache = FeatureCache.open(root, TINY)
    gap, grid, thr = cache.spec.gap, TINY.vision.grid, TINY.loss.flow_threshold_px
    assert gap == TINY.future_steps
    for v, (cam, (dx, dy)) in enumerate({"static": (1, 0), "wrist": (0, 1)}.items()):
        tracks = torch.from_numpy(cache.tracks[cam].astype(np.float32))
        mask = flow_motion_mask(tracks, grid, thr, dilate=v == 0).numpy() > 0
        for j in range(n - gap):
            inside = square_cells(cam, [j], grid, "all")
            touched = square_cells(cam, list(range(j, j + gap + 1)), grid, "any")
            if v == 0:
                touched = dilate(touched, grid)
            assert mask[j][inside].all(), f"{cam} frame {j}: a patch the square fills is not dynamic"
            assert not mask[j][~touched].any(), f"{cam} frame {j}: a patch the square never touched is dynamic"
            lattice = tracks[j].reshape(2 * grid, 2 * grid, 2).numpy()
            core = np.repeat(np.repeat(inside.reshape(grid, grid), 2, 0), 2, 1) & (np.abs(lattice).sum(-1) > 0)
            want = np.array([dx, dy]) * STEP / 2 * gap  # source px per frame -> model px over the gap
            np.testing.assert_allclose(np.median(lattice[core], axis=0), want, atol=1.0)
        assert not tracks[n - gap :].any(), "the last gap frames have no partner frame and stay 0"


@pytest.mark.parametrize("hw", [(48, 64), (120, 160), (64, 64), (100, 60)])
def test_images_take_the_model_geometry(hw):
    """The cached uint8 image is preprocess_images' resize and crop (its own code), CLIP normalisation undone;
    crop_box (used for depth) names the same resize and crop."""
    frames = torch.randint(0, 256, (3, *hw, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    size = TINY.vision.image_size
    got = model_images(frames.numpy(), size)
    assert got.shape == (3, size, size, 3) and got.dtype == np.uint8
    nh, nw, top, left = crop_box(*hw, size)
    x = frames.permute(0, 3, 1, 2).float() / 255
    if (nh, nw) != hw:
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    want = (x[..., top : top + size, left : left + size] * 255).round().permute(0, 2, 3, 1).numpy()
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert preprocess_images(frames, size).shape[-2:] == (size, size)


def holed_depth(ep: int, i: int, cam: str) -> tuple[np.ndarray, np.ndarray]:
    """48x64 frames; depth a ramp of whole millimetres with a 10x12 hole (0) in the middle."""
    y, x = np.mgrid[0:48, 0:64]
    depth = (400 + 7 * x + 3 * y + i).astype(np.uint16)
    depth[19:29, 26:38] = 0
    return np.zeros((48, 64, 3), np.uint8) + 128, depth


def test_depth_is_metres_with_holes_kept_at_zero(dataset_factory):
    root = dataset_factory([4], frame=holed_depth)
    build(root, feature_spec(TINY))
    cache = FeatureCache.open(root, TINY)
    np.testing.assert_array_equal(depth_metres(np.array([0, 1, 1000, 65535], np.uint16)),
                                  np.array([0, 0.001, 1.0, 65.535], np.float32))
    size = TINY.vision.image_size
    nh, nw, top, left = crop_box(48, 64, size)
    for cam in TINY.cameras:
        d = cache.depth[cam]
        assert d.dtype == np.float16 and d.shape == (4, size, size)
        for i in range(4):
            src = holed_depth(0, i, cam)[1]
            metres = d[i].astype(np.float32)
            # nearest neighbour, millimetres to metres: every value is one recorded value / 1000 (to float16's
            # 0.25 mm at these depths), never a blend of neighbours or with a hole
            recorded = np.unique(src[src > 0]).astype(np.float32) / 1000
            valid = metres[metres > 0]
            assert np.abs(valid[:, None] - recorded[None]).min(axis=1).max() <= 3e-4
            # the hole, mapped through the resize and crop, is 0 and nothing else is
            ys = (np.arange(size) + top + 0.5) * 48 / nh
            xs = (np.arange(size) + left + 0.5) * 64 / nw
            deep_in = (ys[:, None] > 20) & (ys[:, None] < 28) & (xs[None] > 27) & (xs[None] < 37)
            far_out = (ys[:, None] < 18) | (ys[:, None] > 30) | (xs[None] < 25) | (xs[None] > 39)
            assert (metres[deep_in] == 0).all() and (metres[far_out] > 0).all()


def test_cache_holds_rows_instructions_and_seeds(dataset_factory):
    root = dataset_factory([5, 3], instructions=["open the drawer", "close the drawer"], seeds=[7, 8])
    dv_features([str(root), "--config", "tiny"])
    cache = FeatureCache.open(root, TINY)
    assert cache.cameras == list(TINY.cameras)
    assert cache.episodes == [(0, 5), (5, 3)]
    assert cache.instructions == ["open the drawer", "close the drawer"]
    assert cache.seeds == [7, 8]
    rows = np.array([0, 1, 2, 3, 4, 100, 101, 102], np.float32)
    np.testing.assert_array_equal(cache.state, np.repeat(rows[:, None], 7, 1))
    np.testing.assert_array_equal(cache.action, -cache.state)
    assert cache.images["static"].shape == (8, 64, 64, 3) and isinstance(cache.images["static"], np.memmap)
    assert cache.tracks["wrist"].shape == (8, (2 * TINY.vision.grid) ** 2, 2)
    assert cache.tracks["wrist"].dtype == np.float16


# ------------------------------------------------------------------------------------------- crash safety


def test_injected_failure_resumes_to_the_uninterrupted_result(dataset_factory, monkeypatch):
    root = dataset_factory([6, 5, 7, 4])
    spec = feature_spec(TINY)
    build(root, spec)
    reference = snapshot(FeatureCache.open(root, TINY))
    shutil.rmtree(cache_root(root))

    real, calls = features_mod.compute_episode, []

    def failing(dataset, ep, *args):
        calls.append(ep.index)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the third episode dies mid-computation
        return real(dataset, ep, *args)

    monkeypatch.setattr(features_mod, "compute_episode", failing)
    with pytest.raises(KeyboardInterrupt):
        build(root, spec)
    with pytest.raises(FeatureCacheError, match=r"unfinished \(2 episodes done.*--config tiny --flow dis --gap 3 "
                                                r"--resume"):
        FeatureCache.open(root, TINY)
    calls.clear()
    monkeypatch.setattr(features_mod, "compute_episode", lambda *a: calls.append(a[1].index) or real(*a))
    build(root, spec, resume=True)
    assert calls == [2, 3], "the finished episodes are not recomputed"
    assert_same(snapshot(FeatureCache.open(root, TINY)), reference)
    assert not (cache_root(root) / spec.dirname / EPISODES).exists()


def test_kill9_mid_run_leaves_no_usable_cache_and_resumes(dataset_factory):
    """A real `dv-features` process killed with SIGKILL once it has committed an episode: the folder is refused as
    unfinished, and --resume completes it to exactly the uninterrupted result."""
    root = dataset_factory([20] * 6)
    spec = feature_spec(TINY)
    build(root, spec)
    reference = snapshot(FeatureCache.open(root, TINY))
    shutil.rmtree(cache_root(root))
    episodes = cache_root(root) / spec.dirname / EPISODES
    proc = subprocess.Popen([sys.executable, "-m", "policy_server.training.features_cli", str(root), "--config",
                             "tiny"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (episodes.is_dir() and any(p.name.startswith("episode_") for p in episodes.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "dv-features ended before it could be killed"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len([p for p in episodes.iterdir() if p.name.startswith("episode_")])
    assert 1 <= done < 6 and not (cache_root(root) / spec.dirname / MANIFEST).exists()
    with pytest.raises(FeatureCacheError, match="unfinished"):
        FeatureCache.open(root, TINY)
    assert dv_features([str(root), "--config", "tiny", "--resume"]) == 0
    assert_same(snapshot(FeatureCache.open(root, TINY)), reference)


# ------------------------------------------------------------------------------------------- staleness


def test_changed_dataset_is_refused_and_resume_recomputes_only_the_change(dataset_factory, monkeypatch):
    root = dataset_factory([4, 5])
    spec = feature_spec(TINY)
    build(root, spec)
    png = root / L.DEPTH_PATH.format(depth_key=L.depth_key("wrist"), **L.chunk_file(1)) / "000002.png"
    os.utime(png, ns=(1, 1))  # a touched file (same bytes) is not a change
    FeatureCache.open(root, TINY)
    # one more episode committed to the dataset
    dataset_factory([3])  # the same folder: the writer resumes it and appends episode 2
    with pytest.raises(FeatureCacheError, match="stale.*has 3 episodes, the cache was built from 2.*--resume"):
        FeatureCache.open(root, TINY)
    # and a depth frame of episode 1 rewritten with other values
    import cv2

    cv2.imwrite(str(png), (cv2.imread(str(png), cv2.IMREAD_UNCHANGED) // 2).astype(np.uint16))
    real, calls = features_mod.compute_episode, []
    monkeypatch.setattr(features_mod, "compute_episode", lambda *a: calls.append(a[1].index) or real(*a))
    build(root, spec, resume=True)
    assert calls == [1, 2], "episode 0 is reused from the earlier cache; the changed and the new one recomputed"
    resumed = snapshot(FeatureCache.open(root, TINY))
    shutil.rmtree(cache_root(root))
    build(root, spec)
    assert_same(resumed, snapshot(FeatureCache.open(root, TINY)))
    cv2.imwrite(str(png), np.zeros((48, 64), np.uint16))
    with pytest.raises(FeatureCacheError, match=r"stale.*episode 1: depth/observation.depth.wrist/chunk-000/file-001 "
                                                r"(size|content)"):
        FeatureCache.open(root, TINY)


def test_other_config_is_refused_with_the_difference(dataset_factory):
    root = dataset_factory([3])
    dv_features([str(root), "--config", "tiny"])
    small = ModelConfig.model_validate(TINY.model_dump() | {
        "vision": VisionConfig(**(TINY.vision.model_dump() | {"image_size": 32, "patch_size": 4}))})
    with pytest.raises(FeatureCacheError, match="another config: image_size: cache 64, config 32"):
        FeatureCache.open(root, small)
    one_view = TINY.model_copy(update={"cameras": ("static",)})
    with pytest.raises(FeatureCacheError, match=r"cameras: cache \['static', 'wrist'\], config \['static'\]"):
        FeatureCache.open(root, one_view)
    with pytest.raises(FeatureCacheError, match="gap: cache 3, config 5"):
        FeatureCache.open(root, TINY, gap=5)
    with pytest.raises(FeatureCacheError, match="no feature cache.*run `dv-features"):
        FeatureCache.open(dataset_factory([2], name="other"), TINY)



def test_the_full_models_cache_serves_its_ablations_but_not_the_reverse(dataset_factory):
    root = dataset_factory([3])
    dv_features([str(root), "--config", "tiny"])
    full = FeatureCache.open(root, TINY)
    for dream in [(), ("dynamic",), ("depth",)]:
        assert FeatureCache.open(root, TINY.model_copy(update={"dream": dream})).root == full.root
    vanilla = dataset_factory([2], name="vanilla")
    dv_features([str(vanilla), "--config", "tiny"])  # builds the full spec: the config is tiny
    spec = feature_spec(TINY.model_copy(update={"dream": ()}))
    assert not spec.covers(feature_spec(TINY)) and feature_spec(TINY).covers(spec)


# ------------------------------------------------------------------------------------------- teachers


def test_missing_teachers_name_the_download(dataset_factory, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setenv("DV_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    root = dataset_factory([2])
    assert dv_features([str(root), "--config", "tiny", "--flow", "cotracker"]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "scaled_offline.pth" in err and "--flow dis" in err
    assert dv_features([str(root), "--config", "paper-real"]) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "facebook/sam-vit-base" in err and "huggingface-cli download" in err
    assert not cache_root(root).exists(), "nothing is written before every teacher is found"


def test_semantic_teacher_from_a_local_folder(dataset_factory, tmp_path, monkeypatch):
    """A DINOv2 folder under $DV_WEIGHTS_DIR (a small random one: the real one is not on this machine) is found
    and run on the cached images, and a teacher whose tokens do not fit the config's head is refused."""
    from transformers import Dinov2Config, Dinov2Model

    from policy_server.model.config import DecoderConfig
    from policy_server.training.features_semantic import load_teacher
    from policy_server.training.flow import MissingTeacherError

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             patch_size=14, image_size=224)).save_pretrained(tmp_path / "weights" / "dinov2-base")
    monkeypatch.setenv("DV_WEIGHTS_DIR", str(tmp_path / "weights"))
    cfg = TINY.model_copy(update={"dream": ("dynamic", "depth", "dino"),
                                  "decoder": DecoderConfig(**(TINY.decoder.model_dump() | {"dino_dim": 32,
                                                                                          "dino_grid": 16}))})
    root = dataset_factory([3])
    build(root, feature_spec(cfg))
    cache = FeatureCache.open(root, cfg)
    feats = cache.semantics["dino"]["wrist"]
    assert feats.shape == (3, 256, 32) and feats.dtype == np.float16
    direct = load_teacher("dino").features(np.asarray(cache.images["wrist"]))
    np.testing.assert_allclose(feats.astype(np.float32), direct, atol=1e-2)
    narrow = cfg.model_copy(update={"decoder": cfg.decoder.model_copy(update={"dino_dim": 16})})
    with pytest.raises(MissingTeacherError, match=r"gives \(256, 32\).*predicts \(256, 16\)"):
        build(root, feature_spec(narrow))


def test_a_second_run_on_the_same_cache_is_refused(dataset_factory):
    from policy_server.training.features import FeatureBuildError, exclusive

    root = dataset_factory([2])
    spec = feature_spec(TINY)
    with exclusive(cache_root(root) / spec.dirname), pytest.raises(FeatureBuildError, match="another dv-features"):
        build(root, spec)
    build(root, spec)  # the lock went with the first holder
    FeatureCache.open(root, TINY)
