"""Rationale span decoding against hand-made cases and a plain loop reference."""

from __future__ import annotations

import random

import pytest
import torch
from omegaconf import OmegaConf

from empathy.decoding import (
    RationaleDecoding,
    decode_rationales,
    decoding_config,
    rationale_probs,
)

pytestmark = pytest.mark.usefixtures("one_thread")

HI, LO = 0.9, 0.1


def p(rows):
    return torch.tensor(rows, dtype=torch.float32)


def m(rows):
    return torch.tensor(rows, dtype=torch.bool)


def full(probs):
    return torch.ones_like(probs, dtype=torch.bool)


def decode(rows, mask=None, **kwargs):
    probs = p(rows)
    return decode_rationales(probs, full(probs) if mask is None else m(mask), **kwargs).tolist()


def reference(probs, mask, threshold, fill_gaps, min_span):
    """The spec as plain loops, one row at a time."""
    out = []
    for row_p, row_m in zip(probs.tolist(), mask.tolist(), strict=True):
        on = [bool(mk) and pr >= threshold for pr, mk in zip(row_p, row_m, strict=True)]
        filled = list(on)
        n = len(on)
        for i in range(n):
            if on[i] or not row_m[i]:
                continue
            lo = i
            while lo >= 0 and row_m[lo] and not on[lo]:
                lo -= 1
            hi = i
            while hi < n and row_m[hi] and not on[hi]:
                hi += 1
            bounded = lo >= 0 and on[lo] and hi < n and on[hi]
            if bounded and hi - lo - 1 <= fill_gaps:
                filled[i] = True
        kept = [0] * n
        i = 0
        while i < n:
            if filled[i]:
                j = i
                while j < n and filled[j]:
                    j += 1
                if j - i >= min_span:
                    kept[i:j] = [1] * (j - i)
                i = j
            else:
                i += 1
        out.append(kept)
    return out


# ---------------------------------------------------------------------------------------
# decode_rationales
# ---------------------------------------------------------------------------------------


def test_threshold_is_inclusive_and_per_token():
    row = [[0.1, 0.39, 0.4, 0.5, 0.6]]
    assert decode(row) == [[0, 0, 0, 1, 1]]
    assert decode(row, threshold=0.4) == [[0, 0, 1, 1, 1]]
    assert decode(row, threshold=0.7) == [[0, 0, 0, 0, 0]]


def test_zero_outside_the_mask_always():
    row = [[HI, HI, HI, HI]]
    assert decode(row, [[1, 0, 1, 0]]) == [[1, 0, 1, 0]]
    assert decode(row, [[0, 0, 0, 0]], fill_gaps=3) == [[0, 0, 0, 0]]


def test_gap_filling_fills_gaps_up_to_fill_gaps():
    one_gap = [[HI, LO, HI]]
    two_gap = [[HI, LO, LO, HI]]
    assert decode(one_gap) == [[1, 0, 1]]
    assert decode(one_gap, fill_gaps=1) == [[1, 1, 1]]
    assert decode(two_gap, fill_gaps=1) == [[1, 0, 0, 1]]  # longer than fill_gaps: kept
    assert decode(two_gap, fill_gaps=2) == [[1, 1, 1, 1]]
    mixed = [[HI, LO, HI, LO, LO, LO, HI, LO, LO, HI]]
    assert decode(mixed, fill_gaps=2) == [[1, 1, 1, 0, 0, 0, 1, 1, 1, 1]]


def test_gap_filling_needs_a_predicted_run_on_both_sides():
    assert decode([[LO, LO, HI, LO, LO]], fill_gaps=5) == [[0, 0, 1, 0, 0]]
    assert decode([[LO, HI, LO, HI, LO]], fill_gaps=5) == [[0, 1, 1, 1, 0]]


