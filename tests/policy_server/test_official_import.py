"""Official DreamVLA/Seer checkpoint import: the name map against the five key manifests, layouts,
bit-exact round trips, and one end-to-end import into our checkpoint format.

The manifests (tests/data/official_checkpoints/*.tsv) list every key the official training scripts
save, with its shape and dtype: they were produced by building the official model classes with each
released script's arguments and saving them with the repositories' own helper. Synthetic state dicts
are built from them: each tensor is a view into one shared random pool at a key-dependent offset, so
values are deterministic and differ between keys while the 500M-parameter configs cost no memory.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from policy_server.cli.model import main as dv_model  # noqa: E402
from policy_server.model import official_import  # noqa: E402
from policy_server.model.checkpoint import load_checkpoint  # noqa: E402
from policy_server.model.config import ActionConvention, ActionHeadConfig, ModelConfig, preset  # noqa: E402
from policy_server.model.official_import import (  # noqa: E402
    CLIP_REPO,
    OfficialImportError,
    convert,
    expected_shapes,
    export,
    import_official,
    infer_config,
    load_clip_text,
    load_mae,
    load_official,
    recognise,
    with_training_data,
)
from policy_server.model.text import MissingWeightsError  # noqa: E402

MANIFESTS = Path(__file__).resolve().parents[1] / "data" / "official_checkpoints"

UNUSED = {"action_pose_encoder", "action_gripper_position_encoder", "action_projector", "recon_state_decoder",
          "recon_arm_state_decoder", "recon_gripper_state_decoder"}
SEER_HEAD = {"action_decoder", "arm_action_decoder", "gripper_action_decoder"}
TIME = "transformer_backbone_position_embedding"


@dataclass(frozen=True)
class Case:
    manifest: str
    target: str | None  # preset name; None: infer_config
    dropped_modules: frozenset[str]  # official modules (key up to the first '.') expected to be dropped
    steps: int  # time steps in the official file
    trained_on: str  # the data of the released script


CASES = [
    Case("dreamvla_calvin_abc_d_finetune", None, frozenset(UNUSED | {"action_model.net.history_embedder"}), 10,
         "calvin"),
    Case("dreamvla_libero_finetune", None, frozenset(UNUSED | {"action_model.net.history_embedder"}), 7, "libero"),
    # Seer-Large: 16 obs tokens per image, ours 9 -> reset, as the official DreamVLA finetune does.
    Case("seer_large_calvin_abc_d_finetune", "paper-calvin", frozenset(UNUSED | SEER_HEAD | {"obs_tokens"}), 10,
         "calvin"),
    Case("seer_large_calvin_abc_d_pretrain", "paper-calvin", frozenset(UNUSED | SEER_HEAD | {"obs_tokens"}), 14,
         "calvin"),
    Case("seer_real_droid_pretrain", "paper-real", frozenset(UNUSED | SEER_HEAD), 11, "real"),
]

_POOL = torch.randn(8_000_000, generator=torch.Generator().manual_seed(0))


def manifest(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of the saved rows of one TSV, in file order."""
    with (MANIFESTS / f"{name}.tsv").open() as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["saved"] == "yes"]
    return [(r["name"], tuple(int(x) for x in r["shape"].split(",")) if r["shape"] else ()) for r in rows]


def synthetic(name: str) -> dict[str, torch.Tensor]:
    """The official `model_state_dict` of one manifest (with `module.`), as views into the random pool."""
    sd = {}
    for i, (key, shape) in enumerate(manifest(name)):
        n = math.prod(shape)
        offset = (i * 7919) % (_POOL.numel() - n + 1)
        sd[key] = _POOL[offset : offset + n].view(shape)
    return sd


def strip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in sd.items()}


def dropped_module(key: str) -> str:
    return "action_model.net.history_embedder" if key.startswith("action_model.net.history_embedder.") \
        else key.split(".")[0]


