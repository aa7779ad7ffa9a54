"""How a mechanism's head outputs become a level and rationale tokens: the one place where
training-time evaluation, ``empathy.evaluate`` and prediction decide.

A :class:`Decision` holds one mechanism's level offsets (:mod:`empathy.levels`, from
``model.level_offsets``) and rationale decoding (:mod:`empathy.decoding`, from
``model.rationale_decoding``); :func:`decisions` builds them for every mechanism of a model from
those two settings as a checkpoint stores them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from empathy.decoding import RationaleDecoding, rationale_probs
from empathy.levels import adjusted, level_offsets


@dataclass(frozen=True)
class Decision:
    mechanism: str
    offsets: tuple[float, float] | None  # added to the logits of levels 1 and 2 (None: argmax)
    decoding: RationaleDecoding

    def level_logits(self, logits: Tensor) -> Tensor:
        """The head's level logits [batch, 3] with the offsets added (their softmax is what a
        prediction reports as the decided probabilities)."""
        return adjusted(logits, self.offsets)

    def levels(self, logits: Tensor) -> Tensor:
        """Predicted levels [batch]: the argmax of :meth:`level_logits`."""
        return self.level_logits(logits).argmax(-1)

    def rationale(self, rationale_logits: Tensor, mask: Tensor, levels: Tensor) -> Tensor:
        """Rationale token labels [batch, tokens] (0 outside ``mask``); ``levels`` are the
        predicted ones (the decoding's fallback reads them)."""
        return self.decoding.decode(rationale_probs(rationale_logits), mask, levels)


def decisions(
    mechanisms: Sequence[str], rationale_decoding: Mapping[str, Any] | None, offsets: Mapping[str, Any] | None
) -> dict[str, Decision]:
    """Each mechanism's :class:`Decision` from ``model.rationale_decoding`` and
    ``model.level_offsets`` (either may hold values per mechanism)."""
    return {
        m: Decision(m, level_offsets(offsets, m), RationaleDecoding.from_config(rationale_decoding, m))
        for m in mechanisms
    }
