"""Split-level metrics for empathy identification (level) and rationale extraction.

Every metric here accumulates sufficient statistics over a whole split and computes the
score once at the end (``compute``), so the value over a test set does not depend on the
batch size (the official EPITOME code averaged accuracy and F1 over batches of 32). The
states are sums with ``dist_reduce_fx="sum"``, so a DDP sync gives the same value as a
single process.

Rationale metrics (Sharma et al., 2020, following ERASER, DeYoung et al., 2020):

- token F1 (T-F1): per example, binary F1 of predicted vs gold rationale tokens within the
  response mask; mean over examples.
- IOU F1: per example, contiguous runs of rationale tokens are spans; a predicted span
  matches a gold span when their token IOU is >= 0.5; F1 of span precision and recall;
  mean over examples.

For both, an example with no gold and no predicted rationale token scores 1 (the official
code scored it 0, sklearn's default) and an example where only one of them is empty
scores 0.

Identification metrics: :func:`level_metrics` builds a ``MetricCollection`` whose macro-F1
averages over *all* classes, as ``sklearn.metrics.f1_score(average="macro",
labels=range(num_classes), zero_division=0)`` does: a class absent from both predictions and
targets counts as F1 0 (torchmetrics' own macro average would leave it out).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

__all__ = [
    "MulticlassMacroF1",
    "RationaleIOUF1",
    "RationaleMetrics",
    "RationaleTokenF1",
    "iou_f1",
    "level_metrics",
    "span_iou",
    "spans_from_labels",
]

Span = tuple[int, int]


# ---------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------


def _check_token_inputs(preds: Tensor, target: Tensor, mask: Tensor) -> None:
    """Raise a ValueError unless preds, target and mask are [batch, tokens] 0/1 tensors."""
    for name, x in (("preds", preds), ("target", target), ("mask", mask)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 2:
            raise ValueError(f"{name} must have shape [batch, tokens], got {tuple(x.shape)} ({x.ndim} dims)")
        if x.is_floating_point() or x.is_complex():
            raise ValueError(
                f"{name} must be a bool or integer tensor of 0/1 token labels, got {x.dtype}; "
                "for logits or probabilities, take the argmax / threshold first"
            )
    if preds.shape != target.shape or preds.shape != mask.shape:
        raise ValueError(
            "preds, target and mask must have the same shape [batch, tokens], got "
            f"preds {tuple(preds.shape)}, target {tuple(target.shape)}, mask {tuple(mask.shape)}"
        )
    mask_b = mask.bool()
    for name, x in (("preds", preds), ("target", target)):
        if x.dtype != torch.bool and bool((((x != 0) & (x != 1)) & mask_b).any()):
            bad = x[((x != 0) & (x != 1)) & mask_b].unique()[:5].tolist()
            raise ValueError(
                f"{name} must hold 0/1 labels inside the mask, found {bad} "
                "(values outside the mask, e.g. -100 padding, are ignored)"
            )


def _masked_labels(labels: Tensor, mask: Tensor) -> Tensor:
    """Labels as bool, False wherever the mask is False."""
    return (labels != 0) & mask.bool()


# ---------------------------------------------------------------------------------------
# pure span helpers
# ---------------------------------------------------------------------------------------


def spans_from_labels(labels: Tensor | Sequence[int], mask: Tensor | Sequence[int] | None = None) -> list[Span]:
    """Contiguous runs of 1s in a 1-D label sequence as half-open ``(start, end)`` spans.

    Positions where ``mask`` is 0 count as 0: a 1 there is ignored and it splits a run.
    ``mask=None`` means every position is real.

    >>> spans_from_labels([0, 1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 0, 1])
    [(1, 3), (4, 5), (6, 7)]
    """
    labels_t = torch.as_tensor(labels)
    if labels_t.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels_t.shape)}")
    if mask is None:
        mask_t = torch.ones_like(labels_t, dtype=torch.bool)
    else:
        mask_t = torch.as_tensor(mask, device=labels_t.device)
        if mask_t.shape != labels_t.shape:
            raise ValueError(
                f"labels and mask must have the same shape, got {tuple(labels_t.shape)} and {tuple(mask_t.shape)}"
            )
    on = _masked_labels(labels_t, mask_t).detach().cpu().to(torch.int8)
    edges = torch.diff(on, prepend=on.new_zeros(1), append=on.new_zeros(1))
    starts = torch.nonzero(edges == 1).flatten().tolist()
    ends = torch.nonzero(edges == -1).flatten().tolist()
    return list(zip(starts, ends, strict=True))


def span_iou(a: Span, b: Span) -> float:
    """Token intersection-over-union of two half-open spans."""
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def _iou_at_least(a: Span, b: Span, threshold: float) -> bool:
    # inter / union >= threshold, without a division (exact at threshold 0.5)
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter > 0 and inter >= threshold * union


def _max_matching(adjacency: list[list[int]], n_right: int) -> int:
    """Size of a maximum bipartite matching (Kuhn's augmenting paths; inputs are tiny)."""
    match_right: list[int | None] = [None] * n_right

    def augment(left: int, seen: list[bool]) -> bool:
        for right in adjacency[left]:
            if seen[right]:
                continue
            seen[right] = True
            if match_right[right] is None or augment(match_right[right], seen):
                match_right[right] = left
                return True
        return False

    return sum(augment(left, [False] * n_right) for left in range(len(adjacency)))


def iou_f1(pred_spans: Sequence[Span], gold_spans: Sequence[Span], threshold: float = 0.5) -> float:
    """F1 of predicted vs gold spans of one example, ERASER style.

    A predicted span and a gold span match when their token IOU is ``>= threshold``. Matches
    are one to one (a gold span is matched by at most one predicted span and vice versa; the
    largest such matching is used). precision = matched / predicted spans, recall =
    matched / gold spans. No predicted and no gold span: 1.0; only one of them empty: 0.0.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    for name, spans in (("pred_spans", pred_spans), ("gold_spans", gold_spans)):
        for span in spans:
            if len(span) != 2 or span[0] >= span[1]:
                raise ValueError(f"{name} must hold half-open (start, end) spans with start < end, got {span}")
    if not pred_spans and not gold_spans:
        return 1.0
    if not pred_spans or not gold_spans:
        return 0.0
    adjacency = [[j for j, g in enumerate(gold_spans) if _iou_at_least(p, g, threshold)] for p in pred_spans]
    matched = _max_matching(adjacency, len(gold_spans))
    if matched == 0:
        return 0.0
    precision = matched / len(pred_spans)
    recall = matched / len(gold_spans)
    return 2 * precision * recall / (precision + recall)


def _batch_spans(on: Tensor) -> list[list[Span]]:
    """Spans of every row of a [batch, tokens] bool tensor (CPU), in one diff."""
    batch = on.shape[0]
    x = on.to(torch.int8)
    pad = x.new_zeros(batch, 1)
    edges = torch.diff(x, dim=1, prepend=pad, append=pad)
    starts = torch.nonzero(edges == 1)  # row-major: sorted by row, then position
    ends = torch.nonzero(edges == -1)
    counts = torch.bincount(starts[:, 0], minlength=batch).tolist()
    start_cols = starts[:, 1].tolist()
    end_cols = ends[:, 1].tolist()
    out: list[list[Span]] = []
    i = 0
    for n in counts:
        out.append(list(zip(start_cols[i : i + n], end_cols[i : i + n], strict=True)))
        i += n
    return out


# ---------------------------------------------------------------------------------------
# rationale metrics
# ---------------------------------------------------------------------------------------


class _PerExampleMean(Metric):
    """Mean over examples of a per-example score; states are a sum and a count."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    score_sum: Tensor
    count: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _scores(self, preds: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, preds: Tensor, target: Tensor, mask: Tensor) -> None:
        """Add a batch: ``preds``, ``target``, ``mask`` are [batch, tokens] bool/int tensors.

        ``mask`` is 1 on real response tokens; labels outside it are ignored.
        """
        _check_token_inputs(preds, target, mask)
        scores = self._scores(_masked_labels(preds, mask), _masked_labels(target, mask))
        self.score_sum += scores.to(device=self.score_sum.device, dtype=torch.float64).sum()
        self.count += scores.numel()

    def compute(self) -> Tensor:
        """Mean per-example score over everything seen since the last reset (nan if none).

        The sum is kept in float64; the result is float32 like other torchmetrics values.
        """
        if self.count == 0:
            return torch.tensor(float("nan"), device=self.score_sum.device)
        return (self.score_sum / self.count).float()


class RationaleTokenF1(_PerExampleMean):
    """Token F1 (T-F1) of rationale labels, averaged over examples of the whole split.

    Per example: binary F1 of predicted vs gold rationale tokens within ``mask``; 1 when
    both are empty, 0 when exactly one is.
    """

    def _scores(self, preds: Tensor, target: Tensor) -> Tensor:
        tp = (preds & target).sum(dim=1)
        denom = preds.sum(dim=1) + target.sum(dim=1)  # 2 tp + fp + fn
        f1 = 2 * tp.double() / denom.clamp(min=1).double()
        return torch.where(denom == 0, torch.ones_like(f1), f1)


class RationaleIOUF1(_PerExampleMean):
    """IOU F1 of rationale spans (ERASER), averaged over examples of the whole split.

    Per example: contiguous runs of rationale tokens within ``mask`` are spans (a masked-out
    position breaks a run); see :func:`iou_f1` for the matching and the empty cases.
    """

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold

    def _scores(self, preds: Tensor, target: Tensor) -> Tensor:
        pred_spans = _batch_spans(preds.detach().cpu())
        gold_spans = _batch_spans(target.detach().cpu())
        return torch.tensor(
            [iou_f1(p, g, self.threshold) for p, g in zip(pred_spans, gold_spans, strict=True)],
            dtype=torch.float64,
        )


class RationaleMetrics(nn.Module):
    """Token F1 and IOU F1 under both rationale labelling policies.

    - ``paper``: every example, with the paper's labels (level-0 rows have every response
      token labelled as rationale), to compare with the published table;
    - ``strict``: only examples whose gold ``level`` is > 0, with strict labels (level-0
      rows have no rationale).

    ``compute()`` returns 0-dim float32 tensors under the keys ``rationale_token_f1_paper``,
    ``rationale_iou_f1_paper``, ``rationale_token_f1_strict``, ``rationale_iou_f1_strict``.
    When no example seen since the last reset has level > 0, the two strict values are nan.
    """

    POLICIES = ("paper", "strict")

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        metrics: dict[str, Metric] = {}
        for policy in self.POLICIES:
            metrics[f"rationale_token_f1_{policy}"] = RationaleTokenF1()
            metrics[f"rationale_iou_f1_{policy}"] = RationaleIOUF1(threshold=threshold)
        self.metrics = nn.ModuleDict(metrics)

    def update(
        self,
        preds: Tensor,
        target_paper: Tensor,
        target_strict: Tensor,
        mask: Tensor,
        level: Tensor,
        *,
        preds_paper: Tensor | None = None,
    ) -> None:
        """Add a batch: token tensors are [batch, tokens]; ``level`` is the gold level [batch].

        ``preds`` is scored against ``target_strict`` on rows with ``level > 0``. The paper
        metrics score ``preds_paper`` (default: ``preds``) against ``target_paper`` on every
        row; a model trained with strict labels can pass its predictions converted to the
        paper's convention there (every real token on rows it predicts level 0).
        """
        _check_token_inputs(preds, target_strict, mask)
        if preds_paper is None:
            preds_paper = preds
        if not isinstance(level, Tensor) or level.ndim != 1 or level.shape[0] != preds.shape[0]:
            got = tuple(level.shape) if isinstance(level, Tensor) else type(level).__name__
            raise ValueError(
                f"level must be a 1-D tensor with one gold level per example ({preds.shape[0]}), got {got}"
            )
        self.metrics["rationale_token_f1_paper"].update(preds_paper, target_paper, mask)
        self.metrics["rationale_iou_f1_paper"].update(preds_paper, target_paper, mask)
        # Always update (possibly with zero rows) so every DDP rank syncs the same states.
        keep = level.to(preds.device) > 0
        strict = (preds[keep], target_strict[keep], mask[keep])
        self.metrics["rationale_token_f1_strict"].update(*strict)
        self.metrics["rationale_iou_f1_strict"].update(*strict)

    def compute(self) -> dict[str, Tensor]:
        return {name: metric.compute() for name, metric in self.metrics.items()}

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()


# ---------------------------------------------------------------------------------------
# level (identification) metrics
# ---------------------------------------------------------------------------------------


class MulticlassMacroF1(MulticlassF1Score):
    """Macro F1 over all ``num_classes`` classes, as sklearn computes it.

    Equals ``sklearn.metrics.f1_score(average="macro", labels=range(num_classes),
    zero_division=0)``: a class absent from both predictions and targets has F1 0 and still
    counts in the mean. (``MulticlassF1Score(average="macro")`` drops such a class from the
    mean, which inflates macro-F1 on a split where a rare level is never predicted nor seen.)
    """

    def __init__(self, num_classes: int, **kwargs) -> None:
        if kwargs.pop("average", None) not in (None, "macro"):
            raise ValueError("MulticlassMacroF1 always averages over classes (macro)")
        kwargs.setdefault("zero_division", 0)
        super().__init__(num_classes=num_classes, average="none", **kwargs)

    def compute(self) -> Tensor:
        return super().compute().mean()


def level_metrics(num_classes: int = 3) -> MetricCollection:
    """Empathy-level metrics over a whole split.

    Keys: ``acc`` (micro accuracy), ``macro_f1`` (sklearn-style macro F1 over all classes,
    see :class:`MulticlassMacroF1`), ``f1_per_class`` (tensor [num_classes]) and
    ``confusion`` (tensor [num_classes, num_classes], rows = gold level, columns =
    predicted level). The last two are not scalars: log them apart from ``log_dict``.
    """
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "macro_f1": MulticlassMacroF1(num_classes=num_classes),
            "f1_per_class": MulticlassF1Score(num_classes=num_classes, average="none", zero_division=0),
            "confusion": MulticlassConfusionMatrix(num_classes=num_classes),
        }
    )
