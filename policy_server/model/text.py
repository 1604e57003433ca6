"""Instruction side of the tokenizer: a CLIP text tower (transformers) and its tokenizer.

The released code uses OpenAI CLIP ViT-B/32 `encode_text` (EOT feature after `ln_final`, times
`text_projection`); transformers' `CLIPTextModelWithProjection.text_embeds` is the same quantity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from policy_server.model.config import TextConfig


class MissingWeightsError(FileNotFoundError):
    """A pretrained part is configured but its files are not on this machine."""


class Tokenizer(Protocol):
    def __call__(self, texts: list[str]) -> torch.Tensor: ...


class ByteTokenizer:
    """UTF-8 bytes as ids (0-255), then BOS=256, EOS=257, PAD=258: needs no vocabulary file."""

    BOS, EOS, PAD = 256, 257, 258

    def __init__(self, context_length: int) -> None:
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.full((len(texts), self.context_length), self.PAD, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.BOS, *text.encode("utf-8")[: self.context_length - 2], self.EOS]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


CLIP_REPO = "openai/clip-vit-base-patch32"
_CLIP_HINT = f"download {CLIP_REPO!r} (e.g. `huggingface-cli download {CLIP_REPO}`) and pass its directory"


def resolve_clip_dir(source: str | Path) -> Path:
    """A local CLIP directory (a path, or a repo id in the local HF cache) with weights and tokenizer files.

    Checked up front because transformers 5 quietly builds a 2-token CLIPTokenizer from a directory
    without vocabulary files instead of failing.
    """
    from huggingface_hub import snapshot_download

    directory = Path(source)
    if not directory.is_dir():
        try:
            directory = Path(snapshot_download(str(source), local_files_only=True))
        except (OSError, ValueError) as exc:  # not cached / not a repo id
            raise MissingWeightsError(f"CLIP weights not found at {str(source)!r} (path or HF cache): "
                                      f"{_CLIP_HINT}") from exc
    files = {f.name for f in directory.iterdir()}
    if not ({"tokenizer.json"} <= files or {"vocab.json", "merges.txt"} <= files):
        raise MissingWeightsError(f"{directory} has no CLIP tokenizer files (vocab.json + merges.txt or "
                                  f"tokenizer.json): {_CLIP_HINT}")
    return directory


def load_clip_text_model(directory: Path) -> CLIPTextModelWithProjection:
    """The CLIP text tower with its projection, from a text-only or full CLIPModel directory.

    Missing weights are an error: transformers would only warn and random-initialise them.
    """
    try:
        model, info = CLIPTextModelWithProjection.from_pretrained(str(directory), local_files_only=True,
                                                                  output_loading_info=True)
    except OSError as exc:
        raise MissingWeightsError(f"no CLIP weights in {directory}: {_CLIP_HINT}") from exc
    if info["missing_keys"] or info["mismatched_keys"]:
        raise MissingWeightsError(f"{directory} lacks CLIP text weights: missing {sorted(info['missing_keys'])}, "
                                  f"mismatched {sorted(info['mismatched_keys'])}")
    return model


class ClipTokenizer:
    """CLIP BPE, padded/truncated to the context length (77), from local files only."""

    def __init__(self, source: str | Path, context_length: int) -> None:
        from transformers import CLIPTokenizer

        self._tok = CLIPTokenizer.from_pretrained(str(resolve_clip_dir(source)), local_files_only=True)
        self.context_length = context_length

    def save(self, directory: Path) -> None:
        self._tok.save_pretrained(str(directory))

    def __call__(self, texts: list[str]) -> torch.Tensor:
        enc = self._tok(texts, padding="max_length", truncation=True, max_length=self.context_length,
                        return_tensors="pt")
        return enc["input_ids"]


def _clip_config(cfg: TextConfig) -> CLIPTextConfig:
    if cfg.tokenizer == "bytes":
        bos, eos, pad = ByteTokenizer.BOS, ByteTokenizer.EOS, ByteTokenizer.PAD
    else:  # OpenAI CLIP's <|startoftext|>, <|endoftext|>; it pads with <|endoftext|>
        bos, eos, pad = 49406, 49407, 49407
    return CLIPTextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.width, intermediate_size=4 * cfg.width,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, max_position_embeddings=cfg.context_length,
        projection_dim=cfg.projection_dim, eos_token_id=eos, bos_token_id=bos, pad_token_id=pad,
    )


class TextEncoder(nn.Module):
    """token ids (N, L) -> one pooled, projected feature per instruction (N, projection_dim)."""

    def __init__(self, cfg: TextConfig, *, load_pretrained: bool) -> None:
        super().__init__()
        if load_pretrained and cfg.pretrained is not None:
            self.clip = load_clip_text_model(resolve_clip_dir(cfg.pretrained))
            got = (self.clip.config.hidden_size, self.clip.config.projection_dim, self.clip.config.num_hidden_layers)
            if got != (cfg.width, cfg.projection_dim, cfg.layers):
                raise ValueError(f"CLIP at {cfg.pretrained!r} is (width, projection, layers) {got}, "
                                 f"the config says {(cfg.width, cfg.projection_dim, cfg.layers)}")
        else:
            self.clip = CLIPTextModelWithProjection(_clip_config(cfg))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.clip(input_ids=ids).text_embeds


def build_tokenizer(cfg: TextConfig, directory: Path | None) -> Tokenizer:
    """The tokenizer the checkpoint was trained with (CLIP files live beside the weights)."""
    if cfg.tokenizer == "bytes":
        return ByteTokenizer(cfg.context_length)
    source = directory / "tokenizer" if directory is not None else cfg.pretrained
    if source is None:
        raise MissingWeightsError("a CLIP tokenizer needs files: set text.pretrained to a local CLIP directory")
    return ClipTokenizer(source, cfg.context_length)