def test_gap_filling_does_not_cross_the_mask_end_or_padding():
    # predicted run, gap, then padding whose probabilities are high: nothing bridges
    row = [[HI, LO, LO, HI, HI]]
    assert decode(row, [[1, 1, 1, 0, 0]], fill_gaps=4) == [[1, 0, 0, 0, 0]]
    # a masked-out token inside the gap blocks the fill, even if its probability is high
    assert decode([[HI, LO, HI, LO, HI]], [[1, 1, 0, 1, 1]], fill_gaps=4) == [[1, 0, 0, 0, 1]]
    assert decode([[HI, LO, LO, HI]], [[1, 0, 1, 1]], fill_gaps=3) == [[1, 0, 0, 1]]
    # a masked-out token right between two runs is not filled either
    assert decode([[HI, HI, HI]], [[1, 0, 1]], fill_gaps=3) == [[1, 0, 1]]
    # leading masked-out tokens (e.g. a prefix outside the response) are not gaps
    assert decode([[HI, LO, HI, LO, HI]], [[0, 1, 1, 1, 1]], fill_gaps=1) == [[0, 0, 1, 1, 1]]


def test_min_span_removes_short_runs():
    row = [[HI, LO, HI, HI, LO, HI, HI, HI]]
    assert decode(row, min_span=1) == [[1, 0, 1, 1, 0, 1, 1, 1]]
    assert decode(row, min_span=2) == [[0, 0, 1, 1, 0, 1, 1, 1]]
    assert decode(row, min_span=3) == [[0, 0, 0, 0, 0, 1, 1, 1]]
    assert decode(row, min_span=4) == [[0, 0, 0, 0, 0, 0, 0, 0]]


def test_min_span_applies_after_gap_filling_and_runs_break_at_the_mask():
    assert decode([[HI, LO, HI]], fill_gaps=1, min_span=3) == [[1, 1, 1]]
    assert decode([[HI, LO, HI]], fill_gaps=0, min_span=2) == [[0, 0, 0]]
    assert decode([[HI, HI, HI, HI]], [[1, 1, 0, 1]], min_span=2) == [[1, 1, 0, 0]]
    # runs touching either end of the row
    assert decode([[HI, HI, LO, HI, HI, HI]], min_span=2) == [[1, 1, 0, 1, 1, 1]]


def test_batch_of_mixed_lengths():
    probs = p(
        [
            [HI, LO, HI, HI, HI, HI],  # length 6
            [LO, HI, LO, HI, HI, HI],  # length 4, padding probabilities high
            [HI, LO, HI, HI, LO, LO],  # length 3
            [HI, HI, HI, HI, HI, HI],  # length 0
        ]
    )
    mask = m([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3, [0] * 6])
    assert decode_rationales(probs, mask, fill_gaps=1).tolist() == [
        [1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0] * 6,
    ]
    assert decode_rationales(probs, mask, min_span=2).tolist() == [
        [0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0] * 6,
    ]


def test_default_decoding_equals_argmax_of_two_class_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 40, 2, generator=gen) * 3
    logits[..., 1] += torch.where((logits[..., 1] - logits[..., 0]).abs() < 1e-3, 1.0, 0.0)
    lengths = torch.randint(0, 41, (16,), generator=gen)
    mask = torch.arange(40).unsqueeze(0) < lengths.unsqueeze(1)
    today = logits.argmax(-1) * mask.to(torch.long)  # EmpathyModule.predictions
    decoded = decode_rationales(rationale_probs(logits), mask)
    assert decoded.dtype == torch.long
    assert torch.equal(decoded, today)
    assert torch.equal(RationaleDecoding().decode(rationale_probs(logits), mask), today)


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.7])
@pytest.mark.parametrize("fill_gaps", [0, 1, 3])
@pytest.mark.parametrize("min_span", [1, 2, 3])
def test_matches_the_loop_reference_on_random_rows(threshold, fill_gaps, min_span):
    rng = random.Random(threshold * 100 + fill_gaps * 10 + min_span)
    probs = p([[rng.choice([0.05, 0.3, 0.45, 0.55, 0.65, 0.95]) for _ in range(25)] for _ in range(30)])
    mask = m([[rng.random() > 0.15 for _ in range(25)] for _ in range(30)])  # holes too
    got = decode_rationales(probs, mask, threshold, fill_gaps, min_span).tolist()
    assert got == reference(probs, mask, threshold, fill_gaps, min_span)


