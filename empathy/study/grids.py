"""The study's selection grids: many decisions scored at once on dev, to choose one by
cross-validation (docs/study.md). The core never imports this module; a run adds it as a callback
from the project's config (``grid=decoding``, ``grid=decoding_extended``, ``grid=level_offsets``:
``conf/grid/``), which reads each validation batch's :class:`~empathy.models.module.HeadRows`.

- :class:`DecodingGrid`: the strict rationale IOU-F1 of every rationale decoding of a grid, logged
  as ``dev/<M>/rationale_iou_f1@<tag>`` (tag ``t0.3g8``, ``t0.3g8m3f``:
  :attr:`~empathy.decoding.RationaleDecoding.tag`);
- :class:`LevelOffsetGrid`: the macro-F1 of every pair of level offsets, logged as
  ``dev/<M>/macro_f1@<tag>`` (tag ``o-1_-2``: :func:`offset_tag`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from empathy.decoding import RationaleDecoding, _check_probs_and_mask, rationale_probs
from empathy.metrics import RationaleIOUF1, RationaleTokenF1

NUM_LEVELS = 3
# The default decoding grid: thresholds x gaps filled (63 decodings).
DEFAULT_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
DEFAULT_FILL_GAPS = (0, 1, 2, 4, 8, 16, 32)
# The extended grid (200 decodings): short spans dropped and the fallback too. Scored on a trained
# model's dev fold (``grid=decoding_extended`` of empathy.evaluate): too slow for every epoch.
EXTENDED_GRID = {
    "thresholds": (0.1, 0.2, 0.3, 0.4, 0.5),
    "fill_gaps": (2, 4, 8, 16, 32),
    "min_spans": (1, 2, 3, 5),
    "fallbacks": (False, True),
}
# The offsets of levels 1 and 2 the level grid tries (level 0's is 0): -3 to 3 in steps of 0.5.
OFFSETS = tuple(x / 2 for x in range(-6, 7))
LEVEL_METRIC = "macro_f1"


class DecodingGrid(nn.Module):
    """Strict rationale IOU F1 (and optionally token F1) of every decoding in a grid.

    The grid is ``thresholds`` x ``fill_gaps`` x ``min_spans`` x ``fallbacks`` (by default one
    min_span, 1, and no fallback: 63 decodings; :data:`EXTENDED_GRID` holds 200 more). ``update`` scores rows
    whose gold ``level`` is > 0 against the strict labels, as ``RationaleMetrics`` does for
    its ``*_strict`` values; each decoding has its own :class:`~empathy.metrics.RationaleIOUF1`
    (sum states, ``dist_reduce_fx="sum"``), so ``compute`` syncs across processes like the
    other metrics. ``compute`` returns floats under ``rationale_iou_f1@<tag>`` (and
    ``rationale_token_f1@<tag>`` with ``token_f1=True``), e.g. ``rationale_iou_f1@t0.4g1``;
    nan when no row with level > 0 was seen since the last reset.

    Cost: one copy of the batch to the CPU per ``update``; the decodings and span matching
    run there (the IOU metric matches spans on the CPU anyway).
    """

    IOU_PREFIX = "rationale_iou_f1"
    TOKEN_PREFIX = "rationale_token_f1"

    def __init__(
        self,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        fill_gaps: Sequence[int] = DEFAULT_FILL_GAPS,
        min_spans: Sequence[int] = (1,),
        fallbacks: Sequence[bool] = (False,),
        token_f1: bool = False,
        iou_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        if not thresholds or not fill_gaps or not min_spans or not fallbacks:
            raise ValueError(
                f"thresholds, fill_gaps, min_spans and fallbacks must be non-empty, got {list(thresholds)}, "
                f"{list(fill_gaps)}, {list(min_spans)} and {list(fallbacks)}"
            )
        self.decodings: list[RationaleDecoding] = [
            RationaleDecoding(threshold=t, fill_gaps=g, min_span=m, fallback=f)
            for f in fallbacks
            for m in min_spans
            for t in thresholds
            for g in fill_gaps
        ]
        tags = [d.tag for d in self.decodings]
        duplicates = sorted({tag for tag in tags if tags.count(tag) > 1})
        if duplicates:
            raise ValueError(
                f"the decoding grid has duplicate settings {duplicates} (thresholds "
                f"{list(thresholds)}, fill_gaps {list(fill_gaps)})"
            )
        self.token_f1 = token_f1
        # ModuleDict keys cannot hold '.', so the metrics are indexed by position in the grid
        self.iou = nn.ModuleList(RationaleIOUF1(threshold=iou_threshold) for _ in self.decodings)
        self.token = nn.ModuleList(RationaleTokenF1() for _ in self.decodings) if token_f1 else None

    def update(
        self, probs: Tensor, target_strict: Tensor, mask: Tensor, level: Tensor, pred_level: Tensor | None = None
    ) -> None:
        """Add a batch: ``probs`` [batch, tokens] rationale probabilities, ``target_strict``
        and ``mask`` [batch, tokens] 0/1, ``level`` [batch] gold levels, ``pred_level`` [batch]
        the predicted ones (for decodings with the fallback; None: every row counts as > 0)."""
        _check_probs_and_mask(probs, mask)
        if not isinstance(target_strict, Tensor) or target_strict.shape != probs.shape:
            got = tuple(target_strict.shape) if isinstance(target_strict, Tensor) else type(target_strict).__name__
            raise ValueError(f"target_strict must have the shape of probs {tuple(probs.shape)}, got {got}")
        if not isinstance(level, Tensor) or level.ndim != 1 or level.shape[0] != probs.shape[0]:
            got = tuple(level.shape) if isinstance(level, Tensor) else type(level).__name__
            raise ValueError(
                f"level must be a 1-D tensor with one gold level per example ({probs.shape[0]}), got {got}"
            )
        # Always update (possibly with zero rows) so every DDP rank syncs the same states.
        keep = level.detach().cpu() > 0
        probs = probs.detach().cpu()[keep]
        target = target_strict.detach().cpu()[keep]
        mask = mask.detach().cpu()[keep]
        pred_level = None if pred_level is None else pred_level.detach().cpu()[keep]
        for i, decoding in enumerate(self.decodings):
            preds = decoding.decode(probs, mask, pred_level)
            self.iou[i].update(preds, target, mask)
            if self.token is not None:
                self.token[i].update(preds, target, mask)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for i, decoding in enumerate(self.decodings):
            out[f"{self.IOU_PREFIX}@{decoding.tag}"] = float(self.iou[i].compute())
            if self.token is not None:
                out[f"{self.TOKEN_PREFIX}@{decoding.tag}"] = float(self.token[i].compute())
        return out

    def best(self) -> tuple[RationaleDecoding, float]:
        """The decoding with the highest strict IOU F1, and that score.

        Ties go to the smaller ``fill_gaps``, then the threshold nearest 0.5, then the lower
        threshold. With nothing scored (every value nan) this is the most preferred decoding
        of the grid by that order, with score nan.
        """
        values = self.compute()
        scores = [values[f"{self.IOU_PREFIX}@{d.tag}"] for d in self.decodings]

        def rank(i: int) -> tuple:
            score_key = -math.inf if math.isnan(scores[i]) else scores[i]
            return (-score_key, *self.decodings[i].preference)

        i = min(range(len(self.decodings)), key=rank)
        return self.decodings[i], scores[i]

    def reset(self) -> None:
        for metric in self.iou:
            metric.reset()
        if self.token is not None:
            for metric in self.token:
                metric.reset()


def offset_tag(offsets: Sequence[float]) -> str:
    """``(-1.0, -1.5)`` -> ``o-1_-1.5`` (what a grid metric's name ends with)."""
    return "o" + "_".join(f"{float(x):g}" for x in offsets)


def offsets_from_tag(tag: str) -> tuple[float, float]:
    """The inverse of :func:`offset_tag`."""
    if not tag.startswith("o") or tag.count("_") != 1:
        raise ValueError(f"not a level offset tag: {tag!r} (expected e.g. 'o-1_-1.5')")
    a, b = tag[1:].split("_")
    return float(a), float(b)


def macro_f1(confusion: Tensor) -> Tensor:
    """Macro-F1 over every level of a [..., levels, levels] confusion (rows gold, columns
    predicted), a level absent from both counting as 0 (sklearn's ``zero_division=0``)."""
    confusion = confusion.double()
    tp = confusion.diagonal(dim1=-2, dim2=-1)
    denominator = confusion.sum(-1) + confusion.sum(-2)
    f1 = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), torch.zeros_like(tp))
    return f1.mean(-1)


