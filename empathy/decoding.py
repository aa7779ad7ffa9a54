"""Rationale span decoding: from per-token rationale probabilities to 0/1 token labels.

The rationale head gives logits [batch, tokens, 2]; :func:`rationale_probs` turns them into
the probability of "rationale" [batch, tokens] and :func:`decode_rationales` into labels:

1. threshold: a token inside the mask is predicted when its probability is >= ``threshold``;
2. gap filling: a gap of at most ``fill_gaps`` unpredicted tokens between two predicted runs
   is filled, when every token of the gap is inside the mask (the mask end, padding or any
   masked-out token is never filled nor bridged);
3. short spans: runs shorter than ``min_span`` tokens (after filling) are removed;
4. fallback: with ``fallback``, a row whose predicted level is above 0 but which has no token
   left is given every token of its mask (the level head says the mechanism is there, the
   rationale head is unsure where: the whole response is its best guess).

Tokens outside the mask are always 0. ``threshold=0.5, fill_gaps=0, min_span=1`` is the
argmax of a 2-class softmax (ties aside, where argmax picks "not rationale").

:class:`RationaleDecoding` holds one such setting (validated, buildable from a config
mapping, which may hold settings per mechanism: ``{threshold: 0.2, fill_gaps: 2, IP: {fill_gaps:
6}}`` decodes IP with gaps of 6 filled and the other mechanisms with 2). The study scores many
of them at once to choose one (:class:`empathy.study.grids.DecodingGrid`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from empathy import MECHANISMS

__all__ = [
    "RationaleDecoding",
    "decode_rationales",
    "decoding_config",
    "rationale_probs",
]

# ---------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------


def _check_threshold(value: object, name: str = "threshold") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    if not 0.0 < float(value) < 1.0:  # also rejects nan
        raise ValueError(f"{name} must be in (0, 1) (open interval), got {value!r}")
    return float(value)


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _check_probs_and_mask(probs: Tensor, mask: Tensor) -> None:
    if not isinstance(probs, Tensor) or not isinstance(mask, Tensor):
        raise ValueError(f"probs and mask must be torch.Tensors, got {type(probs).__name__} and {type(mask).__name__}")
    if probs.ndim != 2:
        hint = "; for rationale logits [batch, tokens, 2] use rationale_probs(logits) first" if probs.ndim == 3 else ""
        raise ValueError(f"probs must have shape [batch, tokens], got {tuple(probs.shape)}{hint}")
    if not probs.is_floating_point():
        raise ValueError(f"probs must be a floating-point tensor of probabilities, got {probs.dtype}")
    if mask.shape != probs.shape:
        raise ValueError(
            f"probs and mask must have the same shape [batch, tokens], got probs "
            f"{tuple(probs.shape)} and mask {tuple(mask.shape)}"
        )
    if mask.is_floating_point() or mask.is_complex():
        raise ValueError(f"mask must be a bool or integer tensor, got {mask.dtype}")


# ---------------------------------------------------------------------------------------
# pure decoding functions
# ---------------------------------------------------------------------------------------


def rationale_probs(logits: Tensor) -> Tensor:
    """Probability of "rationale" [batch, tokens] from rationale logits [batch, tokens, 2]."""
    if not isinstance(logits, Tensor) or logits.ndim != 3 or logits.shape[-1] != 2:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must have shape [batch, tokens, 2], got {got}")
    return logits.float().softmax(dim=-1)[..., 1]


def _positions(on: Tensor) -> Tensor:
    return torch.arange(on.shape[1], device=on.device).expand(on.shape)


def _last_at_or_before(flag: Tensor, pos: Tensor) -> Tensor:
    """Per position, the index of the last True of ``flag`` at or before it (-1 if none)."""
    return torch.where(flag, pos, torch.full_like(pos, -1)).cummax(dim=1).values


def _first_at_or_after(flag: Tensor, pos: Tensor) -> Tensor:
    """Per position, the index of the first True of ``flag`` at or after it (tokens if none)."""
    none = torch.full_like(pos, flag.shape[1])
    return torch.where(flag, pos, none).flip(1).cummin(dim=1).values.flip(1)


def _fill_gaps(on: Tensor, mask: Tensor, fill_gaps: int) -> Tensor:
    """Fill runs of at most ``fill_gaps`` off tokens lying, wholly inside the mask, between
    two on tokens. ``on`` is already False outside the mask."""
    pos = _positions(on)
    wall = ~mask
    prev_on = _last_at_or_before(on, pos)
    next_on = _first_at_or_after(on, pos)
    # the nearest on token on each side must come before any masked-out token
    bounded = (prev_on > _last_at_or_before(wall, pos)) & (next_on < _first_at_or_after(wall, pos))
    gap = next_on - prev_on - 1
    return on | (mask & ~on & bounded & (gap <= fill_gaps))


def _drop_short_runs(on: Tensor, min_span: int) -> Tensor:
    """Remove runs of on tokens shorter than ``min_span``."""
    pos = _positions(on)
    off = on.new_zeros(on.shape[0], 1)
    starts = on & ~torch.cat([off, on[:, :-1]], dim=1)
    ends = on & ~torch.cat([on[:, 1:], off], dim=1)
    length = _first_at_or_after(ends, pos) - _last_at_or_before(starts, pos) + 1
    return on & (length >= min_span)


def decode_rationales(
    probs: Tensor,
    mask: Tensor,
    threshold: float = 0.5,
    fill_gaps: int = 0,
    min_span: int = 1,
    fallback: bool = False,
    level: Tensor | None = None,
) -> Tensor:
    """Rationale token labels [batch, tokens] (long, 0/1) from probabilities [batch, tokens].

    A token inside ``mask`` is predicted when its probability is >= ``threshold``; then every
    gap of at most ``fill_gaps`` unpredicted tokens between two predicted runs is filled, if
    the whole gap lies inside the mask; then runs shorter than ``min_span`` tokens are
    removed; with ``fallback``, a row left without any token whose predicted ``level`` [batch]
    is above 0 (every row, when ``level`` is None) gets every token of its mask. Outside
    ``mask`` the label is always 0. Vectorised (no Python loop over rows or
    tokens); runs on the device of ``probs``.

    >>> probs = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.2, 0.7, 0.9]])
    >>> decode_rationales(probs, torch.ones_like(probs, dtype=torch.bool), fill_gaps=1).tolist()
    [[1, 1, 1, 0, 0, 1, 1]]
    """
    threshold = _check_threshold(threshold)
    fill_gaps = _check_int(fill_gaps, "fill_gaps", 0)
    min_span = _check_int(min_span, "min_span", 1)
    fallback = _check_bool(fallback, "fallback")
    _check_probs_and_mask(probs, mask)
    mask = mask.to(device=probs.device, dtype=torch.bool)
    on = (probs >= threshold) & mask
    if fill_gaps > 0 and on.shape[1] > 0:
        on = _fill_gaps(on, mask, fill_gaps)
    if min_span > 1 and on.shape[1] > 0:
        on = _drop_short_runs(on, min_span)
    if fallback:
        empty = ~on.any(dim=1)
        if level is not None:
            if not isinstance(level, Tensor) or level.shape != probs.shape[:1]:
                got = tuple(level.shape) if isinstance(level, Tensor) else type(level).__name__
                raise ValueError(
                    f"level must be a tensor of one predicted level per row ({probs.shape[0]},), got {got}"
                )
            empty = empty & (level.to(probs.device) > 0)
        on = on | (empty[:, None] & mask)
    return on.long()


# ---------------------------------------------------------------------------------------
# one decoding setting
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RationaleDecoding:
    """One rationale decoding setting; see :func:`decode_rationales`.

    ``threshold`` in (0, 1); ``fill_gaps`` >= 0; ``min_span`` >= 1 (1 removes nothing);
    ``fallback``: a row with a predicted level above 0 and no token decoded gets every token.
    """

    threshold: float = 0.5
    fill_gaps: int = 0
    min_span: int = 1
    fallback: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", _check_threshold(self.threshold))
        _check_int(self.fill_gaps, "fill_gaps", 0)
        _check_int(self.min_span, "min_span", 1)
        _check_bool(self.fallback, "fallback")

    @classmethod
    def from_config(cls, config: Mapping[str, object] | None, mechanism: str | None = None) -> RationaleDecoding:
        """Build from a mapping (a dict or an OmegaConf ``DictConfig``); ``None`` or an empty
        mapping gives the defaults (argmax decoding). The mapping may hold, under a mechanism's
        name (``ER``, ``IP``, ``EX``), values that replace the shared ones for that mechanism:
        they apply when ``mechanism`` is that name. Unknown keys are an error."""
        if config is None:
            return cls()
        if not isinstance(config, Mapping):
            raise ValueError(
                f"rationale decoding config must be a mapping with keys threshold, fill_gaps, "
                f"min_span (or null), got {type(config).__name__}"
            )
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in config if k not in known and k not in MECHANISMS)
        if unknown:
            raise ValueError(
                f"unknown rationale decoding key(s) {unknown}; expected some of {known}, or a "
                f"mechanism ({', '.join(MECHANISMS)}) with its own values"
            )
        values = {str(k): v for k, v in config.items() if k in known}
        for name in MECHANISMS:
            own = config.get(name)
            if own is None:
                continue
            if not isinstance(own, Mapping):
                raise ValueError(
                    f"rationale decoding {name}: expected a mapping of the values that replace the "
                    f"shared ones for {name} (e.g. {{fill_gaps: 4}}), got {own!r}"
                )
            wrong = sorted(str(k) for k in own if k not in known)
            if wrong:
                raise ValueError(f"unknown rationale decoding key(s) {wrong} for {name}; expected some of {known}")
            if name == mechanism:
                values.update({str(k): v for k, v in own.items()})
        if mechanism is None:  # still check every mechanism's setting
            for name in MECHANISMS:
                if config.get(name):
                    cls.from_config(config, name)
        return cls(**values)

    def to_dict(self) -> dict[str, float | int | bool]:
        out: dict[str, float | int | bool] = {
            "threshold": self.threshold,
            "fill_gaps": self.fill_gaps,
            "min_span": self.min_span,
        }
        if self.fallback:  # absent when off: checkpoints and configs from before the option read the same
            out["fallback"] = True
        return out

    @property
    def tag(self) -> str:
        """Short name, e.g. ``t0.4g1`` (``m<min_span>`` is appended when min_span > 1, ``f`` with
        the fallback: ``t0.4g16m5f``)."""
        tag = f"t{self.threshold:g}g{self.fill_gaps}"
        tag = tag if self.min_span == 1 else f"{tag}m{self.min_span}"
        return f"{tag}f" if self.fallback else tag

    @classmethod
    def from_tag(cls, tag: str) -> RationaleDecoding:
        """The inverse of :attr:`tag`: ``t0.4g1``, ``t0.4g1m2`` or ``t0.4g1m2f``."""
        try:
            fallback = tag.endswith("f")
            body = tag[:-1] if fallback else tag
            threshold, rest = body[1:].split("g") if body.startswith("t") else ("", "")
            gaps, _, min_span = rest.partition("m")
            return cls(float(threshold), int(gaps), int(min_span or 1), fallback)
        except ValueError as err:
            raise ValueError(f"not a decoding tag (t<threshold>g<gaps>[m<min_span>][f]): {tag!r} ({err})") from None

    @property
    def preference(self) -> tuple:
        """Among decodings that score the same, the lower is preferred: no fallback, then the
        smaller min_span, then fewer gaps filled, then the threshold nearest 0.5, then the lower
        threshold."""
        return (self.fallback, self.min_span, self.fill_gaps, round(abs(self.threshold - 0.5), 9), self.threshold)

    def decode(self, probs: Tensor, mask: Tensor, level: Tensor | None = None) -> Tensor:
        """``level``: each row's predicted level (for the fallback; None: every row counts as > 0)."""
        return decode_rationales(probs, mask, self.threshold, self.fill_gaps, self.min_span, self.fallback, level)


def decoding_config(config: Mapping[str, object] | None, mechanisms: Sequence[str] = ()) -> dict:
    """A rationale decoding config checked and made plain (what a checkpoint stores): the shared
    setting as :meth:`RationaleDecoding.to_dict`, plus the full setting of each mechanism whose
    own values differ from it (of ``mechanisms``, or of every mechanism the config names)."""
    shared = RationaleDecoding.from_config(config)
    out: dict = shared.to_dict()
    names = [m for m in MECHANISMS if m in mechanisms or (config is not None and config.get(m))]
    for name in names:
        own = RationaleDecoding.from_config(config, name)
        if own != shared:
            out[name] = own.to_dict()
    return out
