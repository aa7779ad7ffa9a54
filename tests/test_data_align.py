"""Rationale strings -> character spans -> token labels, for WordPiece and byte-level BPE."""

from __future__ import annotations

import pytest

from empathy.data.align import (
    find_rationale_spans,
    normalise,
    rationale_labels,
    spans_beyond_truncation,
    token_labels,
    truncation_point,
)


def _squash(text: str) -> str:
    return " ".join(text.lower().split())


def test_verbatim_spans_at_start_and_end():
    response = "I am sorry. That is hard. Hang in there!"
    spans, unaligned = find_rationale_spans(response, ["I am sorry.", "Hang in there!"])
    assert spans == [(0, 11), (26, 40)] and unaligned == []
    assert [response[s:e] for s, e in spans] == ["I am sorry.", "Hang in there!"]


def test_double_space_in_response_maps_back_to_original_offsets():
    response = "Well.  I am  so sorry\nfor you. Bye"
    spans, unaligned = find_rationale_spans(response, ["I am so sorry for you."])
    assert unaligned == []
    ((start, end),) = spans
    assert response[start:end] == "I am  so sorry\nfor you."


def test_case_and_zero_width_space_normalisation():
    response = "HANG IN THERE. \u200b  You can do it"
    spans, unaligned = find_rationale_spans(response, ["hang in there. you can"])
    assert unaligned == [] and response[spans[0][0] : spans[0][1]] == "HANG IN THERE. \u200b  You can"


def test_non_english_and_emoji():
    response = "Je comprends très bien 😊. 我明白你的感受。"
    spans, unaligned = find_rationale_spans(response, ["très bien 😊", "我明白你的感受"])
    assert unaligned == []
    assert [response[s:e] for s, e in spans] == ["très bien 😊", "我明白你的感受"]


def test_unaligned_pieces_are_returned():
    spans, unaligned = find_rationale_spans("I hear you.", ["I hear you", "not in the text", "  "])
    assert spans == [(0, 10)] and unaligned == ["not in the text"]


def test_repeated_piece_follows_order():
    response = "so sorry. really, so sorry."
    spans, _ = find_rationale_spans(response, ["so sorry", "so sorry"])
    assert spans == [(0, 8), (18, 26)]


def test_normalise_maps_each_character_back():
    text = "  A\n\tB  İc "
    norm, origin = normalise(text)
    assert norm == "a b i̇c"
    assert len(origin) == len(norm)
    assert [text[i] for i in origin] == ["A", "\n", "B", " ", "İ", "İ", "c"]


def test_token_labels_by_offsets():
    offsets = [(0, 0), (0, 4), (5, 7), (8, 13), (0, 0), (0, 0)]
    mask = [0, 1, 1, 1, 0, 0]  # special tokens and padding: mask 0
    assert token_labels(offsets, mask, [(5, 9)]) == [0, 0, 1, 1, 0, 0]
    assert token_labels(offsets, mask, []) == [0] * 6
    # An empty special-token range at 0 never overlaps a span starting at 0.
    assert token_labels(offsets, mask, [(0, 2)]) == [0, 1, 0, 0, 0, 0]


def test_policies_for_rows_without_rationale():
    offsets = [(0, 0), (0, 4), (5, 7), (0, 0)]
    mask = [0, 1, 1, 0]
    assert rationale_labels(offsets, mask, [], has_rationale=False, policy="paper") == [0, 1, 1, 0]
    assert rationale_labels(offsets, mask, [], has_rationale=False, policy="strict") == [0, 0, 0, 0]
    for policy in ("paper", "strict"):
        assert rationale_labels(offsets, mask, [(5, 7)], has_rationale=True, policy=policy) == [0, 0, 1, 0]
    with pytest.raises(ValueError, match="policy"):
        rationale_labels(offsets, mask, [], has_rationale=False, policy="loose")


CASES = [
    # (response, rationales)
    ("I'm so sorry you are going through this. Hang in there, friend!", ["I'm so sorry", "Hang in there, friend!"]),
    ("That sounds  really hard; do you have anyone you can talk to?", ["That sounds really hard;"]),
    ('Line one\nline two, with "quotes" and commas, ok', ['line two, with "quotes"']),
    ("You are not alone 😊 ❤️ we're here with you.", ["You are not alone 😊", "we're here with you."]),
    ("Ça va aller, je suis là pour toi. Très bien, merci beaucoup.", ["je suis là pour toi."]),
    ("我明白你的感受。加油！", ["加油！"]),
    ("Ich verstehe dich, das klingt wirklich schwer.", ["Ich verstehe dich", "schwer."]),
]


def _encode(tokenizer, text: str, max_len: int = 64):
    enc = tokenizer(
        text, truncation=True, max_length=max_len, return_offsets_mapping=True, return_special_tokens_mask=True
    )
    return [list(o) for o in enc["offset_mapping"]], [1 - s for s in enc["special_tokens_mask"]]


@pytest.mark.parametrize(("response", "rationales"), CASES)
def test_labelled_tokens_reproduce_the_rationales(any_tokenizer, response, rationales):
    offsets, mask = _encode(any_tokenizer, response)
    spans, unaligned = find_rationale_spans(response, rationales)
    assert unaligned == []
    labels = token_labels(offsets, mask, spans)
    assert all(label == 0 for label, real in zip(labels, mask, strict=True) if not real)
    # Runs of label-1 tokens, as text: each covers its rationale, up to token boundaries.
    runs, in_run = [], False
    for (start, end), label in zip(offsets, labels, strict=True):
        if end <= start:
            continue  # special tokens and empty (space) tokens neither start nor end a run
        if label and in_run:
            runs[-1][1] = end
        elif label:
            runs.append([start, end])
        in_run = bool(label)
    covered = [response[s:e] for s, e in runs]
    for piece in rationales:
        assert any(_squash(piece) in _squash(text) for text in covered), (piece, covered)
    # And no label-1 token lies outside every rationale span.
    for (start, end), label in zip(offsets, labels, strict=True):
        if label:
            assert any(start < e and end > s for s, e in spans)


def test_truncated_rationale_is_counted(any_tokenizer):
    response = " ".join(f"word{i}" for i in range(40)) + " and finally I am so sorry."
    offsets, mask = _encode(any_tokenizer, response, max_len=16)
    assert len(offsets) == 16
    pieces = ["word0 word1", "word2 " + " ".join(f"word{i}" for i in range(3, 30)), "I am so sorry."]
    spans, unaligned = find_rationale_spans(response, pieces)
    assert unaligned == []
    cut = truncation_point(offsets, mask)
    assert spans[0][1] <= cut < spans[1][1]
    partly, wholly = spans_beyond_truncation(response, offsets, mask, spans)
    assert partly == [spans[1]] and wholly == [spans[2]]
    labels = token_labels(offsets, mask, spans)
    assert labels[0] == labels[-1] == 0 and all(labels[1:-1])  # every kept token is a rationale token


def test_partly_beyond_truncation():
    response = "aaa bbb ccc ddd"
    offsets, mask = [(0, 0), (0, 3), (4, 7), (0, 0)], [0, 1, 1, 0]
    partly, wholly = spans_beyond_truncation(response, offsets, mask, [(4, 11), (12, 15), (0, 3)])
    assert partly == [(4, 11)] and wholly == [(12, 15)]
    # Not truncated: trailing whitespace after the last token is no lost text.
    partly, wholly = spans_beyond_truncation("aaa bbb  ", offsets, mask, [(4, 9)])
    assert partly == [] and wholly == []
