"""Rationale strings -> character spans of the response -> 0/1 labels of its tokens.

The tokens are located through the fast tokenizer's ``offset_mapping`` (character ranges in the
response), so the same code serves WordPiece, byte-level BPE and any language.

Rationale pieces are looked up verbatim first; a piece that is not found is looked up again after
normalising whitespace (runs of spaces, line breaks, non-breaking and zero-width spaces become one
space) and case, and the match is mapped back to the original characters. Pieces that still are not
found are returned as unaligned, for the caller to count and report.
"""

from __future__ import annotations

from collections.abc import Sequence

POLICIES = ("strict", "paper")
# Characters that are invisible in the posts and count as whitespace when matching.
_ZERO_WIDTH = {"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"}

Span = tuple[int, int]


def normalise(text: str) -> tuple[str, list[int]]:
    """Lower-cased text with whitespace runs collapsed to one space and stripped at both ends,
    and for each of its characters the index of the original character it comes from."""
    out: list[str] = []
    origin: list[int] = []
    pending_space = -1  # index of the first whitespace character of the current run
    for i, ch in enumerate(text):
        if ch.isspace() or ch in _ZERO_WIDTH:
            if pending_space < 0:
                pending_space = i
            continue
        if pending_space >= 0 and out:
            out.append(" ")
            origin.append(pending_space)
        pending_space = -1
        for low in ch.lower():  # a few characters lower-case to two
            out.append(low)
            origin.append(i)
    return "".join(out), origin


def _find_verbatim(response: str, piece: str, start: int) -> Span | None:
    i = response.find(piece, start)
    if i < 0 and start > 0:
        i = response.find(piece)
    return (i, i + len(piece)) if i >= 0 else None


def _find_normalised(norm: str, origin: list[int], piece: str, start: int) -> Span | None:
    norm_piece, _ = normalise(piece)
    if not norm_piece:
        return None
    # Resume after the previous match where possible (pieces usually come in response order).
    norm_start = next((k for k, o in enumerate(origin) if o >= start), len(norm))
    i = norm.find(norm_piece, norm_start)
    if i < 0 and norm_start > 0:
        i = norm.find(norm_piece)
    if i < 0:
        return None
    return origin[i], origin[i + len(norm_piece) - 1] + 1


def find_rationale_spans(response: str, rationales: Sequence[str]) -> tuple[list[Span], list[str]]:
    """Character spans ``[start, end)`` of the rationale pieces in ``response`` (in the order of
    the pieces) and the pieces that could not be found (unaligned)."""
    spans: list[Span] = []
    unaligned: list[str] = []
    norm: tuple[str, list[int]] | None = None
    start = 0
    for piece in rationales:
        piece = piece.strip()
        if not piece:
            continue
        span = _find_verbatim(response, piece, start)
        if span is None:
            if norm is None:
                norm = normalise(response)
            span = _find_normalised(norm[0], norm[1], piece, start)
        if span is None:
            unaligned.append(piece)
            continue
        spans.append(span)
        start = span[1]
    return spans, unaligned


def token_labels(
    offsets: Sequence[Sequence[int]], real_token_mask: Sequence[int], char_spans: Sequence[Span]
) -> list[int]:
    """1 for each real token whose character range overlaps a span, else 0 (special tokens: 0)."""
    labels = []
    for (start, end), real in zip(offsets, real_token_mask, strict=True):
        hit = real and end > start and any(start < s_end and end > s_start for s_start, s_end in char_spans)
        labels.append(1 if hit else 0)
    return labels


def rationale_labels(
    offsets: Sequence[Sequence[int]],
    real_token_mask: Sequence[int],
    char_spans: Sequence[Span],
    *,
    has_rationale: bool,
    policy: str,
) -> list[int]:
    """Token labels under a policy for rows without rationale: ``strict`` gives them no rationale
    token (all 0), ``paper`` (the original code) makes every real response token a rationale."""
    if policy not in POLICIES:
        raise ValueError(f"rationale policy must be one of {POLICIES}, got {policy!r}")
    if not has_rationale:
        value = 1 if policy == "paper" else 0
        return [value if real else 0 for real in real_token_mask]
    return token_labels(offsets, real_token_mask, char_spans)


def truncation_point(offsets: Sequence[Sequence[int]], real_token_mask: Sequence[int]) -> int:
    """The character where the kept (possibly truncated) tokens end."""
    return max((end for (_, end), real in zip(offsets, real_token_mask, strict=True) if real), default=0)


def spans_beyond_truncation(
    response: str,
    offsets: Sequence[Sequence[int]],
    real_token_mask: Sequence[int],
    char_spans: Sequence[Span],
) -> tuple[list[Span], list[Span]]:
    """Spans that lie partly and wholly beyond the last kept token (text lost to truncation).

    Whitespace after the last token is not counted as lost text.
    """
    cut = truncation_point(offsets, real_token_mask)
    partly: list[Span] = []
    wholly: list[Span] = []
    for span in char_spans:
        s_start, s_end = span
        if not response[max(cut, s_start) : s_end].strip():
            continue  # nothing of the span beyond the cut
        (wholly if response[s_start : min(cut, s_end)].strip() == "" else partly).append(span)
    return partly, wholly
