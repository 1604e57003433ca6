"""The structured attention mask over a window of timesteps, built once as a boolean table.

Token layout per timestep: A (context: text, state, image latents, CLS) then B (<dream> groups in
DREAM_ORDER, then <action>). True means "query row may attend to key column", the convention of
`scaled_dot_product_attention`.
"""

from __future__ import annotations

from typing import Literal

import torch

A_KIND, ACTION_KIND = "context", "action"


def step_layout(context_tokens: int, dream_groups: list[tuple[str, int]], action_tokens: int) -> list[str]:
    """The kind of every token of one timestep, in order."""
    kinds = [A_KIND] * context_tokens
    for modality, count in dream_groups:
        kinds += [modality] * count
    return kinds + [ACTION_KIND] * action_tokens


def build_attention_mask(
    steps: int, layout: list[str], variant: Literal["code", "paper"] = "code"
) -> torch.Tensor:
    """(steps*T, steps*T) bool mask for the released code's rule or the paper's looser variant.

    Both: every token sees the context tokens of its own and earlier timesteps (bidirectionally
    inside a timestep) and never a later timestep; <action> also sees its own timestep's <dream>
    tokens. "code" lets no <dream> or <action> token be seen by anything else (not even itself);
    "paper" only cuts the links between different <dream> modalities, so a group sees itself and
    <action> tokens see each other.
    """
    t = len(layout)
    kinds = layout * steps
    time = torch.arange(steps).repeat_interleave(t)
    is_ctx = torch.tensor([k == A_KIND for k in kinds])
    is_act = torch.tensor([k == ACTION_KIND for k in kinds])
    is_dream = ~(is_ctx | is_act)
    past = time[None, :] <= time[:, None]
    same_step = time[None, :] == time[:, None]

    mask = past & is_ctx[None, :]
    mask |= same_step & is_act[:, None] & is_dream[None, :]
    if variant == "paper":
        same_kind = torch.tensor([[a == b for b in kinds] for a in kinds])
        mask |= same_step & same_kind & ~is_ctx[:, None]
    elif variant != "code":
        raise ValueError(f"unknown attention variant {variant!r}")
    return mask
