"""Grouped stratified split and split CSVs."""

from __future__ import annotations

import csv
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from empathy.data.read import read_epitome_csv
from empathy.data.split import (
    SplitFileError,
    grouped_stratified_split,
    read_split_csv,
    seeker_groups,
    splits_from_file,
    write_split_csv,
)

FRACTIONS = (0.75, 0.05, 0.20)
MECHANISM_FILES = {
    "ER": "emotional-reactions-reddit.csv",
    "IP": "interpretations-reddit.csv",
    "EX": "explorations-reddit.csv",
}


def check_split(levels, groups, splits, fractions=FRACTIONS, max_points=2.0):
    """Sizes within one row of the fractions, no group in two splits, level shares within 2 points."""
    n = len(levels)
    sizes = Counter(splits)
    for name, fraction in zip(("train", "dev", "test"), fractions, strict=True):
        assert abs(sizes[name] - fraction * n) <= 1, (name, sizes[name], fraction * n)
    split_of_group: dict = {}
    for g, s in zip(groups, splits, strict=True):
        assert split_of_group.setdefault(g, s) == s, f"group {g} in {split_of_group[g]} and {s}"
    whole = Counter(levels)
    for name in ("train", "dev", "test"):
        part = Counter(lv for lv, s in zip(levels, splits, strict=True) if s == name)
        for lv in whole:
            diff = 100 * (part[lv] / max(sizes[name], 1) - whole[lv] / n)
            assert abs(diff) <= max_points, (name, lv, diff)


def synthetic(n=1200, seed=0):
    rng = np.random.default_rng(seed)
    levels = rng.choice([0, 1, 2], size=n, p=[0.66, 0.29, 0.05]).tolist()
    groups = rng.integers(0, int(n * 0.9), size=n).tolist()  # some groups of 2-4 rows
    return levels, groups


def test_seeker_groups_join_ids_and_texts():
    sp_ids = ["a", "b", "a", "c", "d", "e"]
    posts = ["x", "y", "z", "y", "w", "w"]
    # a~a (id), b~c (text y), d~e (text w); z joins a through the id.
    assert seeker_groups(sp_ids, posts) == [0, 1, 0, 1, 2, 2]


def test_split_properties_on_synthetic_data():
    levels, groups = synthetic()
    splits = grouped_stratified_split(levels, groups, FRACTIONS, seed=12)
    check_split(levels, groups, splits)


def test_split_is_seeded():
    levels, groups = synthetic()
    assert grouped_stratified_split(levels, groups, seed=3) == grouped_stratified_split(levels, groups, seed=3)
    assert grouped_stratified_split(levels, groups, seed=3) != grouped_stratified_split(levels, groups, seed=4)


def test_split_does_not_depend_on_group_labels():
    levels, groups = synthetic(300)
    renamed = [f"g{g * 7919 % 1009}" for g in groups]  # same partition, other labels
    assert grouped_stratified_split(levels, groups) == grouped_stratified_split(levels, renamed)


def test_other_fractions_and_tiny_inputs():
    levels, groups = synthetic(500)
    splits = grouped_stratified_split(levels, groups, (0.8, 0.1, 0.1), seed=1)
    check_split(levels, groups, splits, (0.8, 0.1, 0.1), max_points=3.0)
    assert grouped_stratified_split([0, 1], ["a", "b"], (1.0, 0.0, 0.0)) == ["train", "train"]
    with pytest.raises(ValueError, match="fractions"):
        grouped_stratified_split([0], ["a"], (0.5, 0.2, 0.2))


def test_split_csv_round_trip(tmp_path):
    examples = [SimpleNamespace(sp_id=f"s{i}", rp_id=f"r{i}", key=(f"s{i}", f"r{i}")) for i in range(4)]
    splits = ["train", "dev", "test", "train"]
    path = write_split_csv(tmp_path / "out" / "split.csv", examples, splits)
    assert sorted(p.name for p in path.parent.iterdir()) == ["split.csv"]  # no temp file left
    with path.open(newline="") as f:
        assert next(csv.reader(f)) == ["sp_id", "rp_id", "split"]
    assert read_split_csv(path) == {e.key: s for e, s in zip(examples, splits, strict=True)}
    assert splits_from_file(path, examples) == splits


def test_split_file_must_cover_every_row(tmp_path):
    examples = [SimpleNamespace(sp_id=f"s{i}", rp_id=f"r{i}", key=(f"s{i}", f"r{i}")) for i in range(3)]
    path = write_split_csv(tmp_path / "split.csv", examples[:1], ["train"])
    with pytest.raises(SplitFileError) as info:
        splits_from_file(path, examples)
    message = str(info.value)
    assert str(path) in message and "2 of the 3" in message and "(s1, r1)" in message and "(s2, r2)" in message


def test_bad_split_files(tmp_path):
    bad_value = tmp_path / "bad.csv"
    bad_value.write_text("sp_id,rp_id,split\ns,r,train\ns2,r2,validation\n", encoding="utf-8")
    with pytest.raises(SplitFileError, match=r"row 2 \(line 3\), column 'split': 'validation'"):
        read_split_csv(bad_value)
    no_column = tmp_path / "nocol.csv"
    no_column.write_text("sp_id,rp_id\ns,r\n", encoding="utf-8")
    with pytest.raises(SplitFileError, match="missing column.*split"):
        read_split_csv(no_column)
    twice = tmp_path / "twice.csv"
    twice.write_text("sp_id,rp_id,split\ns,r,train\ns,r,test\n", encoding="utf-8")
    with pytest.raises(SplitFileError, match="two splits"):
        read_split_csv(twice)
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        read_split_csv(tmp_path / "nowhere.csv")


@pytest.mark.real_data
@pytest.mark.parametrize("mechanism", list(MECHANISM_FILES))
def test_real_data_split(real_data_dir, mechanism):
    examples, _ = read_epitome_csv(real_data_dir / MECHANISM_FILES[mechanism])
    groups = seeker_groups([e.sp_id for e in examples], [e.seeker_post for e in examples])
    levels = [e.level for e in examples]
    splits = grouped_stratified_split(levels, groups, FRACTIONS, seed=12)
    check_split(levels, groups, splits)
    # Neither an sp_id nor a seeker post text in two splits.
    for key in ("sp_id", "seeker_post"):
        seen: dict = {}
        for e, s in zip(examples, splits, strict=True):
            assert seen.setdefault(getattr(e, key), s) == s
