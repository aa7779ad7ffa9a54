"""Floors on hand-made splits, computed by hand."""

import pytest

from empathy.study.floors import floor_metrics


def test_majority_and_every_token_floors():
    train_levels = [0, 0, 1, 2, 0]
    test = {
        "level": [0, 1, 2, 0],
        # real response tokens; the last position of the first two rows is padding/special
        "response_mask": [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]],
        "rationale_paper": [[1, 1, 1, 0], [0, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]],
        "rationale_strict": [[0, 0, 0, 0], [0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]],
    }
    floors = floor_metrics(train_levels, test)
    assert floors["majority_level"] == 0
    assert floors["majority_acc"] == pytest.approx(0.5)
    # per-class F1: level 0 = 2*2/(2*2+2) = 2/3, levels 1 and 2 = 0 -> macro 2/9
    assert floors["majority_macro_f1"] == pytest.approx(2 / 9)
    # every token predicted. Row 1: gold [1,3) of [0,3): token F1 2*2/(2*2+1) = 0.8, IOU 2/3 -> match;
    # row 2: gold [0,1) of [0,4): token F1 2*1/(2*1+3) = 0.4, IOU 1/4 -> no match; rows 0, 3 exact.
    assert floors["every_token_rationale_token_f1_paper"] == pytest.approx((1 + 0.8 + 0.4 + 1) / 4)
    assert floors["every_token_rationale_iou_f1_paper"] == pytest.approx((1 + 1 + 0 + 1) / 4)
    # strict: rows with gold level > 0 only (rows 1 and 2)
    assert floors["every_token_rationale_token_f1_strict"] == pytest.approx((0.8 + 0.4) / 2)
    assert floors["every_token_rationale_iou_f1_strict"] == pytest.approx(0.5)
