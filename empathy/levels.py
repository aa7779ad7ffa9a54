"""Level decisions: the level head's logits plus an offset per level before the argmax.

A model trained with inverse-frequency class weights (the default loss) over-predicts the rare
levels: its argmax trades precision for recall on them. Adding a constant to a level's logit
(logit adjustment: the same as changing the class prior the softmax assumes) moves that trade
without training again. The offsets are set per mechanism, relative to level 0:

    model.level_offsets.ER=[-1.0,-1.5]   # level 1's logit - 1.0, level 2's - 1.5; null: the argmax

and chosen by cross-validation like the rationale decoding: ``python -m empathy.evaluate
split=dev level_offset_grid=true`` scores :class:`LevelOffsetGrid` (every pair of
:data:`OFFSETS`) on a kept checkpoint's dev fold, as ``dev/<M>/macro_f1@<tag>``
(``scripts/ablations.py run --level-offsets``). Predicted levels, the levels the rationale
fallback reads, and the probabilities a prediction reports (the softmax of the offset logits)
all use them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

NUM_LEVELS = 3
# The offsets of levels 1 and 2 the grid tries (level 0's is 0): -3 to 3 in steps of 0.5.
OFFSETS = tuple(x / 2 for x in range(-6, 7))
METRIC = "macro_f1"


def offset_tag(offsets: Sequence[float]) -> str:
    """``(-1.0, -1.5)`` -> ``o-1_-1.5`` (what a grid metric's name ends with)."""
    return "o" + "_".join(f"{float(x):g}" for x in offsets)


def offsets_from_tag(tag: str) -> tuple[float, float]:
    """The inverse of :func:`offset_tag`."""
    if not tag.startswith("o") or tag.count("_") != 1:
        raise ValueError(f"not a level offset tag: {tag!r} (expected e.g. 'o-1_-1.5')")
    a, b = tag[1:].split("_")
    return float(a), float(b)


def level_offsets(config: Mapping[str, Any] | Sequence[float] | None, mechanism: str | None) -> tuple[float, float] | None:
    """A mechanism's offsets (levels 1 and 2) from ``model.level_offsets``: a mapping with a value
    per mechanism, or one pair for a single-mechanism model; None (or a null value): none."""
    if config is None:
        return None
    if isinstance(config, Mapping):
        unknown = sorted(set(config) - {"ER", "IP", "EX"})
        if unknown:
            raise ValueError(f"model.level_offsets: unknown mechanism(s) {unknown} (expected ER, IP, EX)")
        value = config.get(mechanism) if mechanism is not None else None
    else:
        value = config
    if value is None:
        return None
    values = [float(x) for x in value]
    if len(values) != NUM_LEVELS - 1:
        raise ValueError(
            f"model.level_offsets{'.' + mechanism if mechanism else ''} must hold {NUM_LEVELS - 1} numbers "
            f"(the offsets of levels 1 and 2; level 0's is 0), got {list(value)}"
        )
    return values[0], values[1]


def adjusted(logits: Tensor, offsets: Sequence[float] | None) -> Tensor:
    """``logits`` [batch, 3] with ``offsets`` (levels 1 and 2) added; unchanged for None."""
    if offsets is None:
        return logits
    return logits + logits.new_tensor([0.0, *offsets])


def decide(logits: Tensor, offsets: Sequence[float] | None) -> Tensor:
    """Predicted levels [batch]: the argmax of :func:`adjusted` logits."""
    return adjusted(logits, offsets).argmax(-1)


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
        self.add_state("confusion", default=torch.zeros(len(self.pairs), NUM_LEVELS, NUM_LEVELS, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        """``logits`` [batch, 3] raw level logits; ``target`` [batch] gold levels."""
        if logits.ndim != 2 or logits.shape[-1] != NUM_LEVELS or target.shape != logits.shape[:1]:
            raise ValueError(f"expected logits [batch, {NUM_LEVELS}] and target [batch], got "
                             f"{tuple(logits.shape)} and {tuple(target.shape)}")
        preds = (logits.float().unsqueeze(0) + self._offsets.to(logits.device).unsqueeze(1)).argmax(-1)  # [pairs, batch]
        cells = target.long().unsqueeze(0) * NUM_LEVELS + preds
        cells = cells + torch.arange(len(self.pairs), device=cells.device).unsqueeze(1) * NUM_LEVELS**2
        counts = torch.bincount(cells.flatten(), minlength=len(self.pairs) * NUM_LEVELS**2)
        self.confusion += counts.view(len(self.pairs), NUM_LEVELS, NUM_LEVELS)

    def compute(self) -> dict[str, float]:
        scores = macro_f1(self.confusion)
        return {f"{METRIC}@{offset_tag(pair)}": float(s) for pair, s in zip(self.pairs, scores, strict=True)}