@dataclass
class Converted:
    case: Case
    sd: dict
    cfg: ModelConfig
    ours: dict
    report: object


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.manifest)
def converted(request) -> Converted:
    case = request.param
    sd = strip(synthetic(case.manifest))
    cfg = preset(case.target) if case.target else infer_config(sd)
    ours, report = convert(sd, cfg)
    return Converted(case, sd, cfg, ours, report)


# ------------------------------------------------------------------------------ the five manifests


def test_every_saved_key_is_mapped_or_dropped_by_name(converted):
    report, sd = converted.report, converted.sd
    assert set(report.mapped) | set(report.dropped) == set(sd)
    assert not set(report.mapped) & set(report.dropped)
    assert {dropped_module(k) for k in report.dropped} == converted.case.dropped_modules
    assert set(report.mapped.values()) == set(converted.ours)


def test_mapped_tensors_have_the_target_shapes(converted):
    expected = expected_shapes(converted.cfg)
    for ours_key, tensor in converted.ours.items():
        assert tuple(tensor.shape) == expected[ours_key], ours_key
    assert not set(expected) - set(converted.ours) - set(converted.report.fresh) - {
        k for k in expected if k.startswith(("text_encoder.", "vision_encoder."))}


def test_export_reproduces_every_mapped_tensor_bit_exactly(converted):
    exported = export(converted.ours, converted.cfg)
    assert set(exported) == {"module." + k for k in converted.report.mapped}
    truncated = converted.report.time_embedding is not None
    for key in converted.report.mapped:
        official = converted.sd[key]
        if key == TIME and truncated:
            official = official[:, : converted.cfg.sequence_length]
        assert torch.equal(exported["module." + key], official), key


def test_time_embedding_truncation_follows_the_target(converted):
    kept = converted.cfg.sequence_length
    steps = converted.case.steps
    assert converted.report.time_embedding == ((steps, kept) if steps > kept else None)
    assert torch.equal(converted.ours["time_embedding"], converted.sd[TIME][0, :kept, 0])


# ------------------------------------------------------------------------------ layouts and names


@pytest.fixture(scope="module")
def calvin() -> tuple[dict, dict]:
    sd = strip(synthetic("dreamvla_calvin_abc_d_finetune"))
    return sd, convert(sd, preset("paper-calvin"))[0]


