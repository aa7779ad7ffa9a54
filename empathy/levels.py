"""Level decisions: the level head's logits plus an offset per level before the argmax.

A model trained with inverse-frequency class weights (the default loss) over-predicts the rare
levels: its argmax trades precision for recall on them. Adding a constant to a level's logit
(logit adjustment: the same as changing the class prior the softmax assumes) moves that trade
without training again. The offsets are set per mechanism, relative to level 0:

    model.level_offsets.ER=[-1.0,-1.5]   # level 1's logit - 1.0, level 2's - 1.5; null: the argmax

and chosen by cross-validation like the rationale decoding (``grid=level_offsets``, the study's
:class:`empathy.study.grids.LevelOffsetGrid`). Predicted levels, the levels the rationale
fallback reads, and the probabilities a prediction reports (the softmax of the offset logits)
all use them (:mod:`empathy.decisions`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from empathy import MECHANISMS

NUM_LEVELS = 3


def level_offsets(
    config: Mapping[str, Any] | Sequence[float] | None, mechanism: str | None
) -> tuple[float, float] | None:
    """A mechanism's offsets (levels 1 and 2) from ``model.level_offsets``: a mapping with a value
    per mechanism, or one pair for a single-mechanism model; None (or a null value): none."""
    if config is None:
        return None
    if isinstance(config, Mapping):
        unknown = sorted(set(config) - set(MECHANISMS))
        if unknown:
            raise ValueError(f"model.level_offsets: unknown mechanism(s) {unknown} (expected {', '.join(MECHANISMS)})")
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
