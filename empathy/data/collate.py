"""Dynamic padding: a batch is padded to its own longest seeker and response, not to max_len."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


def _pad(rows: Sequence[Sequence[int]], value: int) -> Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


class Collator:
    """Turns dataset rows (``empathy.data.processing`` columns) into padded tensors.

    Output keys: ``response_input_ids``, ``response_attention_mask``, ``rationale_mask`` (real
    response tokens), ``rationale_strict``, ``rationale_paper``, ``seeker_input_ids``,
    ``seeker_attention_mask``, ``seeker_id``, ``level`` (when labelled) and ``index``.

    ``token_columns`` (per response token, padded with 0) and ``label_columns`` (one int per
    row) name the label columns; the joint data module passes its per-mechanism ones
    (``rationale_strict_ER``, ``level_ER``, ...).
    """

    def __init__(
        self,
        pad_token_id: int,
        token_columns: Sequence[str] = ("rationale_strict", "rationale_paper"),
        label_columns: Sequence[str] = ("level",),
    ) -> None:
        self.pad_token_id = pad_token_id
        self.token_columns = tuple(token_columns)
        self.label_columns = tuple(label_columns)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        response = [r["response_input_ids"] for r in rows]
        seeker = [r["seeker_input_ids"] for r in rows]
        batch = {
            "response_input_ids": _pad(response, self.pad_token_id),
            "response_attention_mask": _pad([[1] * len(r) for r in response], 0),
            "seeker_input_ids": _pad(seeker, self.pad_token_id),
            "seeker_attention_mask": _pad([[1] * len(s) for s in seeker], 0),
            "rationale_mask": _pad([r["response_mask"] for r in rows], 0),
            "seeker_id": torch.tensor([r["seeker_id"] for r in rows], dtype=torch.long),
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
        }
        for key in self.token_columns:
            if key in rows[0]:
                batch[key] = _pad([r[key] for r in rows], 0)
        for key in self.label_columns:
            if key in rows[0]:
                batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.long)
        return batch