@pytest.mark.parametrize("module", ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"])
def test_gpt2_conv1d_weights_are_transposed_and_biases_kept(calvin, module):
    sd, ours = calvin
    for layer in (0, 23):
        official = f"transformer_backbone.h.{layer}.{module}"
        assert torch.equal(ours[f"backbone.h.{layer}.{module}.weight"], sd[f"{official}.weight"].t())
        assert torch.equal(ours[f"backbone.h.{layer}.{module}.bias"], sd[f"{official}.bias"])
    assert ours["backbone.h.0.attn.c_attn.weight"].shape == (3 * 1024, 1024)


def test_transposed_conv1d_computes_what_gpt2_computes():
    """Same output as transformers' GPT-2 Conv1D (y = x W + b with W stored [in, out])."""
    from transformers.pytorch_utils import Conv1D

    hidden = preset("tiny").backbone.hidden
    conv = Conv1D(3 * hidden, hidden)
    torch.nn.init.normal_(conv.weight, generator=torch.Generator().manual_seed(1))
    torch.nn.init.normal_(conv.bias, generator=torch.Generator().manual_seed(2))
    sd = {"transformer_backbone.h.1.attn.c_attn.weight": conv.weight.detach(),
          "transformer_backbone.h.1.attn.c_attn.bias": conv.bias.detach()}
    ours, _ = convert(sd, preset("tiny"))
    x = torch.randn(5, hidden, generator=torch.Generator().manual_seed(3))
    weight, bias = ours["backbone.h.1.attn.c_attn.weight"], ours["backbone.h.1.attn.c_attn.bias"]
    torch.testing.assert_close(torch.nn.functional.linear(x, weight, bias), conv(x))


def test_query_tokens_and_renamed_modules(calvin):
    sd, ours = calvin
    assert torch.equal(ours["action_queries"], sd["action_pred_token"][0, 0])
    for ours_name, official in [("dynamic", "obs_tokens"), ("depth", "depth_tokens"), ("sam", "sam_feat_tokens")]:
        assert torch.equal(ours[f"dream_queries.{ours_name}"], sd[official][0, 0])
    pairs = {
        "patch_projectors.static.weight": "image_primary_projector.weight",
        "patch_projectors.wrist.weight": "image_wrist_projector.weight",
        "cls_projectors.static.weight": "cls_token_primary_projector.weight",
        "cls_projectors.wrist.weight": "cls_token_wrist_projector.weight",
        "decoders.dynamic.mask_token": "mask_token",
        "decoders.depth.mask_token": "depth_mask_token",
        "decoders.sam.mask_token": "sam_mask_token",
        "decoders.sam.blocks.1.attn.qkv.weight": "sam_feat_decoder.1.attn.qkv.weight",
        "decoders.sam.pred.weight": "sam_decoder_pred.weight",
        "decoders.depth.obs_pred_projector.weight": "depth_decoder_obs_pred_projector.weight",
        "decoders.dynamic.norm.bias": "image_decoder_norm.bias",
        "action_head.net.z_embedder.uncondition": "action_model.net.z_embedder.uncondition",
        "perceiver_resampler.layers.2.1.3.weight": "perceiver_resampler.layers.2.1.3.weight",
    }
    for ours_key, official in pairs.items():
        assert torch.equal(ours[ours_key], sd[official]), ours_key


# ------------------------------------------------------------------------------ configs


def test_infer_config_of_dreamvla_calvin_is_the_paper_preset():
    assert infer_config(strip(synthetic("dreamvla_calvin_abc_d_finetune"))) == preset("paper-calvin")


def test_infer_config_of_dreamvla_libero():
    cfg = infer_config(strip(synthetic("dreamvla_libero_finetune")))
    assert (cfg.name, cfg.sequence_length, cfg.dream) == ("dreamvla-libero", 7, ("dynamic", "sam"))
    same = {"name", "sequence_length", "dream"}
    assert cfg.model_dump(exclude=same) == preset("paper-calvin").model_dump(exclude=same)


@pytest.mark.parametrize("name", ["seer_real_droid_pretrain", "seer_large_calvin_abc_d_finetune"])
def test_infer_config_refuses_seer_and_says_why(name):
    with pytest.raises(OfficialImportError, match="Seer checkpoint.*no DiT"):
        infer_config(strip(synthetic(name)))


def test_dreamvla_without_dit_is_incomplete():
    sd = {k: v for k, v in strip(synthetic("dreamvla_libero_finetune")).items() if not k.startswith("action_model.")}
    with pytest.raises(OfficialImportError, match="without its DiT"):
        infer_config(sd)


def test_seer_droid_into_paper_real_lists_what_starts_fresh():
    sd = strip(synthetic("seer_real_droid_pretrain"))
    ours, report = convert(sd, preset("paper-real"))
    assert report.time_embedding == (11, 7)
    assert report.mapped["obs_tokens"] == "dream_queries.dynamic"  # K=9 per view on both sides
    assert torch.equal(ours["dream_queries.dynamic"], sd["obs_tokens"][0, 0])
    assert report.mapped["image_decoder.0.attn.qkv.weight"] == "decoders.dynamic.blocks.0.attn.qkv.weight"
    fresh = set(report.fresh)
    assert {"dream_queries.depth", "dream_queries.sam", "action_head.net.z_embedder.uncondition",
            "action_head.net.blocks.11.mlp.fc2.weight", "decoders.depth.pred.weight",
            "decoders.sam.mask_token"} <= fresh
    assert all(k.startswith(("dream_queries.", "action_head.", "decoders.depth.", "decoders.sam.")) for k in fresh)
    assert "fresh: dream_queries.depth, dream_queries.sam, action_head.net, decoders.depth, decoders.sam" in \
        report.summary()


def test_modalities_missing_from_the_target_are_dropped_with_a_reason():
    sd = strip(synthetic("dreamvla_calvin_abc_d_finetune"))
    libero = infer_config(strip(synthetic("dreamvla_libero_finetune")))
    _, report = convert(sd, libero)
    depth = {k for k in report.dropped if "depth" in k}
    assert depth and all("no 'depth' dream modality" in report.dropped[k] for k in depth)
    assert not report.fresh


# ------------------------------------------------------------------------------ DiT sizes


def official_dit(width: int, depth: int, heads: int) -> dict[str, torch.Tensor]:
    """A DiT action head of this size under its official names and layouts (zeros that take no memory)."""
    cfg = preset("paper-calvin").model_copy(update={
        "action_head": ActionHeadConfig(width=width, depth=depth, heads=heads)})
    ours = {k: torch.zeros(()).expand(shape) for k, shape in expected_shapes(cfg).items()
            if k.startswith("action_head.")}
    return strip(export(ours, cfg))


def calvin_with_dit(width: int, depth: int, heads: int) -> dict[str, torch.Tensor]:
    """The DreamVLA CALVIN file with its DiT-B head swapped for a head of another size."""
    sd = strip(synthetic("dreamvla_calvin_abc_d_finetune"))
    return {k: v for k, v in sd.items() if not k.startswith("action_model.net.")} | official_dit(width, depth, heads)


@pytest.mark.parametrize(("width", "depth", "heads"), [(384, 6, 4), (768, 12, 12), (1024, 24, 16)],
                         ids=["DiT-S", "DiT-B", "DiT-L"])
def test_dit_size_and_heads_come_from_width_and_depth(width, depth, heads):
    sd = calvin_with_dit(width, depth, heads)
    cfg = infer_config(sd)
    assert (cfg.action_head.width, cfg.action_head.depth, cfg.action_head.heads) == (width, depth, heads)
    ours, report = convert(sd, cfg)
    assert not report.fresh
    assert tuple(ours[f"action_head.net.blocks.{depth - 1}.attn.qkv.weight"].shape) == (3 * width, width)


def test_dit_of_an_unreleased_size_is_refused():
    with pytest.raises(OfficialImportError, match=r"768 wide with 6 blocks is none of the released sizes "
                                                  r"\(DiT-S \(384 wide, 6 blocks, 4 heads\), DiT-B .*head count"):
        infer_config(calvin_with_dit(768, 6, 12))


def test_dit_heads_must_match_the_target():
    """The one DiT mismatch no tensor shape shows: a target with DiT-S widths but 64-wide heads."""
    sd = calvin_with_dit(384, 6, 4)
    wrong_heads = infer_config(sd).model_copy(update={"action_head": ActionHeadConfig(width=384, depth=6, heads=6)})
    want = (r"DiT-S action head \(width 384, 6 blocks, 4 heads\) does not fit target 'official-import' "
            r"\(action_head width 384, depth 6, heads 6\)")
    with pytest.raises(OfficialImportError, match=want):
        convert(sd, wrong_heads)
    with pytest.raises(OfficialImportError, match="DiT-S action head.*does not fit target 'paper-calvin'"):
        convert(sd, preset("paper-calvin"))


# ------------------------------------------------------------------------------ training data


def test_released_files_are_recognised_with_their_training_data(converted):
    release = recognise(converted.sd)
    assert release is not None and release.trained_on == converted.case.trained_on


def test_calvin_records_its_world_frame_and_real_data_needs_nothing():
    cfg, differences = with_training_data(preset("paper-calvin"), "calvin")
    assert cfg.action == ActionConvention(frame="world")
    assert differences == ["action frame: differences along the world axes in training, a relative pose in the "
                           "previous target's frame on our robot"]
    assert with_training_data(preset("paper-real"), "real") == (preset("paper-real"), [])


LIBERO_MISMATCHES = [
    r"state orientation: an axis-angle vector \(LIBERO's ee_states\[3:6\]\) in training, Euler xyz angles",
    r"state gripper: two finger positions \(robot0_gripper_qpos, --gripper_width\) in training, open/closed",
    r"images: the primary \(agentview\) view flipped vertically in training, as captured on our robot",
    r"action units: raw controller commands in \[-1, 1\] with no metric scale in training, 0.02 m / 0.05 rad per unit",
    r"action rotation: an axis-angle vector in training, Euler xyz angles on our robot",
    r"action frame: differences along the world axes in training",
    r"gripper action: 1 = closed in training, 1 = open on our robot",
]


def test_libero_cannot_be_served_here_and_every_mismatch_is_named():
    with pytest.raises(OfficialImportError, match="trained on libero data cannot be served on this stack") as err:
        with_training_data(infer_config(strip(synthetic("dreamvla_libero_finetune"))), "libero")
    for mismatch in LIBERO_MISMATCHES:
        assert re.search(mismatch, str(err.value)), mismatch


# ------------------------------------------------------------------------------ errors


def test_unknown_key_raises_naming_it(calvin):
    sd, _ = calvin
    with pytest.raises(OfficialImportError, match="'transformer_backbone.wpe.weight'.*does not have"):
        convert(sd | {"transformer_backbone.wpe.weight": torch.zeros(2, 2)}, preset("paper-calvin"))
    with pytest.raises(OfficialImportError, match="unknown official key 'goal_image_projector.weight'"):
        convert(sd | {"goal_image_projector.weight": torch.zeros(2, 2)}, preset("paper-calvin"))
    with pytest.raises(OfficialImportError, match="unknown official key 'module.obs_tokens'"):
        convert({"module.obs_tokens": sd["obs_tokens"]}, preset("paper-calvin"))


def test_wrong_shape_raises_naming_key_and_both_shapes(calvin):
    sd, _ = calvin
    bad = sd | {"text_projector.weight": torch.zeros(1024, 768)}
    with pytest.raises(OfficialImportError, match=r"'text_projector.weight' has shape \[1024, 768\].*\[1024, 512\]"):
        convert(bad, preset("paper-calvin"))
    flat = sd | {"action_pred_token": sd["action_pred_token"][0]}
    with pytest.raises(OfficialImportError, match=r"'action_pred_token' has shape \[1, 3, 1024\]"):
        convert(flat, preset("paper-calvin"))
    short = sd | {TIME: sd[TIME][:, :5]}  # a time embedding cannot be extended
    with pytest.raises(OfficialImportError, match=r"has shape \[1, 5, 1, 1024\].*'time_embedding'.*\[10, 1024\]"):
        convert(short, preset("paper-calvin"))
    with pytest.raises(OfficialImportError, match=r"'action_pred_token'.*'paper-real' needs \[3, 384\]"):
        convert(sd, preset("paper-real"))  # the first tensor whose width differs


def test_export_refuses_keys_without_an_official_name():
    with pytest.raises(OfficialImportError, match="'dream_queries.dino' has no official counterpart"):
        export({"dream_queries.dino": torch.zeros(18, 64)}, preset("tiny"))


def test_load_official_accepts_training_and_bare_layouts(tmp_path):
    sd = {"module.obs_tokens": torch.ones(1, 1, 2, 4), "module.action_pred_token": torch.zeros(1, 1, 3, 4)}
    torch.save({"epoch": 2, "model_state_dict": sd, "optimizer_state_dict": {"state": {}}}, tmp_path / "a.pth")
    torch.save(strip(sd), tmp_path / "b.pth")
    for name in ("a.pth", "b.pth"):
        loaded = load_official(tmp_path / name)
        assert set(loaded) == {"obs_tokens", "action_pred_token"}
        assert torch.equal(loaded["obs_tokens"], sd["module.obs_tokens"])


def test_load_official_rejects_what_it_cannot_use(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_official(tmp_path / "missing.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(OfficialImportError, match="holds a list"):
        load_official(tmp_path / "list.pth")
    torch.save({"epoch": 1, "model": {"x": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(OfficialImportError, match="'model_state_dict' or a bare state dict.*'epoch'"):
        load_official(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(OfficialImportError, match="weights_only"):
        load_official(tmp_path / "junk.pth")


# ------------------------------------------------------------------------------ MAE and CLIP


def mae_state(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A file-layout MAE state dict for `cfg.vision` (encoder from our shapes) plus decoder keys."""
    g = torch.Generator().manual_seed(4)
    encoder = {k.removeprefix("vision_encoder."): torch.randn(shape, generator=g)
               for k, shape in expected_shapes(cfg).items() if k.startswith("vision_encoder.")}
    decoder = {"mask_token": torch.randn(1, 1, 16, generator=g),
               "decoder_embed.weight": torch.randn(16, 8, generator=g),
               "decoder_blocks.0.norm1.weight": torch.randn(16, generator=g),
               "decoder_pred.bias": torch.randn(4, generator=g)}
    return encoder | decoder


def test_load_mae_maps_the_encoder_and_drops_the_decoder(tmp_path):
    state = mae_state(preset("tiny"))
    torch.save({"model": state}, tmp_path / "mae.pth")
    loaded = load_mae(tmp_path / "mae.pth")
    encoder = {k for k in state if not k.startswith("decoder_") and k != "mask_token"}
    assert set(loaded) == {f"vision_encoder.{k}" for k in encoder}
    assert torch.equal(loaded["vision_encoder.blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
    torch.save(state, tmp_path / "bare.pth")
    assert set(load_mae(tmp_path / "bare.pth")) == set(loaded)


def test_load_mae_errors(tmp_path):
    with pytest.raises(MissingWeightsError, match="mae_pretrain_vit_base.pth"):
        load_mae(tmp_path / "missing.pth")
    state = mae_state(preset("tiny"))
    torch.save({"model": {k: v for k, v in state.items() if k != "blocks.0.mlp.fc2.bias"}}, tmp_path / "hole.pth")
    with pytest.raises(OfficialImportError, match="missing.*blocks.0.mlp.fc2.bias"):
        load_mae(tmp_path / "hole.pth")
    torch.save({"model": state | {"head.weight": torch.zeros(2)}}, tmp_path / "head.pth")
    with pytest.raises(OfficialImportError, match="unexpected key 'head.weight'"):
        load_mae(tmp_path / "head.pth")


def write_clip_tokenizer(directory: Path) -> None:
    """A minimal valid CLIP BPE: single letters (plain and word-final) plus the two special tokens."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {t: i for i, t in enumerate([*letters, *(c + "</w>" for c in letters), "<|startoftext|>", "<|endoftext|>"])}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")


def small_text_config(vocab: int = 64) -> dict:
    """A CLIP text tower with the real projection width (text_projector is [H, 512]) but tiny otherwise."""
    return dict(vocab_size=vocab, hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, projection_dim=512)


def test_load_clip_text_from_a_full_clip_model_directory(tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=16)
    full = CLIPModel(CLIPConfig(text_config=small_text_config(), vision_config=vision, projection_dim=512))
    full.save_pretrained(tmp_path / "full")
    text = load_clip_text(tmp_path / "full")
    assert torch.equal(text["text_encoder.clip.text_projection.weight"], full.text_projection.weight)
    assert not any("vision" in k for k in text)
    CLIPTextModel(CLIPTextConfig(**small_text_config())).save_pretrained(tmp_path / "no_projection")
    with pytest.raises(MissingWeightsError, match="text_projection"):
        load_clip_text(tmp_path / "no_projection")


# ------------------------------------------------------------------------------ end to end


def e2e_target() -> ModelConfig:
    """paper-real for every tensor the Seer DROID file holds; the parts it lacks (frozen towers, DiT) shrunk."""
    base = preset("paper-real").model_dump()
    text = base["text"] | {"vocab_size": 64, "width": 32, "layers": 1, "heads": 2}
    return ModelConfig.model_validate(base | {
        "name": "paper-real-small-towers", "text": text, "vision": base["vision"] | {"depth": 1},
        "action_head": base["action_head"] | {"depth": 1},
    })


@dataclass
class Inputs:
    ckpt: Path
    mae: Path
    clip: Path
    official: dict
    mae_state: dict
    tmp: Path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tmp = tmp_path_factory.mktemp("official")
    official = {k: v.clone() for k, v in synthetic("seer_real_droid_pretrain").items()}  # real storage, as a file
    torch.save({"epoch": 4, "model_state_dict": official}, tmp / "4.pth")
    state = mae_state(e2e_target())
    torch.save({"model": state}, tmp / "mae_pretrain_vit_base.pth")
    clip = tmp / "clip"
    torch.manual_seed(5)
    CLIPTextModelWithProjection(CLIPTextConfig(**small_text_config())).save_pretrained(clip)
    write_clip_tokenizer(clip)
    return Inputs(tmp / "4.pth", tmp / "mae_pretrain_vit_base.pth", clip, strip(official), state, tmp)


def test_import_official_end_to_end(inputs):
    out = inputs.tmp / "imported"
    target = e2e_target()
    report = import_official(inputs.ckpt, inputs.mae, out, clip=inputs.clip, target=target)
    model, meta, tokenizer = load_checkpoint(out, with_decoders=True)
    state = model.state_dict()
    assert meta.source == "official:4.pth"
    assert meta.model.text.pretrained == str(inputs.clip) and meta.model.vision.pretrained == str(inputs.mae)
    assert report.time_embedding == (11, 7)
    exported = export(state, target)  # back to the official names: file -> import -> safetensors -> model -> export
    for official in report.mapped:
        want = inputs.official[official][:, :7] if official == TIME else inputs.official[official]
        assert torch.equal(exported["module." + official], want), official
    for key, value in inputs.mae_state.items():
        if not key.startswith("decoder_") and key != "mask_token":
            assert torch.equal(state[f"vision_encoder.{key}"], value), key
    for key, value in load_clip_text(inputs.clip).items():
        assert torch.equal(state[key], value), key
    assert set(state) == set(report.mapped.values()) | set(report.fresh) | {
        k for k in state if k.startswith(("vision_encoder.", "text_encoder."))}
    assert tokenizer(["open the drawer"]).shape == (1, 77)
    assert report.trained_on == "real data (recognised: Seer DROID pretrain)" and not report.conventions
    assert meta.model.action == ActionConvention()
    assert served_mismatches(out) == {}


def served_mismatches(checkpoint: Path) -> dict[str, str]:
    """What the server's contract check says when our robot says `hello` to this checkpoint's backend."""
    from dreamvla_client.contract import contract_mismatches
    from dreamvla_client.conventions import STATE_LAYOUT
    from dreamvla_client.protocol import CameraContract, RobotContract
    from policy_server.serving.backend import EngineBackend
    from policy_server.serving.engine import PolicyEngine

    contract = EngineBackend(PolicyEngine.from_checkpoint(checkpoint)).contract()
    robot = RobotContract(cameras=[CameraContract(name=c, height=480, width=640) for c in contract.cameras],
                          state_layout=list(STATE_LAYOUT), control_rate_hz=15.0, chunk_length=contract.chunk_length)
    return contract_mismatches(robot, contract)


def test_calvin_actions_keep_their_world_frame_so_our_robot_refuses_them_at_hello(inputs):
    """CALVIN's deltas are along the world axes, ours in the previous target's frame: the import records
    the world frame, the served contract states it, and the contract check refuses our robot."""
    out = inputs.tmp / "calvin"
    report = import_official(inputs.ckpt, inputs.mae, out, clip=inputs.clip, target=e2e_target(), trained_on="calvin")
    assert report.trained_on == "calvin data (declared; the shapes are those of the released Seer DROID pretrain)"
    assert "recorded in the checkpoint, so the served contract states it: action frame: differences along the " \
           "world axes in training" in report.summary()
    assert load_checkpoint(out)[1].model.action == ActionConvention(frame="world")
    mismatches = served_mismatches(out)
    assert set(mismatches) == {"action_convention"}
    assert "'delta_previous_target_euler_xyz' != model 'delta_world_euler_xyz'" in mismatches["action_convention"]


def test_libero_import_is_refused_before_anything_is_written(inputs, monkeypatch):
    """The released LIBERO file (synthetic: its 1.9 GB are not written out) is recognised and refused."""
    libero = strip(synthetic("dreamvla_libero_finetune"))
    monkeypatch.setattr(official_import, "load_official", lambda path: libero)
    out = inputs.tmp / "libero"
    with pytest.raises(OfficialImportError, match="trained on libero data cannot be served on this stack") as err:
        import_official(inputs.ckpt, inputs.mae, out, clip=inputs.clip)
    for mismatch in LIBERO_MISMATCHES:
        assert re.search(mismatch, str(err.value)), mismatch
    assert not out.exists()


def test_cli_refuses_data_declared_as_libero_or_unknown(inputs, capsys):
    out = inputs.tmp / "cli"
    args = ["import-official", "--ckpt", str(inputs.ckpt), "--mae", str(inputs.mae), "--clip", str(inputs.clip),
            "--config", "paper-real", "--out", str(out)]
    assert dv_model([*args, "--trained-on", "libero"]) == 2
    assert re.search(r"trained\s+on\s+libero\s+data\s+cannot\s+be\s+served", capsys.readouterr().out)
    assert dv_model([*args, "--trained-on", "sim"]) == 2
    assert re.search(r"unknown\s+training\s+data\s+'sim';\s+choose\s+one\s+of\s+calvin\s+\|\s+libero\s+\|\s+real",
                     capsys.readouterr().out)
    assert not out.exists()


def test_a_file_no_release_matches_must_name_its_data(inputs, monkeypatch):
    """A Seer DROID file cut to 7 steps is no released configuration: its data cannot be guessed."""
    cut = inputs.official | {TIME: inputs.official[TIME][:, :7]}
    monkeypatch.setattr(official_import, "load_official", lambda path: cut)
    out = inputs.tmp / "unreleased"
    with pytest.raises(OfficialImportError, match=r"match no released training script.*pass trained_on "
                                                  r"\(--trained-on\) calvin \| libero \| real"):
        import_official(inputs.ckpt, inputs.mae, out, clip=inputs.clip, target=e2e_target())
    assert not out.exists()


def test_import_refuses_seer_without_a_target(inputs):
    out = inputs.tmp / "no_target"
    with pytest.raises(OfficialImportError, match="Seer checkpoint"):
        import_official(inputs.ckpt, inputs.mae, out, clip=inputs.clip)
    assert not out.exists()


def test_import_with_a_missing_clip_directory_names_what_to_download(inputs):
    out = inputs.tmp / "no_clip"
    with pytest.raises(MissingWeightsError, match=CLIP_REPO):
        import_official(inputs.ckpt, inputs.mae, out, clip=inputs.tmp / "missing_clip", target=e2e_target())
    weights_only = inputs.tmp / "clip_without_tokenizer"
    weights_only.mkdir()
    (weights_only / "config.json").write_text((inputs.clip / "config.json").read_text())
    with pytest.raises(MissingWeightsError, match="tokenizer files"):
        import_official(inputs.ckpt, inputs.mae, out, clip=weights_only, target=e2e_target())
    # clip=None falls back to text.pretrained (a path or an HF-cache repo id).
    elsewhere = e2e_target().model_copy(update={"text": e2e_target().text.model_copy(
        update={"pretrained": str(inputs.tmp / "not_downloaded")})})
    with pytest.raises(MissingWeightsError, match=f"not_downloaded.*{CLIP_REPO}"):
        import_official(inputs.ckpt, inputs.mae, out, target=elsewhere)
    assert not out.exists()


def test_import_with_a_missing_or_mismatched_mae_file(inputs):
    out = inputs.tmp / "no_mae"
    with pytest.raises(MissingWeightsError, match="mae_pretrain_vit_base.pth"):
        import_official(inputs.ckpt, inputs.tmp / "missing.pth", out, clip=inputs.clip, target=e2e_target())
    two_blocks = e2e_target().model_copy(update={"vision": e2e_target().vision.model_copy(update={"depth": 2})})
    with pytest.raises(OfficialImportError, match="no source supplies.*vision_encoder.blocks.1"):
        import_official(inputs.ckpt, inputs.mae, out, clip=inputs.clip, target=two_blocks)
    assert not out.exists()
