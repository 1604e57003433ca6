"""The structured attention mask over a window of timesteps, built once as a boolean table.

Token layout per timestep: A (context: text, state, image latents, CLS) then B (<dream> groups in
DREAM_ORDER, then <action>). True means "query row may attend to key column", the convention of
`scaled_dot_product_attention`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

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


def serving_token_index(steps: int, context_tokens: int, tokens_per_step: int) -> torch.Tensor:
    """Positions, in a window's full layout, of the tokens a serving step needs, in their original order.

    Serving reads only the newest timestep's <action> outputs. Every timestep's context tokens stay; of
    the query tokens only the newest timestep's stay (930 -> 417 tokens for paper-calvin's window of 10).
    """
    first = torch.arange(steps)[:, None] * tokens_per_step
    context = (first + torch.arange(context_tokens)).flatten()
    newest = torch.arange((steps - 1) * tokens_per_step + context_tokens, steps * tokens_per_step)
    return torch.cat([context, newest])


def prune_attention_mask(full: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The (len(keep), len(keep)) mask among the kept tokens of `full`.

    Pruning is exact only when no kept token may attend to a dropped one: then every kept token's output,
    layer by layer, depends on kept tokens alone. That holds for both variants of `build_attention_mask`
    (no token sees another timestep's queries); a mask where it fails is refused rather than served wrong.
    """
    dropped = torch.ones(full.shape[0], dtype=torch.bool, device=full.device)
    dropped[keep] = False
    rows = full[keep]
    if rows[:, dropped].any():
        raise ValueError("attention mask: a kept token attends to a dropped query token, so the pruned "
                         "serving sequence would not equal the full window; serve the full sequence")
    return rows[:, keep]


def flex_block_mask(table: torch.Tensor, block_size: int = 128) -> BlockMask:
    """The same boolean table as a FlexAttention `BlockMask`, which lets a fused kernel skip empty blocks.

    `mask_mod` reads the table itself, so the block mask allows exactly the pairs the table allows.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    n = table.shape[0]

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return table[q, kv]

    return create_block_mask(mask_mod, None, None, n, n, device=table.device, BLOCK_SIZE=block_size)
