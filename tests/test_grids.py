"""The study's selection grids (empathy.study.grids): every decoding of a grid scored at once,
against the metrics scored one decoding at a time."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from empathy.decoding import RationaleDecoding, rationale_probs
from empathy.metrics import RationaleIOUF1, RationaleMetrics, iou_f1, spans_from_labels
from empathy.study.grids import EXTENDED_GRID, DecodingGrid
from tests.test_decoding import HI, LO, full, m, p

pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------------------------------
# DecodingGrid
# ---------------------------------------------------------------------------------------

# row 0: gold one span 0..4; predicted [0.6 0.35 0.6 0.6] -> t0.5g0 two spans (1 of 2 matches
#        IOU 2/4 = 0.5: F1 2/3), t0.5g1 one span = gold (F1 1), t0.3 one span (F1 1)
# row 1: gold span 2..4; probs 0.45 there -> only thresholds <= 0.4 find it
# row 2: level 0: never scored
GRID_PROBS = p(
    [
        [0.6, 0.35, 0.6, 0.6, 0.1],
        [0.1, 0.1, 0.45, 0.45, 0.1],
        [0.9, 0.9, 0.9, 0.9, 0.9],
    ]
)
GRID_GOLD = torch.tensor([[1, 1, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]])
GRID_MASK = m([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
GRID_LEVEL = torch.tensor([2, 1, 0])


def quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "compute called before update" on purpose
        return fn()


def test_grid_keys_default():
    grid = DecodingGrid()
    grid.update(GRID_PROBS, GRID_GOLD, GRID_MASK, GRID_LEVEL)
    values = grid.compute()
    assert list(values) == [
        f"rationale_iou_f1@t{t}g{g}"
        for t in ("0.05", "0.1", "0.15", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7")
        for g in (0, 1, 2, 4, 8, 16, 32)
    ]
    assert all(isinstance(v, float) for v in values.values())


def test_grid_scores_hand_computed_cases_on_level_above_zero_rows():
    grid = DecodingGrid(thresholds=(0.3, 0.5, 0.7), fill_gaps=(0, 1))
    grid.update(GRID_PROBS, GRID_GOLD, GRID_MASK, GRID_LEVEL)
    values = grid.compute()
    assert values["rationale_iou_f1@t0.3g0"] == pytest.approx((1 + 1) / 2)
    assert values["rationale_iou_f1@t0.3g1"] == pytest.approx((1 + 1) / 2)
    assert values["rationale_iou_f1@t0.5g0"] == pytest.approx((2 / 3 + 0) / 2)
    assert values["rationale_iou_f1@t0.5g1"] == pytest.approx((1 + 0) / 2)
    assert values["rationale_iou_f1@t0.7g0"] == pytest.approx(0.0)  # nothing predicted
    assert grid.best() == (RationaleDecoding(0.3, 0), pytest.approx(1.0))


def test_grid_agrees_with_rationale_metrics_strict_at_the_default_decoding():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 20, 2, generator=gen)
    gold = (torch.rand(12, 20, generator=gen) > 0.6).long()
    mask = torch.arange(20).unsqueeze(0) < torch.randint(1, 21, (12, 1), generator=gen)
    level = torch.randint(0, 3, (12,), generator=gen)
    grid = DecodingGrid()
    grid.update(rationale_probs(logits), gold, mask, level)
    metrics = RationaleMetrics()
    preds = logits.argmax(-1) * mask.long()
    metrics.update(preds, gold, gold, mask, level)
    expected = float(metrics.compute()["rationale_iou_f1_strict"])
    assert grid.compute()["rationale_iou_f1@t0.5g0"] == pytest.approx(expected)


def test_grid_best_breaks_ties_towards_fewer_fills_then_threshold_near_half():
    grid = DecodingGrid(thresholds=(0.2, 0.4, 0.6), fill_gaps=(2, 0))
    probs = p([[0.9, 0.9, 0.1]])
    grid.update(probs, torch.tensor([[1, 1, 0]]), full(probs), torch.tensor([1]))
    assert set(grid.compute().values()) == {1.0}
    assert grid.best() == (RationaleDecoding(0.4, 0), 1.0)


def test_grid_nan_without_level_above_zero_rows_and_reset():
    grid = DecodingGrid(thresholds=(0.4, 0.5), fill_gaps=(0,))
    grid.update(GRID_PROBS[2:], GRID_GOLD[2:], GRID_MASK[2:], GRID_LEVEL[2:])
    assert all(math.isnan(v) for v in quiet(grid.compute).values())
    decoding, score = quiet(grid.best)
    assert decoding == RationaleDecoding(0.5, 0) and math.isnan(score)
    grid.update(GRID_PROBS, GRID_GOLD, GRID_MASK, GRID_LEVEL)
    assert not math.isnan(grid.compute()["rationale_iou_f1@t0.5g0"])
    grid.reset()
    assert all(math.isnan(v) for v in quiet(grid.compute).values())


def test_grid_states_are_sums_and_merge_like_a_ddp_reduction():
    first, second, whole = DecodingGrid(), DecodingGrid(), DecodingGrid()
    first.update(GRID_PROBS[:1], GRID_GOLD[:1], GRID_MASK[:1], GRID_LEVEL[:1])
    second.update(GRID_PROBS[1:], GRID_GOLD[1:], GRID_MASK[1:], GRID_LEVEL[1:])
    whole.update(GRID_PROBS, GRID_GOLD, GRID_MASK, GRID_LEVEL)
    for mine, theirs in zip(first.iou, second.iou, strict=True):
        assert mine._reductions and all(
            fx is not None for fx in mine._reductions.values()
        )  # dist_reduce_fx set on every state
        mine.merge_state(theirs)
    assert first.compute() == pytest.approx(whole.compute())


def test_grid_batches_of_different_lengths_and_token_f1():
    grid = DecodingGrid(thresholds=(0.5,), fill_gaps=(0, 1), token_f1=True)
    grid.update(p([[HI, LO, HI]]), torch.tensor([[1, 1, 1]]), m([[1, 1, 1]]), torch.tensor([1]))
    grid.update(p([[HI, HI]]), torch.tensor([[0, 1]]), m([[1, 1]]), torch.tensor([2]))
    values = grid.compute()
    assert set(values) == {
        "rationale_iou_f1@t0.5g0",
        "rationale_iou_f1@t0.5g1",
        "rationale_token_f1@t0.5g0",
        "rationale_token_f1@t0.5g1",
    }
    assert values["rationale_iou_f1@t0.5g0"] == pytest.approx((0 + 1) / 2)  # 1/3 IOU; 1/2 IOU
    assert values["rationale_iou_f1@t0.5g1"] == pytest.approx((1 + 1) / 2)
    assert values["rationale_token_f1@t0.5g0"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert values["rationale_token_f1@t0.5g1"] == pytest.approx((1 + 2 / 3) / 2)
    # the grid reuses the metric: same value as RationaleIOUF1 on the decoded labels
    single = RationaleIOUF1()
    single.update(torch.tensor([[1, 0, 1]]), torch.tensor([[1, 1, 1]]), m([[1, 1, 1]]))
    assert float(single.compute()) == iou_f1(spans_from_labels([1, 0, 1]), [(0, 3)]) == 0.0


def test_grid_rejects_bad_grids_and_inputs():
    with pytest.raises(ValueError, match="duplicate settings"):
        DecodingGrid(thresholds=(0.5, 0.5))
    with pytest.raises(ValueError, match="non-empty"):
        DecodingGrid(fill_gaps=())
    with pytest.raises(ValueError, match="threshold must be in"):
        DecodingGrid(thresholds=(0.0,))
    grid = DecodingGrid()
    with pytest.raises(ValueError, match="level must be a 1-D tensor"):
        grid.update(GRID_PROBS, GRID_GOLD, GRID_MASK, GRID_LEVEL[:2])
    with pytest.raises(ValueError, match="target_strict must have the shape"):
        grid.update(GRID_PROBS, GRID_GOLD[:, :3], GRID_MASK, GRID_LEVEL)


def test_the_extended_grid_scores_the_fallback_with_the_predicted_levels():
    grid = DecodingGrid(**EXTENDED_GRID)
    assert len(grid.decodings) == 200 and "t0.3g8m3f" in [d.tag for d in grid.decodings]
    small = DecodingGrid(thresholds=(0.5,), fill_gaps=(0,), fallbacks=(False, True))
    probs = torch.tensor([[0.1, 0.2, 0.1], [0.9, 0.9, 0.1]])
    gold = torch.tensor([[1, 1, 1], [1, 1, 0]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    small.update(probs, gold, mask, level=torch.tensor([2, 1]), pred_level=torch.tensor([1, 1]))
    scores = small.compute()
    # row 0: nothing decoded (IOU-F1 0) unless the fallback gives it the whole response (1)
    assert scores["rationale_iou_f1@t0.5g0"] == pytest.approx(0.5)
    assert scores["rationale_iou_f1@t0.5g0f"] == pytest.approx(1.0)
    predicted_none = DecodingGrid(thresholds=(0.5,), fill_gaps=(0,), fallbacks=(True,))
    predicted_none.update(probs, gold, mask, level=torch.tensor([2, 1]), pred_level=torch.tensor([0, 1]))
    assert predicted_none.compute()["rationale_iou_f1@t0.5g0f"] == pytest.approx(0.5)  # level 0 predicted: no fallback
    with pytest.raises(ValueError, match="must be non-empty"):
        DecodingGrid(fallbacks=())
