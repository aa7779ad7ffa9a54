"""The mechanisms' prepared datasets merged into one dataset per split (pure functions).

The EPITOME files annotate the same (sp_id, rp_id) pairs for ER, IP and EX. Each mechanism is
prepared alone (``prepare_mechanism``: read, align, split, cache); then :func:`merge_mechanisms`
joins the prepared splits by pair into one dataset per split (with one mechanism, its rows as
they are, the labels renamed):

- the shared columns (``sp_id``, ``rp_id``, the posts, ``seeker_input_ids``,
  ``response_input_ids``, ``response_offsets``, ``response_mask``), checked to agree across
  mechanisms: a pair whose tokens differ, whose posts differ beyond whitespace (the files differ
  in runs of spaces for hundreds of pairs; the first mechanism's text and offsets are kept), or
  that sits in different splits, stops with an error naming it;
- ``seeker_id`` renumbered over the merged rows (one id per distinct seeker post, all splits),
  since each mechanism numbered its own seeker posts;
- per mechanism ``M``: ``level_M`` and ``rationale_strict_M`` / ``rationale_paper_M``; where
  ``M``'s file lacks the pair (e.g. a level conflict dropped there) the level is -100 and every
  rationale label -100, and the model ignores them (loss and metrics).

:class:`~empathy.data.datamodule.EpitomeDataModule` wires this to the loaders.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets

from empathy.data.processing import FEATURES, UNALIGNED_CSV, PreparedData, cache_key
from empathy.data.split import SPLITS, write_split_csv
from empathy.io import atomic_output

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
MISMATCHED_CSV = "mismatched_pairs.csv"
POLICIES = ("strict", "paper")
SHARED_COLUMNS = (
    "sp_id",
    "rp_id",
    "seeker_post",
    "response_post",
    "seeker_input_ids",
    "response_input_ids",
    "response_offsets",
    "response_mask",
)
# Columns that must be identical for a pair in every mechanism's dataset: the tokens. The posts
# themselves need only agree up to whitespace (the EPITOME files differ in runs of spaces for
# hundreds of pairs, which WordPiece ignores); the first mechanism's text and offsets are kept.
CHECKED_COLUMNS = ("seeker_input_ids", "response_input_ids", "response_mask")
TEXT_COLUMNS = ("seeker_post", "response_post")


def _same_text(a: str, b: str) -> bool:
    return a == b or a.split() == b.split()


def level_column(mechanism: str) -> str:
    return f"level_{mechanism}"


def rationale_column(mechanism: str, policy: str) -> str:
    return f"rationale_{policy}_{mechanism}"


def joint_features(mechanisms: Sequence[str]) -> datasets.Features:
    features = {c: FEATURES[c] for c in SHARED_COLUMNS}
    features["seeker_id"] = FEATURES["seeker_id"]
    for m in mechanisms:
        features[level_column(m)] = FEATURES["level"]
        for policy in POLICIES:
            features[rationale_column(m, policy)] = FEATURES[f"rationale_{policy}"]
    return datasets.Features(features)


class JointMergeError(ValueError):
    """The mechanisms' datasets do not describe the same pairs the same way."""


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _mismatch(cols: Mapping[str, list], row: int, theirs: Mapping[str, list], other_row: int) -> str | None:
    for column in TEXT_COLUMNS:
        if not _same_text(cols[column][row], theirs[column][other_row]):
            return f"{column} differs beyond whitespace"
    for column in CHECKED_COLUMNS:
        if cols[column][row] != theirs[column][other_row]:
            return f"{column} differs"
    return None