class LevelOffsetGrid(Metric):
    """Macro-F1 of the level decisions with every pair of ``offsets`` (levels 1 and 2): one
    confusion matrix per pair, summed over updates (``dist_reduce_fx="sum"``: a DDP sync gives
    the single-process value). ``compute`` returns ``{"macro_f1@<tag>": float}``."""

    full_state_update = False

    def __init__(self, offsets: Sequence[float] = OFFSETS) -> None:
        super().__init__()
        self.pairs = list(itertools.product(offsets, offsets))
        self.register_buffer("_offsets", torch.tensor([[0.0, a, b] for a, b in self.pairs]), persistent=False)
        self.add_state(
            "confusion",
            default=torch.zeros(len(self.pairs), NUM_LEVELS, NUM_LEVELS, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(self, logits: Tensor, target: Tensor) -> None:
        """``logits`` [batch, 3] raw level logits; ``target`` [batch] gold levels."""
        if logits.ndim != 2 or logits.shape[-1] != NUM_LEVELS or target.shape != logits.shape[:1]:
            raise ValueError(
                f"expected logits [batch, {NUM_LEVELS}] and target [batch], got "
                f"{tuple(logits.shape)} and {tuple(target.shape)}"
            )
        preds = (logits.float().unsqueeze(0) + self._offsets.to(logits.device).unsqueeze(1)).argmax(
            -1
        )  # [pairs, batch]
        cells = target.long().unsqueeze(0) * NUM_LEVELS + preds
        cells = cells + torch.arange(len(self.pairs), device=cells.device).unsqueeze(1) * NUM_LEVELS**2
        counts = torch.bincount(cells.flatten(), minlength=len(self.pairs) * NUM_LEVELS**2)
        self.confusion += counts.view(len(self.pairs), NUM_LEVELS, NUM_LEVELS)

    def compute(self) -> dict[str, float]:
        scores = macro_f1(self.confusion)
        return {f"{LEVEL_METRIC}@{offset_tag(pair)}": float(s) for pair, s in zip(self.pairs, scores, strict=True)}


def new_grid(name: str) -> DecodingGrid | LevelOffsetGrid:
    """A fresh grid by its config name (:data:`GRIDS`)."""
    if name == "decoding":
        return DecodingGrid()
    if name == "decoding_extended":
        return DecodingGrid(**EXTENDED_GRID)
    if name == "level_offsets":
        return LevelOffsetGrid()
    raise ValueError(f"grid must be one of {', '.join(GRIDS)}, not {name!r}")


GRIDS = ("decoding", "decoding_extended", "level_offsets")


class GridCallback(pl.Callback):
    """Scores one grid (:data:`GRIDS`) per mechanism on every validation: it reads the
    :class:`~empathy.models.module.HeadRows` that ``validation_step`` returns, and logs the grid's
    values under ``dev/<M>/`` at the end of each validation."""

    # empathy.evaluate refuses a callback that chooses settings on the test split.
    chooses_settings = True

    def __init__(self, grid: str) -> None:
        new_grid(grid)  # checks the name
        self.grid = grid
        self.grids: dict[str, DecodingGrid | LevelOffsetGrid] = {}

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.grids = {m: new_grid(self.grid).to(pl_module.device) for m in pl_module.mechanisms}

    def on_validation_batch_end(
        self, trainer, pl_module, outputs: Mapping[str, Any], batch, batch_idx, dataloader_idx=0
    ) -> None:
        if trainer.sanity_checking:
            return
        for m, rows in (outputs or {}).items():
            grid = self.grids[m]
            if isinstance(grid, LevelOffsetGrid):
                grid.update(rows.level_logits, rows.level)
            else:
                grid.update(
                    rationale_probs(rows.rationale_logits),
                    rows.rationale_strict,
                    rows.mask,
                    rows.level,
                    rows.predicted_level,
                )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for m, grid in self.grids.items():
            for name, value in grid.compute().items():
                pl_module.log(f"dev/{m}/{name}", value)
            grid.reset()
