"""Split-level metrics against hand-computed cases."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from sklearn.metrics import f1_score
from torchmetrics.classification import MulticlassF1Score

from empathy.metrics import (
    MulticlassMacroF1,
    RationaleIOUF1,
    RationaleMetrics,
    RationaleTokenF1,
    iou_f1,
    level_metrics,
    span_iou,
    spans_from_labels,
)


def t(rows):
    return torch.tensor(rows, dtype=torch.long)


def ones(batch, tokens):
    return torch.ones(batch, tokens, dtype=torch.long)


def computed(metric) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "compute called before update" on purpose
        return float(metric.compute())


# ---------------------------------------------------------------------------------------
# spans_from_labels / iou_f1
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "mask", "expected"),
    [
        ([0, 1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 0, 1], [(1, 3), (4, 5), (6, 7)]),
        ([0, 0, 0], None, []),
        ([1, 1, 1], None, [(0, 3)]),
        ([1, 0, 1], None, [(0, 1), (2, 3)]),
        ([1, 1, 0], [0, 1, 1], [(1, 2)]),  # a 1 in a masked-out position is ignored
        ([1, 1, 1, 1], [1, 1, 0, 1], [(0, 2), (3, 4)]),  # a masked position splits a run
        ([1, 1, 1], [0, 0, 0], []),
        ([], None, []),
    ],
)
def test_spans_from_labels(labels, mask, expected):
    assert spans_from_labels(labels, mask) == expected
    as_bool = torch.tensor(labels, dtype=torch.bool)
    assert spans_from_labels(as_bool, None if mask is None else torch.tensor(mask)) == expected


def test_spans_from_labels_rejects_bad_shapes():
    with pytest.raises(ValueError, match="1-D"):
        spans_from_labels(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="same shape"):
        spans_from_labels([0, 1, 1], [1, 1])


def test_span_iou():
    assert span_iou((0, 2), (0, 4)) == 0.5
    assert span_iou((0, 3), (1, 4)) == 0.5
    assert span_iou((0, 2), (2, 4)) == 0.0
    assert span_iou((5, 8), (5, 7)) == pytest.approx(2 / 3)


def test_iou_f1_empty_cases():
    assert iou_f1([], []) == 1.0
    assert iou_f1([(0, 1)], []) == 0.0
    assert iou_f1([], [(0, 1)]) == 0.0


def test_iou_f1_threshold_is_inclusive_at_one_half():
    assert iou_f1([(0, 2)], [(0, 4)]) == 1.0  # IOU 2/4 = 0.5 exactly: a match
    assert iou_f1([(0, 3)], [(1, 4)]) == 1.0  # IOU 2/4 = 0.5, not nested
    assert iou_f1([(0, 2)], [(0, 5)]) == 0.0  # IOU 2/5 = 0.4
    assert iou_f1([(0, 2)], [(0, 4)], threshold=0.51) == 0.0
    assert iou_f1([(0, 2)], [(2, 4)]) == 0.0  # touching, no overlap


def test_iou_f1_hand_computed():
    # (0,2)~(1,3): 1/3 no; (5,8)~(5,7): 2/3 yes; (10,11): nothing -> P 1/3, R 1/2, F1 0.4
    assert iou_f1([(0, 2), (5, 8), (10, 11)], [(1, 3), (5, 7)]) == pytest.approx(0.4)


def test_iou_f1_gold_span_matched_by_at_most_one_prediction():
    # Both predictions have IOU 0.5 with the single gold span: only one may take it.
    # P = 1/2, R = 1/1 -> F1 = 2/3 (counting both would give precision 1 and recall 2).
    assert iou_f1([(0, 2), (2, 4)], [(0, 4)]) == pytest.approx(2 / 3)
    # and the other way round: one prediction covers two gold spans, P = 1, R = 1/2
    assert iou_f1([(0, 4)], [(0, 2), (2, 4)]) == pytest.approx(2 / 3)


def test_iou_f1_uses_the_largest_one_to_one_matching():
    # (0,4) matches both gold spans, (0,2) only the first: a greedy first-come matching
    # would give 1 match; the largest matching pairs (0,4)-(2,4) and (0,2)-(0,2).
    assert iou_f1([(0, 4), (0, 2)], [(0, 2), (2, 4)]) == 1.0


def test_iou_f1_rejects_bad_input():
    with pytest.raises(ValueError, match="start < end"):
        iou_f1([(3, 3)], [(0, 1)])
    with pytest.raises(ValueError, match="threshold"):
        iou_f1([(0, 1)], [(0, 1)], threshold=0.0)


# ---------------------------------------------------------------------------------------
# RationaleTokenF1 / RationaleIOUF1
# ---------------------------------------------------------------------------------------

# Four examples of 12 tokens; expected per-example scores worked out by hand below.
PREDS = t(
    [
        [1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ]
)
GOLD = t(
    [
        [0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    ]
)
MASK = ones(4, 12)
MASK[3, 2] = 0  # example 3: position 2 is not a response token

# token F1: ex0 tp 3, |pred| 6, |gold| 4 -> 6/10; ex1 both empty -> 1; ex2 gold empty -> 0;
# ex3 within the mask pred {0,1}, gold {0,1,3} -> 2*2/5 = 0.8
TOKEN_F1 = [0.6, 1.0, 0.0, 0.8]
# IOU F1: ex0 see test_iou_f1_hand_computed -> 0.4; ex1 -> 1; ex2 -> 0;
# ex3 pred spans [(0,2)], gold spans [(0,2),(3,4)] (split by the mask) -> P 1, R 1/2 -> 2/3
IOU_F1 = [0.4, 1.0, 0.0, 2 / 3]


@pytest.mark.parametrize(
    ("metric_cls", "per_example"),
    [
        (RationaleTokenF1, TOKEN_F1),
        (RationaleIOUF1, IOU_F1),
    ],
)
def test_rationale_metric_hand_computed(metric_cls, per_example):
    metric = metric_cls()
    metric.update(PREDS, GOLD, MASK)
    assert computed(metric) == pytest.approx(sum(per_example) / 4)
    assert metric.compute().dtype == torch.float32
    for i, expected in enumerate(per_example):
        single = metric_cls()
        single.update(PREDS[i : i + 1], GOLD[i : i + 1], MASK[i : i + 1])
        assert computed(single) == pytest.approx(expected), f"example {i}"


@pytest.mark.parametrize("metric_cls", [RationaleTokenF1, RationaleIOUF1])
def test_empty_cases(metric_cls):
    none = t([[0, 0, 0]])
    some = t([[0, 1, 0]])
    mask = ones(1, 3)
    for preds, gold, expected in [(none, none, 1.0), (some, none, 0.0), (none, some, 0.0)]:
        metric = metric_cls()
        metric.update(preds, gold, mask)
        assert computed(metric) == expected
    # rationale tokens only in masked-out positions: both empty -> 1
    metric = metric_cls()
    metric.update(some, t([[1, 0, 1]]), t([[0, 0, 0]]))
    assert computed(metric) == 1.0


@pytest.mark.parametrize("metric_cls", [RationaleTokenF1, RationaleIOUF1])
def test_masked_positions_count_for_nothing(metric_cls):
    # A predicted 1 at a padding position is ignored; so is a gold 1 there (e.g. -100 labels
    # outside the mask are allowed).
    preds = t([[1, 1, 1, 0, 1], [0, 1, 1, 0, 0]])
    gold = t([[0, 1, 1, 0, -100], [1, 1, 1, 0, -100]])
    mask = t([[0, 1, 1, 1, 0], [0, 1, 1, 1, 0]])
    metric = metric_cls()
    metric.update(preds, gold, mask)
    assert computed(metric) == 1.0


def test_masked_position_splits_spans_in_iou_f1():
    # Gold run 0..3 with position 2 masked: gold spans (0,2) and (3,4); a prediction of
    # (0,4) with the same mask is also split, so both spans match exactly.
    mask = t([[1, 1, 0, 1]])
    metric = RationaleIOUF1()
    metric.update(t([[1, 1, 1, 1]]), t([[1, 1, 1, 1]]), mask)
    assert computed(metric) == 1.0
    # Unmasked, the prediction (0,4) vs gold (0,2),(3,4): IOU 2/4 matches one, 1/4 not.
    metric = RationaleIOUF1()
    metric.update(t([[1, 1, 1, 1]]), t([[1, 1, 0, 1]]), ones(1, 4))
    assert computed(metric) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("metric_cls", "per_example"),
    [
        (RationaleTokenF1, TOKEN_F1),
        (RationaleIOUF1, IOU_F1),
    ],
)
def test_accumulates_over_the_split_not_batch_means(metric_cls, per_example):
    # batches of 3 and 1 examples: the mean of batch means weighs the last example 3x
    whole = sum(per_example) / 4
    batch_means = (sum(per_example[:3]) / 3 + per_example[3]) / 2
    assert not math.isclose(whole, batch_means, abs_tol=0.01)

    metric = metric_cls()
    metric.update(PREDS[:3], GOLD[:3], MASK[:3])
    metric.update(PREDS[3:], GOLD[3:], MASK[3:])
    assert computed(metric) == pytest.approx(whole)

    concatenated = metric_cls()
    concatenated.update(PREDS, GOLD, MASK)
    assert computed(metric) == pytest.approx(computed(concatenated))


@pytest.mark.parametrize("metric_cls", [RationaleTokenF1, RationaleIOUF1])
def test_batches_may_have_different_token_lengths(metric_cls):
    metric = metric_cls()
    metric.update(t([[1, 0]]), t([[1, 0]]), ones(1, 2))
    metric.update(t([[0, 0, 0, 0, 0]]), t([[0, 0, 0, 0, 1]]), ones(1, 5))
    assert computed(metric) == 0.5


@pytest.mark.parametrize("metric_cls", [RationaleTokenF1, RationaleIOUF1])
def test_states_are_sums_and_merge_exactly(metric_cls):
    assert set(metric_cls()._reductions) == {"score_sum", "count"}
    first, second, whole = metric_cls(), metric_cls(), metric_cls()
    first.update(PREDS[:1], GOLD[:1], MASK[:1])
    second.update(PREDS[1:], GOLD[1:], MASK[1:])
    whole.update(PREDS, GOLD, MASK)
    first.merge_state(second)  # what a DDP sum-reduction does
    assert computed(first) == pytest.approx(computed(whole))


@pytest.mark.parametrize("metric_cls", [RationaleTokenF1, RationaleIOUF1])
def test_reset(metric_cls):
    metric = metric_cls()
    metric.update(PREDS, GOLD, MASK)
    metric.reset()
    assert math.isnan(computed(metric))  # nothing seen
    metric.update(PREDS[1:2], GOLD[1:2], MASK[1:2])
    assert computed(metric) == 1.0


@pytest.mark.parametrize("metric_cls", [RationaleTokenF1, RationaleIOUF1])
def test_forward_returns_batch_value_and_accumulates(metric_cls):
    metric = metric_cls()
    batch_value = metric(PREDS[:1], GOLD[:1], MASK[:1])
    assert float(batch_value) == pytest.approx((TOKEN_F1 if metric_cls is RationaleTokenF1 else IOU_F1)[0])
    metric(PREDS[1:], GOLD[1:], MASK[1:])
    per_example = TOKEN_F1 if metric_cls is RationaleTokenF1 else IOU_F1
    assert computed(metric) == pytest.approx(sum(per_example) / 4)


@pytest.mark.parametrize("metric_cls", [RationaleTokenF1, RationaleIOUF1])
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int32, torch.long])
def test_bool_and_int_inputs_agree(metric_cls, dtype):
    metric = metric_cls()
    metric.update(PREDS.to(dtype), GOLD.to(dtype), MASK.to(dtype))
    expected = TOKEN_F1 if metric_cls is RationaleTokenF1 else IOU_F1
    assert computed(metric) == pytest.approx(sum(expected) / 4)


@pytest.mark.parametrize("metric_cls", [RationaleTokenF1, RationaleIOUF1])
def test_bad_inputs_raise_value_error(metric_cls):
    metric = metric_cls()
    with pytest.raises(ValueError, match="same shape"):
        metric.update(ones(2, 4), ones(2, 5), ones(2, 4))
    with pytest.raises(ValueError, match="same shape"):
        metric.update(ones(2, 4), ones(2, 4), ones(3, 4))
    with pytest.raises(ValueError, match=r"\[batch, tokens\]"):
        metric.update(
            torch.ones(4, dtype=torch.long),
            torch.ones(4, dtype=torch.long),
            torch.ones(4, dtype=torch.long),
        )
    with pytest.raises(ValueError, match="argmax"):
        metric.update(torch.rand(2, 4), ones(2, 4), ones(2, 4))
    with pytest.raises(ValueError, match="0/1"):
        metric.update(ones(2, 4) * 2, ones(2, 4), ones(2, 4))
    assert math.isnan(computed(metric))  # nothing was accumulated


def test_zero_row_batch_is_a_no_op():
    metric = RationaleIOUF1()
    metric.update(ones(0, 4), ones(0, 4), ones(0, 4))
    assert math.isnan(computed(metric))
    metric.update(PREDS, GOLD, MASK)
    assert computed(metric) == pytest.approx(sum(IOU_F1) / 4)


def test_iou_metric_threshold_argument():
    preds, gold, mask = t([[1, 1, 0, 0]]), t([[1, 1, 1, 1]]), ones(1, 4)
    default, stricter = RationaleIOUF1(), RationaleIOUF1(threshold=0.75)
    default.update(preds, gold, mask)
    stricter.update(preds, gold, mask)
    assert computed(default) == 1.0
    assert computed(stricter) == 0.0
    with pytest.raises(ValueError, match="threshold"):
        RationaleIOUF1(threshold=1.5)


# ---------------------------------------------------------------------------------------
# RationaleMetrics (paper and strict labelling)
# ---------------------------------------------------------------------------------------

R_PREDS = t([[1, 1, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
R_MASK = t([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]])
R_LEVEL = t([0, 1, 2, 0])
# paper labelling: level-0 rows have every response token as rationale
R_PAPER = t([[1, 1, 1, 1], [0, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]])
# strict labelling: level-0 rows have none
R_STRICT = t([[0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
KEYS = {
    "rationale_token_f1_paper",
    "rationale_iou_f1_paper",
    "rationale_token_f1_strict",
    "rationale_iou_f1_strict",
}


def test_rationale_metrics_hand_computed():
    # row0: token 1, IOU 1 (paper only); row1: token 2*1/3 = 2/3, IOU (1,3)~(1,2) = 0.5 -> 1;
    # row2: 0, 0; row3 (paper only): prediction only at the masked position -> empty vs
    # gold (0,3) -> 0, 0.
    metrics = RationaleMetrics()
    metrics.update(R_PREDS, R_PAPER, R_STRICT, R_MASK, R_LEVEL)
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert set(values) == KEYS
    assert values["rationale_token_f1_paper"] == pytest.approx((1 + 2 / 3 + 0 + 0) / 4)
    assert values["rationale_iou_f1_paper"] == pytest.approx((1 + 1 + 0 + 0) / 4)
    assert values["rationale_token_f1_strict"] == pytest.approx((2 / 3 + 0) / 2)
    assert values["rationale_iou_f1_strict"] == pytest.approx((1 + 0) / 2)


def test_rationale_metrics_preds_paper_scores_only_the_paper_policy():
    # preds_paper = gold paper labels -> paper metrics 1; strict ones still use preds
    metrics = RationaleMetrics()
    metrics.update(R_PREDS, R_PAPER, R_STRICT, R_MASK, R_LEVEL, preds_paper=R_PAPER)
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values["rationale_token_f1_paper"] == 1.0
    assert values["rationale_iou_f1_paper"] == 1.0
    assert values["rationale_token_f1_strict"] == pytest.approx(1 / 3)
    assert values["rationale_iou_f1_strict"] == pytest.approx(1 / 2)


def test_rationale_metrics_accumulate_and_reset():
    metrics = RationaleMetrics()
    # first batch only level-0 rows, second only level > 0: strict sees rows 1 and 2
    metrics.update(R_PREDS[[0, 3]], R_PAPER[[0, 3]], R_STRICT[[0, 3]], R_MASK[[0, 3]], R_LEVEL[[0, 3]])
    metrics.update(R_PREDS[1:3], R_PAPER[1:3], R_STRICT[1:3], R_MASK[1:3], R_LEVEL[1:3])
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values["rationale_token_f1_paper"] == pytest.approx(5 / 12)
    assert values["rationale_token_f1_strict"] == pytest.approx(1 / 3)
    metrics.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert all(math.isnan(float(v)) for v in metrics.compute().values())


def test_rationale_metrics_strict_is_nan_without_level_above_zero():
    metrics = RationaleMetrics()
    rows = [0, 3]
    metrics.update(R_PREDS[rows], R_PAPER[rows], R_STRICT[rows], R_MASK[rows], R_LEVEL[rows])
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values["rationale_token_f1_paper"] == pytest.approx(0.5)
    assert values["rationale_iou_f1_paper"] == pytest.approx(0.5)
    assert math.isnan(values["rationale_token_f1_strict"])
    assert math.isnan(values["rationale_iou_f1_strict"])


def test_rationale_metrics_bad_level_raises():
    metrics = RationaleMetrics()
    with pytest.raises(ValueError, match="one gold level per example"):
        metrics.update(R_PREDS, R_PAPER, R_STRICT, R_MASK, R_LEVEL[:3])
    with pytest.raises(ValueError, match="same shape"):
        metrics.update(R_PREDS, R_PAPER, R_STRICT[:, :3], R_MASK, R_LEVEL)


# ---------------------------------------------------------------------------------------
# level metrics
# ---------------------------------------------------------------------------------------


def test_level_metrics_hand_computed_with_a_class_never_seen():
    # class 2 appears in neither preds nor target.
    # F1: class 0 tp 1 fn 1 -> 2/3; class 1 tp 2 fp 1 -> 4/5; class 2 -> 0 (zero_division)
    target = t([0, 0, 1, 1])
    preds = t([0, 1, 1, 1])
    metrics = level_metrics(num_classes=3)
    metrics.update(preds, target)
    values = metrics.compute()
    assert set(values) == {"acc", "macro_f1", "f1_per_class", "confusion"}
    assert float(values["acc"]) == pytest.approx(3 / 4)
    assert values["f1_per_class"].tolist() == pytest.approx([2 / 3, 4 / 5, 0.0])
    assert float(values["macro_f1"]) == pytest.approx((2 / 3 + 4 / 5 + 0) / 3)  # 22/45
    assert values["confusion"].tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    # sklearn agrees; torchmetrics' own macro would drop class 2 and report 11/15
    sk = f1_score(target, preds, average="macro", labels=[0, 1, 2], zero_division=0)
    assert float(values["macro_f1"]) == pytest.approx(sk) == pytest.approx(22 / 45)
    plain = MulticlassF1Score(num_classes=3, average="macro")(preds, target)
    assert float(plain) == pytest.approx(11 / 15)


def test_level_macro_f1_class_only_in_target():
    # class 2 never predicted: F1 0 in both libraries. class 0: 1; class 1: tp 1 fp 2 -> 1/2
    target, preds = t([0, 1, 2, 2]), t([0, 1, 1, 1])
    metric = MulticlassMacroF1(num_classes=3)
    metric.update(preds, target)
    assert float(metric.compute()) == pytest.approx(0.5)
    assert float(metric.compute()) == pytest.approx(
        f1_score(target, preds, average="macro", labels=[0, 1, 2], zero_division=0)
    )


def test_level_metrics_accumulate_over_the_split():
    # batch means of macro-F1 would be (2/9 + 1/3) / 2 = 5/18; over the split it is 22/45
    metrics = level_metrics()
    metrics.update(t([0, 1]), t([0, 0]))
    metrics.update(t([1, 1]), t([1, 1]))
    values = metrics.compute()
    assert float(values["macro_f1"]) == pytest.approx(22 / 45)
    assert float(values["acc"]) == pytest.approx(3 / 4)
    metrics.reset()
    metrics.update(t([2]), t([2]))
    assert float(metrics.compute()["macro_f1"]) == pytest.approx(1 / 3)


def test_level_macro_f1_matches_sklearn_on_random_splits():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(1, 30, (1,), generator=gen))
        # skewed draws so that some splits miss a class entirely
        target = torch.multinomial(torch.tensor([0.7, 0.25, 0.05]), n, True, generator=gen)
        preds = torch.multinomial(torch.tensor([0.8, 0.2, 0.0]), n, True, generator=gen)
        metric = MulticlassMacroF1(num_classes=3)
        for chunk in range(0, n, 7):
            metric.update(preds[chunk : chunk + 7], target[chunk : chunk + 7])
        expected = f1_score(target, preds, average="macro", labels=[0, 1, 2], zero_division=0)
        assert float(metric.compute()) == pytest.approx(expected)


def test_macro_f1_rejects_another_average():
    with pytest.raises(ValueError, match="macro"):
        MulticlassMacroF1(num_classes=3, average="weighted")