def merge_mechanisms(
    prepared: Mapping[str, datasets.DatasetDict], mismatched: list[dict] | None = None
) -> datasets.DatasetDict:
    """One dataset per split holding every mechanism's labels for each (sp_id, rp_id) pair.

    ``prepared`` maps mechanism -> its prepared ``DatasetDict`` (train / dev / test, the columns
    of ``empathy.data.processing.FEATURES``). Rows come in split order, then in the order the
    mechanisms first list them. Raises :class:`JointMergeError` when a pair is in different
    splits. A pair whose posts differ beyond whitespace, or whose tokens differ, between the
    first mechanism listing it and another keeps the first one's text and labels; the other
    mechanism's labels for it are dropped (-100) and the pair is appended to ``mismatched``
    (the real files: 36 responses edited in one file, e.g. a word removed).
    """
    mechanisms = list(prepared)
    if not mechanisms:
        raise ValueError("no mechanism to merge")
    mismatched = [] if mismatched is None else mismatched
    columns = {m: {s: prepared[m][s].to_dict() for s in SPLITS} for m in mechanisms}
    # pair -> {mechanism: (split, row)}
    where: dict[tuple[str, str], dict[str, tuple[str, int]]] = {}
    order: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for m in mechanisms:
        for split in SPLITS:
            cols = columns[m][split]
            for row, key in enumerate(zip(cols["sp_id"], cols["rp_id"], strict=True)):
                seen = where.setdefault(key, {})
                if seen:
                    other, (other_split, other_row) = next(iter(seen.items()))
                    if other_split != split:
                        raise JointMergeError(
                            f"pair (sp_id={key[0]}, rp_id={key[1]}) is in {other}'s {other_split} split but in "
                            f"{m}'s {split} split: a joint model needs one split for every mechanism (the "
                            "shared split, data.split_scope=shared, or one data.split_file for all of them)"
                        )
                    theirs = columns[other][other_split]
                    problem = _mismatch(cols, row, theirs, other_row)
                    if problem is not None:
                        # this mechanism's labels are aligned to another text: it loses the pair
                        mismatched.append(
                            {"sp_id": key[0], "rp_id": key[1], "kept": other, "unlabelled": m, "reason": problem}
                        )
                        continue
                else:
                    order[split].append(key)
                seen[m] = (split, row)

    seeker_ids: dict[str, int] = {}
    merged = datasets.DatasetDict()
    features = joint_features(mechanisms)
    for split in SPLITS:
        out: dict[str, list] = {name: [] for name in features}
        for key in order[split]:
            seen = where[key]
            first, (_, first_row) = next(iter(seen.items()))
            source = columns[first][split]
            for column in SHARED_COLUMNS:
                out[column].append(source[column][first_row])
            seeker = source["seeker_post"][first_row]
            out["seeker_id"].append(seeker_ids.setdefault(seeker, len(seeker_ids)))
            tokens = len(source["response_input_ids"][first_row])
            for m in mechanisms:
                if m in seen:
                    row = seen[m][1]
                    cols = columns[m][split]
                    out[level_column(m)].append(cols["level"][row])
                    for policy in POLICIES:
                        out[rationale_column(m, policy)].append(cols[f"rationale_{policy}"][row])
                else:
                    out[level_column(m)].append(IGNORE_INDEX)
                    for policy in POLICIES:
                        out[rationale_column(m, policy)].append([IGNORE_INDEX] * tokens)
        merged[split] = datasets.Dataset.from_dict(out, features=features)
    return merged


def level_counts(dataset: Any, mechanism: str) -> list[int]:
    """Rows per level (0, 1, 2) of ``mechanism`` in a merged split (unlabelled rows left out)."""
    levels = dataset[level_column(mechanism)]
    return [sum(1 for level in levels if level == c) for c in range(3)]


def merged_summary(parts: Mapping[str, PreparedData], merged: datasets.DatasetDict) -> dict:
    splits = {}
    for split in SPLITS:
        dataset = merged[split]
        splits[split] = {
            "rows": len(dataset),
            "levels": {m: {str(c): n for c, n in enumerate(level_counts(dataset, m))} for m in parts},
            "unlabelled": {m: sum(1 for v in dataset[level_column(m)] if v == IGNORE_INDEX) for m in parts},
        }
    return {"mechanisms": {m: p.summary for m, p in parts.items()}, "splits": splits}


def write_unaligned(path: Path, parts: Mapping[str, PreparedData]) -> None:
    """The mechanisms' unaligned-rationale reports in one CSV, with a ``mechanism`` column."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["mechanism", "sp_id", "rp_id", "piece", "reason"])
        for m, part in parts.items():
            with open(part.unaligned_report, encoding="utf-8", newline="") as src:
                for row in csv.DictReader(src):
                    writer.writerow([m, row["sp_id"], row["rp_id"], row["piece"], row["reason"]])


def merge_prepared(parts: Mapping[str, PreparedData], cache_dir: str | Path) -> PreparedData:
    """The prepared mechanisms merged (:func:`merge_mechanisms`), with the merged split CSV, the
    unaligned-rationale report and the list of labels dropped for a mismatched text, written
    once beside the mechanisms' cache entries (under a key of theirs)."""
    mismatched: list[dict] = []
    merged = merge_mechanisms({m: p.datasets for m, p in parts.items()}, mismatched)
    key = cache_key({m: p.cache_path.name for m, p in parts.items()})
    cache_path = Path(cache_dir).resolve() / f"{'+'.join(parts)}-{key}"
    split_csv, unaligned, mismatch_csv = (
        cache_path / "split.csv",
        cache_path / UNALIGNED_CSV,
        cache_path / MISMATCHED_CSV,
    )
    if not split_csv.is_file() or not unaligned.is_file():
        cache_path.mkdir(parents=True, exist_ok=True)
        pairs = [
            (SimpleNamespace(sp_id=sp, rp_id=rp), split)
            for split in SPLITS
            for sp, rp in zip(merged[split]["sp_id"], merged[split]["rp_id"], strict=True)
        ]
        write_split_csv(split_csv, [p for p, _ in pairs], [s for _, s in pairs])
        write_unaligned(unaligned, parts)
    if not mismatch_csv.is_file():
        cache_path.mkdir(parents=True, exist_ok=True)
        with atomic_output(mismatch_csv) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["sp_id", "rp_id", "kept", "unlabelled", "reason"])
            writer.writeheader()
            writer.writerows(mismatched)
    if mismatched:
        log.warning(
            "%d (pair, mechanism) labels dropped because that mechanism's file has another text for the pair "
            "than %s's (listed in %s)",
            len(mismatched),
            mismatched[0]["kept"],
            mismatch_csv,
        )
    summary = merged_summary(parts, merged)
    summary.update(
        mismatched_labels=len(mismatched),
        cache_path=str(cache_path),
        split_csv=str(split_csv),
        unaligned_report=str(unaligned),
    )
    return PreparedData(merged, summary, split_csv, cache_path, unaligned)
