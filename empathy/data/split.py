"""Train / dev / test split: seeded, stratified by level, grouped by seeker post; split CSV in/out.

A seeker post can have several responses. Rows that share a seeker post (by ``sp_id`` or by the
text of the post: both are joined, in case they disagree) form one group, and a group never spans
two splits, so a model is never tested on a seeker post it was trained on.
"""

from __future__ import annotations

import csv
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np

from empathy.io import atomic_output

SPLITS = ("train", "dev", "test")
SPLIT_COLUMNS = ("sp_id", "rp_id", "split")


class SplitFileError(ValueError):
    """A split CSV that cannot be used for the rows at hand."""


def seeker_groups(sp_ids: Sequence[str], seeker_posts: Sequence[str]) -> list[int]:
    """Group number of each row: rows sharing an ``sp_id`` or a seeker post text share a group.

    Groups are numbered in order of first appearance (union-find over both keys).
    """
    if len(sp_ids) != len(seeker_posts):
        raise ValueError("sp_ids and seeker_posts must have the same length")
    parent = list(range(len(sp_ids)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for keys in (sp_ids, seeker_posts):
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            j = first.setdefault(key, i)
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    numbers: dict[int, int] = {}
    return [numbers.setdefault(find(i), len(numbers)) for i in range(len(sp_ids))]


def _split_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    sizes = [int(round(n * f)) for f in fractions[:-1]]
    return [*sizes, n - sum(sizes)]


def _cell_targets(split_sizes: list[int], level_counts: np.ndarray) -> np.ndarray:
    """Integer rows per (split, level) whose row sums are the split sizes and column sums the
    level counts, each within one row of its proportional share (controlled rounding)."""
    n = level_counts.sum()
    exact = np.outer(split_sizes, level_counts) / max(n, 1)
    cells = np.floor(exact).astype(int)
    row_left = np.array(split_sizes) - cells.sum(axis=1)
    col_left = level_counts - cells.sum(axis=0)
    order = np.argsort(-(exact - cells), axis=None, kind="stable")
    for bump_twice in (False, True):
        for flat in order:
            s, lv = np.unravel_index(flat, cells.shape)
            if row_left[s] > 0 and col_left[lv] > 0 and (bump_twice or cells[s, lv] == np.floor(exact[s, lv])):
                cells[s, lv] += 1
                row_left[s] -= 1
                col_left[lv] -= 1
    return cells


def grouped_stratified_parts(
    levels: Sequence[Hashable],
    groups: Sequence[Hashable],
    fractions: Sequence[float],
    seed: int = 12,
) -> list[int]:
    """Part number (index into ``fractions``) of each row: part sizes within one row of
    ``fractions``, each part's level (stratum) proportions close to the whole's, no group in two
    parts. ``levels`` may be any hashable strata (e.g. a tuple of the three mechanisms' levels).

    Uses ``numpy.random.default_rng(seed)``, so the assignment is the same on every machine.
    """
    if len(levels) != len(groups):
        raise ValueError("levels and groups must have the same length")
    if not fractions or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be non-negative numbers summing to 1, got {list(fractions)}")
    n = len(levels)
    level_values = sorted(set(levels))
    level_index = {lv: k for k, lv in enumerate(level_values)}
    rows_of: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        rows_of.setdefault(g, []).append(i)
    members = list(rows_of.values())  # in order of first appearance: independent of hashing

    counts = np.zeros(len(level_values), dtype=int)
    for lv in levels:
        counts[level_index[lv]] += 1
    left = _cell_targets(_split_sizes(n, fractions), counts)  # rows still wanted per (part, level)

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(members))
    # Larger groups first, while there is room everywhere; ties in random order.
    order = sorted(order, key=lambda g: -len(members[g]))
    assignment = [-1] * n
    for g in order:
        need = np.zeros(len(level_values), dtype=int)
        for i in members[g]:
            need[level_index[levels[i]]] += 1
        fits = np.all(left >= need, axis=1)
        room = (left * (need > 0)).sum(axis=1).astype(float)
        if fits.any():
            weights = np.where(fits, room, 0.0)
            if weights.sum() <= 0:
                weights = fits.astype(float)
            s = int(rng.choice(len(fractions), p=weights / weights.sum()))
        else:  # no part has room for the whole group: least overshoot
            s = int(np.argmax((left - need).clip(max=0).sum(axis=1) * 1e6 + room))
        left[s] -= need
        for i in members[g]:
            assignment[i] = s
    return assignment


def grouped_stratified_split(
    levels: Sequence[Hashable],
    groups: Sequence[Hashable],
    fractions: Sequence[float] = (0.75, 0.05, 0.20),
    seed: int = 12,
) -> list[str]:
    """``'train'``/``'dev'``/``'test'`` for each row (see :func:`grouped_stratified_parts`)."""
    if len(fractions) != len(SPLITS):
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {list(fractions)}")
    return [SPLITS[p] for p in grouped_stratified_parts(levels, groups, fractions, seed)]


def grouped_stratified_folds(
    levels: Sequence[Hashable], groups: Sequence[Hashable], folds: int, seed: int = 12
) -> list[int]:
    """Fold number (0 .. folds-1) of each row for k-fold cross-validation: folds of equal size
    (within a row or a group), stratified by level, and no group (seeker post) in two folds."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    return grouped_stratified_parts(levels, groups, [1.0 / folds] * folds, seed)


def write_split_csv(path: str | Path, examples: Sequence, splits: Sequence[str]) -> Path:
    """Write ``sp_id, rp_id, split`` for each example, atomically (temp file, then rename)."""
    if len(examples) != len(splits):
        raise ValueError("examples and splits must have the same length")
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SPLIT_COLUMNS)
        for e, s in zip(examples, splits, strict=True):
            writer.writerow((e.sp_id, e.rp_id, s))
    return Path(path)


def read_split_csv(path: str | Path) -> dict[tuple[str, str], str]:
    """``{(sp_id, rp_id): split}`` from a split CSV, validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path.resolve()} does not exist")
    mapping: dict[tuple[str, str], str] = {}
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in SPLIT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise SplitFileError(
                f"{path}, line 1: missing column(s) {', '.join(missing)}; expected a header {','.join(SPLIT_COLUMNS)}"
            )
        for row, rec in enumerate(reader, start=1):
            key = (rec["sp_id"].strip(), rec["rp_id"].strip())
            split = (rec["split"] or "").strip()
            if split not in SPLITS:
                raise SplitFileError(
                    f"{path}, row {row} (line {reader.line_num}), column 'split': {split!r} is not one of "
                    f"{', '.join(SPLITS)}"
                )
            if key in mapping and mapping[key] != split:
                raise SplitFileError(
                    f"{path}, row {row} (line {reader.line_num}): ({key[0]}, {key[1]}) is given two splits, "
                    f"{mapping[key]} and {split}; expected one"
                )
            mapping[key] = split
    return mapping


def splits_of(examples: Sequence, mapping: dict[tuple[str, str], str], source: str) -> list[str]:
    """The split of each example from ``{(sp_id, rp_id): split}``, which must cover every example
    (``source`` names where the mapping came from, for the error)."""
    missing = [e.key for e in examples if e.key not in mapping]
    if missing:
        shown = ", ".join(f"({s}, {r})" for s, r in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise SplitFileError(
            f"{source}: {len(missing)} of the {len(examples)} kept rows have no split: {shown}{more}; "
            "expected a row (sp_id, rp_id, split) for each of them"
        )
    return [mapping[e.key] for e in examples]


def splits_from_file(path: str | Path, examples: Sequence) -> list[str]:
    """The split of each example from a user-supplied split CSV, which must cover every example."""
    return splits_of(examples, read_split_csv(path), str(path))
