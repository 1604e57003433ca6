"""The structured mask equals the released DreamVLA code's mask table, cell by cell."""

from __future__ import annotations

import pytest

from policy_server.model.attention_mask import build_attention_mask, step_layout
from policy_server.model.config import preset

# The reference table, transcribed: (query kind, key column) -> may attend.
# Key columns: context at an earlier step / same step; dream at same step / other step; action any step.
CODE_TABLE = {
    ("context", "ctx_past"): True, ("context", "ctx_same"): True, ("context", "dream_same"): False,
    ("context", "dream_other"): False, ("context", "action"): False,
    ("dream", "ctx_past"): True, ("dream", "ctx_same"): True, ("dream", "dream_same"): False,
    ("dream", "dream_other"): False, ("dream", "action"): False,
    ("action", "ctx_past"): True, ("action", "ctx_same"): True, ("action", "dream_same"): True,
    ("action", "dream_other"): False, ("action", "action"): False,
}


def _classify(kind: str) -> str:
    return kind if kind in ("context", "action") else "dream"


def _column(k_kind: str, q_t: int, k_t: int) -> str:
    k = _classify(k_kind)
    if k == "context":
        return "ctx_same" if k_t == q_t else "ctx_past"
    if k == "dream":
        return "dream_same" if k_t == q_t else "dream_other"
    return "action"


@pytest.mark.parametrize("config", ["paper-calvin", "paper-real", "tiny"])
@pytest.mark.parametrize("steps", [2, 3])
def test_code_mask_matches_reference_table(config, steps):
    cfg = preset(config)
    n = 2 * cfg.dream_queries_per_view
    layout = step_layout(cfg.context_tokens, [(m, n) for m in cfg.dream_order], cfg.action.chunk)
    mask = build_attention_mask(steps, layout, "code")
    t = len(layout)
    assert t == cfg.tokens_per_step and mask.shape == (steps * t, steps * t)
    for q in range(steps * t):
        q_t, q_kind = divmod(q, t)
        for k in range(steps * t):
            k_t, k_kind = divmod(k, t)
            expected = False if k_t > q_t else CODE_TABLE[(_classify(layout[q_kind]),
                                                          _column(layout[k_kind], q_t, k_t))]
            assert bool(mask[q, k]) == expected, (q, k, layout[q_kind], layout[k_kind])


def test_calvin_layout_positions():
    """Token indices of one CALVIN timestep, as the reference lists them (93 tokens, 930 for S=10)."""
    cfg = preset("paper-calvin")
    layout = step_layout(cfg.context_tokens, [(m, 18) for m in cfg.dream_order], 3)
    assert len(layout) == 93 and cfg.sequence_tokens == 930
    assert layout[:36] == ["context"] * 36
    assert layout[36:54] == ["dynamic"] * 18 and layout[54:72] == ["depth"] * 18 and layout[72:90] == ["sam"] * 18
    assert layout[90:] == ["action"] * 3
    mask = build_attention_mask(10, layout, "code")
    assert not mask[36, 36] and mask[36, 35] and not mask[36, 93]  # dream: not itself, own A, not next step
    assert mask[90 + 93, 36 + 93] and not mask[90 + 93, 36]  # action: same-step dream yes, earlier dream no
    assert mask[93, 0] and not mask[0, 93]  # A of step 1 sees step 0, never the reverse


def test_paper_variant_cuts_only_between_modalities():
    layout = step_layout(2, [("dynamic", 2), ("depth", 2)], 2)  # c c | dyn dyn | dep dep | act act
    mask = build_attention_mask(2, layout, "paper")
    assert mask[2, 3] and mask[2, 2] and not mask[2, 4]  # a dynamic query sees its group, not depth
    assert mask[6, 7] and mask[6, 2] and mask[6, 4]  # actions see each other and every dream group
    assert not mask[8 + 2, 3]  # no group sees another timestep's queries
    assert not mask[0, 2]  # context never sees queries
    code = build_attention_mask(2, layout, "code")
    assert (code <= mask).all()  # the paper's variant only adds links