def test_int_mask_half_precision_and_empty_shapes():
    probs = p([[HI, LO, HI]])
    assert decode_rationales(probs.half(), torch.tensor([[1, 1, 1]]), fill_gaps=1).tolist() == [[1, 1, 1]]
    assert decode_rationales(torch.zeros(0, 5), torch.zeros(0, 5, dtype=torch.bool), 0.5, 2, 2).shape == (0, 5)
    assert decode_rationales(torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.bool), 0.5, 2, 2).shape == (3, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0.0}, "threshold must be in \\(0, 1\\)"),
        ({"threshold": 1.0}, "threshold must be in \\(0, 1\\)"),
        ({"threshold": float("nan")}, "threshold must be in \\(0, 1\\)"),
        ({"threshold": "0.5"}, "threshold must be a number"),
        ({"threshold": True}, "threshold must be a number"),
        ({"fill_gaps": -1}, "fill_gaps must be an integer >= 0"),
        ({"fill_gaps": 1.0}, "fill_gaps must be an integer >= 0"),
        ({"min_span": 0}, "min_span must be an integer >= 1"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    probs = p([[HI]])
    with pytest.raises(ValueError, match=message):
        decode_rationales(probs, full(probs), **kwargs)
    with pytest.raises(ValueError, match=message):
        RationaleDecoding(**kwargs)


def test_bad_tensors_are_clear_errors():
    with pytest.raises(ValueError, match="use rationale_probs"):
        decode_rationales(torch.zeros(2, 3, 2), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="floating-point"):
        decode_rationales(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="same shape"):
        decode_rationales(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[batch, tokens, 2\]"):
        rationale_probs(torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------
# RationaleDecoding
# ---------------------------------------------------------------------------------------


def test_rationale_decoding_from_config():
    assert RationaleDecoding.from_config(None) == RationaleDecoding(0.5, 0, 1)
    assert RationaleDecoding.from_config({}) == RationaleDecoding()
    assert RationaleDecoding.from_config({"threshold": 0.4, "fill_gaps": 1}) == RationaleDecoding(0.4, 1, 1)
    cfg = OmegaConf.create({"threshold": 0.3, "fill_gaps": 2, "min_span": 2})
    decoding = RationaleDecoding.from_config(cfg)
    assert decoding.to_dict() == {"threshold": 0.3, "fill_gaps": 2, "min_span": 2}
    assert decoding.tag == "t0.3g2m2"
    assert RationaleDecoding(0.4, 1).tag == "t0.4g1"
    with pytest.raises(ValueError, match=r"unknown rationale decoding key\(s\) \['gap'\]"):
        RationaleDecoding.from_config({"gap": 1})
    with pytest.raises(ValueError, match="must be a mapping"):
        RationaleDecoding.from_config([0.5])
    with pytest.raises(ValueError, match="fill_gaps must be an integer >= 0"):
        RationaleDecoding.from_config({"fill_gaps": -2})


def test_rationale_decoding_tags_round_trip_and_rank_ties():
    for decoding in (RationaleDecoding(0.4, 1), RationaleDecoding(0.05, 32), RationaleDecoding(0.3, 2, 3)):
        assert RationaleDecoding.from_tag(decoding.tag) == decoding
    for bad in ("0.4g1", "t0.4", "tg1", "t0.4gx", "t1.5g0"):
        with pytest.raises(ValueError):
            RationaleDecoding.from_tag(bad)
    tied = [RationaleDecoding(0.3, 2), RationaleDecoding(0.7, 0), RationaleDecoding(0.3, 0), RationaleDecoding(0.5, 1)]
    assert sorted(tied, key=lambda d: d.preference) == [
        RationaleDecoding(0.3, 0),
        RationaleDecoding(0.7, 0),
        RationaleDecoding(0.5, 1),
        RationaleDecoding(0.3, 2),
    ]


def test_rationale_decoding_per_mechanism():
    cfg = OmegaConf.create(
        {"threshold": 0.2, "fill_gaps": 2, "min_span": 1, "IP": {"fill_gaps": 8}, "ER": {}, "EX": None}
    )
    assert RationaleDecoding.from_config(cfg) == RationaleDecoding(0.2, 2)
    assert RationaleDecoding.from_config(cfg, "ER") == RationaleDecoding(0.2, 2)
    assert RationaleDecoding.from_config(cfg, "EX") == RationaleDecoding(0.2, 2)
    assert RationaleDecoding.from_config(cfg, "IP") == RationaleDecoding(0.2, 8)
    # what a checkpoint stores: the shared setting and each mechanism that differs, in full
    assert decoding_config(cfg) == {
        "threshold": 0.2,
        "fill_gaps": 2,
        "min_span": 1,
        "IP": {"threshold": 0.2, "fill_gaps": 8, "min_span": 1},
    }
    assert decoding_config(decoding_config(cfg)) == decoding_config(cfg)
    assert decoding_config({"threshold": 0.3}, ("ER",)) == {"threshold": 0.3, "fill_gaps": 0, "min_span": 1}
    # a mechanism's bad value is an error even when another mechanism is decoded
    with pytest.raises(ValueError, match=r"unknown rationale decoding key\(s\) \['gap'\] for EX"):
        RationaleDecoding.from_config({"EX": {"gap": 1}}, "ER")
    with pytest.raises(ValueError, match="threshold must be in"):
        RationaleDecoding.from_config({"IP": {"threshold": 1.5}})
    with pytest.raises(ValueError, match="IP: expected a mapping"):
        RationaleDecoding.from_config({"IP": 0.3})
    with pytest.raises(ValueError, match=r"unknown rationale decoding key\(s\) \['joint'\]"):
        RationaleDecoding.from_config({"joint": {}})


# ------------------------------------------------------------------------------- fallback
def test_fallback_gives_every_mask_token_to_a_row_with_a_level_but_no_token():
    probs = torch.tensor([[0.1, 0.2, 0.1, 0.0], [0.1, 0.2, 0.1, 0.0], [0.9, 0.2, 0.1, 0.0], [0.1, 0.1, 0.1, 0.1]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    level = torch.tensor([1, 0, 2, 2])
    out = decode_rationales(probs, mask, threshold=0.5, fallback=True, level=level)
    assert out.tolist() == [
        [1, 1, 1, 0],  # level 1, nothing decoded: the whole (masked) response, never the padding
        [0, 0, 0, 0],  # level 0: stays empty
        [1, 0, 0, 0],  # something decoded: left as it is
        [1, 1, 1, 1],
    ]
    # without levels every row counts as having one; without the fallback nothing changes
    assert decode_rationales(probs, mask, threshold=0.5, fallback=True)[1].tolist() == [1, 1, 1, 0]
    assert decode_rationales(probs, mask, threshold=0.5, level=level).sum() == 1
    # the fallback comes after min_span: a run too short to keep leaves the row empty, then full
    short = decode_rationales(
        torch.tensor([[0.9, 0.1, 0.1]]),
        torch.ones(1, 3, dtype=torch.bool),
        min_span=2,
        fallback=True,
        level=torch.tensor([1]),
    )
    assert short.tolist() == [[1, 1, 1]]
    with pytest.raises(ValueError, match="one predicted level per row"):
        decode_rationales(probs, mask, fallback=True, level=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="fallback must be true or false"):
        decode_rationales(probs, mask, fallback=1)


def test_fallback_in_the_setting_its_tag_and_its_config():
    decoding = RationaleDecoding(threshold=0.4, fill_gaps=16, min_span=5, fallback=True)
    assert decoding.tag == "t0.4g16m5f" and RationaleDecoding.from_tag("t0.4g16m5f") == decoding
    assert RationaleDecoding.from_tag("t0.3g2f") == RationaleDecoding(0.3, 2, 1, True)
    assert decoding.to_dict() == {"threshold": 0.4, "fill_gaps": 16, "min_span": 5, "fallback": True}
    assert "fallback" not in RationaleDecoding(0.3, 2).to_dict()  # off: configs from before read the same
    assert RationaleDecoding.from_config({"threshold": 0.3, "IP": {"fallback": True}}, "IP").fallback
    assert not RationaleDecoding.from_config({"threshold": 0.3, "IP": {"fallback": True}}, "ER").fallback
    # among equal scores the plainer decoding is preferred
    assert RationaleDecoding(0.3, 2).preference < RationaleDecoding(0.3, 2, 2).preference < decoding.preference
    with pytest.raises(ValueError, match="fallback must be true or false"):
        RationaleDecoding(fallback="yes")
    probs, mask = torch.tensor([[0.1, 0.2]]), torch.ones(1, 2, dtype=torch.bool)
    assert decoding.decode(probs, mask, torch.tensor([0])).tolist() == [[0, 0]]
    assert decoding.decode(probs, mask, torch.tensor([1])).tolist() == [[1, 1]]
