"""prepare_mechanism: CSV -> tokenized, aligned, split, cached datasets."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

import empathy.data.processing as processing
from empathy.data.align import find_rationale_spans
from empathy.data.processing import PreparedData, prepare_mechanism
from empathy.data.read import DataError
from empathy.data.split import SplitFileError

MINILM_CFG = {"name": "minilm", "path": "packaged:all-MiniLM-L6-v2"}
MECHANISM_FILES = {
    "ER": "emotional-reactions-reddit.csv",
    "IP": "interpretations-reddit.csv",
    "EX": "explorations-reddit.csv",
}
COLUMNS = [
    "sp_id",
    "rp_id",
    "level",
    "seeker_post",
    "response_post",
    "seeker_id",
    "seeker_input_ids",
    "response_input_ids",
    "response_offsets",
    "response_mask",
    "rationale_strict",
    "rationale_paper",
    "rationale_unaligned",
]
LONG = " ".join(f"word{i}" for i in range(30))


def small_rows():
    rows = []
    for i in range(24):
        seeker = f"Seeker post number {i // 2}, feeling low\nand tired."  # two responses per seeker
        level = (0, 1, 2)[i % 3]
        if level == 0:
            rows.append((f"s{i // 2}", f"r{i}", seeker, f"Response {i}: have you tried sleeping?", "0", ""))
        else:
            rows.append(
                (
                    f"s{i // 2}",
                    f"r{i}",
                    seeker,
                    f"I'm  so sorry &amp; I care, truly {i}. Hang in there!",
                    str(level),
                    "I'm so sorry & I care|Hang in there!",
                )
            )
    rows += [
        ("s90", "r90", "Long post", LONG + " and I am so sorry.", "1", "word1 word2|I am so sorry."),
        ("s91", "r91", "Odd post", "Ich verstehe dich 😊", "2", "verstehe dich 😊|not in the response"),
        ("s92", "r92", "Dup post", "Same text", "0", ""),
        ("s92", "r92", "Dup post", "Same text", "0", ""),  # identical: merged
        ("s93", "r93", "Conflict", "Text", "1", "Text"),
        ("s93", "r93", "Conflict", "Text", "2", "Text"),  # conflicting: dropped
    ]
    return rows


@pytest.fixture
def small_csv(write_csv):
    return write_csv(small_rows(), name="ER.csv")


def run(small_csv, cache_dir, encoder_cfg, **kwargs) -> PreparedData:
    return prepare_mechanism(
        data_dir=small_csv.parent,
        mechanism="ER",
        mechanism_file=small_csv.name,
        encoder_cfg=encoder_cfg,
        max_len=kwargs.pop("max_len", 16),
        cache_dir=cache_dir,
        **kwargs,
    )


def check_alignment(row) -> None:
    """Label-1 tokens lie on the rationale spans found in the text, and cover every kept span."""
    offsets, mask, labels = row["response_offsets"], row["response_mask"], row["rationale_strict"]
    spans = row["_spans"]
    for (start, end), real, label in zip(offsets, mask, labels, strict=True):
        if not real:
            assert label == 0
        elif label:
            assert any(start < e and end > s for s, e in spans)
    cut = max(end for (_, end), real in zip(offsets, mask, strict=True) if real)
    for s, e in spans:
        if s < cut:  # kept (at least partly): some label-1 token starts inside it
            assert any(label and start < e and end > s for (start, end), label in zip(offsets, labels, strict=True))


def test_prepare_small_file(small_csv, tmp_path, tiny_encoder_cfg):
    prepared = run(small_csv, tmp_path / "cache", tiny_encoder_cfg)
    dsd, summary = prepared.datasets, prepared.summary
    assert list(dsd) == ["train", "dev", "test"]
    for split in dsd.values():
        assert split.column_names == COLUMNS
    rows = [dict(r, _split=name) for name, split in dsd.items() for r in split]
    assert len(rows) == 24 + 3  # 24 + long + odd + the merged duplicate; the conflict dropped
    assert summary["rows_read"] == 30 and summary["rows_kept"] == 27
    assert summary["duplicate_rows_merged"] == 1 and summary["conflicting_keys"] == 1
    assert summary["rows_dropped"] == 2 and summary["cache_hit"] is False
    assert sum(s["rows"] for s in summary["splits"].values()) == 27
    assert summary["splits"]["train"]["rows"] == len(dsd["train"])

    by_key = {r["rp_id"]: r for r in rows}
    # Seeker ids: one per seeker text, shared encodings, never across splits.
    seekers = {}
    for r in rows:
        assert seekers.setdefault(r["seeker_id"], (r["seeker_post"], r["seeker_input_ids"], r["_split"])) == (
            r["seeker_post"],
            r["seeker_input_ids"],
            r["_split"],
        )
    assert len({r["seeker_post"] for r in rows}) == len(seekers)
    for r in rows:
        n = len(r["response_input_ids"])
        assert n <= 16 and len(r["seeker_input_ids"]) <= 16
        assert len(r["response_offsets"]) == len(r["response_mask"]) == len(r["rationale_paper"]) == n
        assert r["response_mask"][0] == r["response_mask"][-1] == 0 and all(r["response_mask"][1:-1])
        spans, _ = find_rationale_spans(r["response_post"], _rationales(r))
        check_alignment({**r, "_spans": spans})
        if r["level"] == 0:
            assert sum(r["rationale_strict"]) == 0 and r["rationale_paper"] == r["response_mask"]
        else:
            assert r["rationale_strict"] == r["rationale_paper"] and sum(r["rationale_strict"]) > 0
    # HTML unescaped; the double space in the response still aligned.
    assert "&amp;" not in by_key["r1"]["response_post"] and by_key["r1"]["rationale_unaligned"] == 0
    assert by_key["r91"]["rationale_unaligned"] == 1

    pieces = summary["rationale_pieces"]
    assert pieces["unaligned"] == 1 and pieces["aligned"] == pieces["total"] - 1
    assert pieces["beyond_max_len_wholly"] >= 1  # "I am so sorry." of r90

    with prepared.unaligned_report.open(newline="", encoding="utf-8") as f:
        report = list(csv.DictReader(f))
    assert {(r["rp_id"], r["piece"]) for r in report if "not found" in r["reason"]} == {("r91", "not in the response")}
    assert ("r90", "I am so sorry.") in {(r["rp_id"], r["piece"]) for r in report if "wholly beyond" in r["reason"]}

    with prepared.split_csv.open(newline="", encoding="utf-8") as f:
        split_rows = {(r["sp_id"], r["rp_id"]): r["split"] for r in csv.DictReader(f)}
    assert split_rows == {(r["sp_id"], r["rp_id"]): r["_split"] for r in rows}
    assert prepared.split_csv.parent == prepared.cache_path == prepared.unaligned_report.parent
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [prepared.cache_path.name]  # no temp left


def _rationales(row):
    # The test CSV's rationales, by response id.
    for r in small_rows():
        if r[1] == row["rp_id"]:
            return [p.strip().replace("&amp;", "&") for p in r[5].split("|") if p.strip()]
    return []


def test_second_call_loads_the_cache(small_csv, tmp_path, tiny_encoder_cfg, monkeypatch):
    first = run(small_csv, tmp_path, tiny_encoder_cfg)

    def no(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(processing, "build_rows", no)
    monkeypatch.setattr(processing, "read_epitome_csv", no)
    second = run(small_csv, tmp_path, tiny_encoder_cfg)
    assert second.summary["cache_hit"] is True and second.cache_path == first.cache_path
    for name in first.datasets:
        assert second.datasets[name].to_list() == first.datasets[name].to_list()


@pytest.mark.parametrize(
    "change",
    [
        {"max_len": 12},
        {"on_conflict": "first"},
        {"unescape_html": False},
        {"split_seed": 13},
        {"split_fractions": (0.8, 0.1, 0.1)},
    ],
)
def test_changed_settings_miss_the_cache(small_csv, tmp_path, tiny_encoder_cfg, change):
    first = run(small_csv, tmp_path, tiny_encoder_cfg)
    other = run(small_csv, tmp_path, tiny_encoder_cfg, **change)
    assert other.summary["cache_hit"] is False and other.cache_path != first.cache_path


def test_changed_file_misses_the_cache(small_csv, tmp_path, tiny_encoder_cfg):
    first = run(small_csv, tmp_path / "cache", tiny_encoder_cfg)
    with small_csv.open("a", encoding="utf-8", newline="") as f:
        csv.writer(f).writerow(("s99", "r99", "New", "New response", "0", ""))
    other = run(small_csv, tmp_path / "cache", tiny_encoder_cfg)
    assert other.summary["cache_hit"] is False and other.cache_path != first.cache_path
    assert other.summary["rows_kept"] == first.summary["rows_kept"] + 1


def test_bpe_tokenizer_changes_the_key_and_aligns(small_csv, tmp_path, tiny_encoder_cfg, bpe_tokenizer_dir):
    wordpiece = run(small_csv, tmp_path, tiny_encoder_cfg)
    bpe = run(small_csv, tmp_path, {"name": "bpe", "path": str(bpe_tokenizer_dir)})
    assert bpe.cache_path != wordpiece.cache_path and bpe.summary["cache_hit"] is False
    for split in bpe.datasets.values():
        for r in split:
            spans, _ = find_rationale_spans(r["response_post"], _rationales(r))
            check_alignment({**r, "_spans": spans})
    assert bpe.summary["rationale_pieces"]["aligned"] == wordpiece.summary["rationale_pieces"]["aligned"]


def test_split_file_is_used_and_checked(small_csv, tmp_path, tiny_encoder_cfg):
    first = run(small_csv, tmp_path / "a", tiny_encoder_cfg)
    lines = first.split_csv.read_text(encoding="utf-8").splitlines()
    flipped = [lines[0]] + [line.rsplit(",", 1)[0] + ",test" for line in lines[1:]]
    user_split = tmp_path / "user_split.csv"
    user_split.write_text("\n".join(flipped) + "\n", encoding="utf-8")
    given = run(small_csv, tmp_path / "a", tiny_encoder_cfg, split_file=user_split)
    assert given.cache_path != first.cache_path
    assert len(given.datasets["test"]) == 27 and len(given.datasets["train"]) == 0

    partial = tmp_path / "partial.csv"
    partial.write_text("\n".join(lines[:-2]) + "\n", encoding="utf-8")
    with pytest.raises(SplitFileError, match="2 of the 27 kept rows have no split"):
        run(small_csv, tmp_path / "b", tiny_encoder_cfg, split_file=partial)


def test_missing_csv_says_where_and_how(tmp_path, tiny_encoder_cfg):
    with pytest.raises(FileNotFoundError) as info:
        prepare_mechanism(
            data_dir=tmp_path / "nowhere",
            mechanism="IP",
            mechanism_file="interpretations-reddit.csv",
            encoder_cfg=tiny_encoder_cfg,
            cache_dir=tmp_path,
        )
    message = str(info.value)
    assert str((tmp_path / "nowhere" / "interpretations-reddit.csv").resolve()) in message
    assert "EMPATHY_DATA_DIR" in message and "data.data_dir" in message
    assert "scripts/fetch_data.py" in message and "behavioral-data/Empathy-Mental-Health" in message


def test_conflict_error_propagates(small_csv, tmp_path, tiny_encoder_cfg):
    with pytest.raises(DataError, match="s93, r93"):
        run(small_csv, tmp_path, tiny_encoder_cfg, on_conflict="error")
    assert list(tmp_path.glob(".*tmp*")) == []


# ---- the real data ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("real-cache")


@pytest.fixture(scope="module")
def real_prepared(real_data_dir, real_cache):
    return {
        m: prepare_mechanism(
            data_dir=real_data_dir, mechanism=m, mechanism_file=f, encoder_cfg=MINILM_CFG, cache_dir=real_cache
        )
        for m, f in MECHANISM_FILES.items()
    }


@pytest.mark.real_data
@pytest.mark.parametrize("mechanism", list(MECHANISM_FILES))
def test_real_data_prepares(real_prepared, mechanism):
    prepared = real_prepared[mechanism]
    dsd, summary = prepared.datasets, prepared.summary
    n = summary["rows_kept"]
    assert summary["rows_read"] == 3084 and sum(len(d) for d in dsd.values()) == n
    for name, fraction in (("train", 0.75), ("dev", 0.05), ("test", 0.20)):
        assert abs(len(dsd[name]) - fraction * n) <= 1
    whole = Counter(lv for d in dsd.values() for lv in d["level"])
    for d in dsd.values():
        part = Counter(d["level"])
        for lv in whole:
            assert abs(100 * (part[lv] / len(d) - whole[lv] / n)) <= 2
    for key in ("sp_id", "seeker_post", "seeker_id"):
        seen = {name: set(d[key]) for name, d in dsd.items()}
        assert not seen["train"] & seen["dev"] and not seen["train"] & seen["test"] and not seen["dev"] & seen["test"]
    pieces = summary["rationale_pieces"]
    assert pieces["aligned"] + pieces["unaligned"] == pieces["total"]
    assert pieces["aligned"] >= 0.99 * pieces["total"]
    assert sum(sum(d["rationale_unaligned"]) for d in dsd.values()) == pieces["unaligned"]


@pytest.mark.real_data
def test_real_data_alignment_against_text(real_prepared, real_data_dir):
    from empathy.data.read import read_epitome_csv

    examples, _ = read_epitome_csv(real_data_dir / MECHANISM_FILES["IP"])
    rationales = {e.key: e.rationales for e in examples}
    for r in real_prepared["IP"].datasets["train"].select(range(400)):
        spans, _ = find_rationale_spans(r["response_post"], rationales[(r["sp_id"], r["rp_id"])])
        check_alignment({**r, "_spans": spans})


@pytest.mark.real_data
def test_real_data_cache_hit_and_miss(real_prepared, real_data_dir, real_cache):
    again = prepare_mechanism(
        data_dir=real_data_dir,
        mechanism="ER",
        mechanism_file=MECHANISM_FILES["ER"],
        encoder_cfg=MINILM_CFG,
        cache_dir=real_cache,
    )
    assert again.summary["cache_hit"] is True and again.cache_path == real_prepared["ER"].cache_path
    longer = prepare_mechanism(
        data_dir=real_data_dir,
        mechanism="ER",
        mechanism_file=MECHANISM_FILES["ER"],
        encoder_cfg=MINILM_CFG,
        cache_dir=real_cache,
        max_len=128,
    )
    assert longer.summary["cache_hit"] is False and longer.cache_path != again.cache_path
    beyond = longer.summary["rationale_pieces"]
    short = again.summary["rationale_pieces"]
    assert beyond["beyond_max_len_wholly"] < short["beyond_max_len_wholly"]


# ---------------------------------------------------------------- shared split and cross-validation
def _prepare_all(folder, cache_dir, encoder_cfg, **kwargs) -> dict[str, PreparedData]:
    from empathy.data.synthetic import FILES

    return {
        m: prepare_mechanism(
            data_dir=folder,
            mechanism=m,
            mechanism_file=f,
            encoder_cfg=encoder_cfg,
            cache_dir=cache_dir,
            mechanism_files=FILES,
            **kwargs,
        )
        for m, f in FILES.items()
    }


def _keys(prepared: PreparedData, split: str) -> set[tuple[str, str]]:
    ds = prepared.datasets[split]
    return set(zip(ds["sp_id"], ds["rp_id"], strict=True))


def test_shared_split_is_the_same_for_every_mechanism(tmp_path, tiny_encoder_cfg):
    from empathy.data.synthetic import write_synthetic_epitome

    folder = write_synthetic_epitome(tmp_path / "data", n_rows=90, seed=3)
    shared = _prepare_all(folder, tmp_path / "cache", tiny_encoder_cfg, split_scope="shared")
    for split in ("train", "dev", "test"):
        assert _keys(shared["ER"], split) == _keys(shared["IP"], split) == _keys(shared["EX"], split)
    alone = _prepare_all(folder, tmp_path / "cache", tiny_encoder_cfg, split_scope="mechanism")
    # per-mechanism stratification gives different test sets (the reason for the shared scope)
    assert len({frozenset(_keys(p, "test")) for p in alone.values()}) > 1
    with pytest.raises(ValueError, match="split_scope"):
        _prepare_all(folder, tmp_path / "cache", tiny_encoder_cfg, split_scope="bogus")


@pytest.mark.parametrize("scope", ["shared", "mechanism"])
def test_cross_validation_folds_partition_train_and_dev_by_seeker(tmp_path, tiny_encoder_cfg, scope):
    from empathy.data.synthetic import write_synthetic_epitome

    folder = write_synthetic_epitome(tmp_path / "data", n_rows=120, seed=5)
    base = _prepare_all(folder, tmp_path / "cache", tiny_encoder_cfg, split_scope=scope)["IP"]
    inside = _keys(base, "train") | _keys(base, "dev")
    folds = [
        _prepare_all(folder, tmp_path / "cache", tiny_encoder_cfg, split_scope=scope, cv_folds=4, cv_fold=k)["IP"]
        for k in range(4)
    ]
    devs = [_keys(f, "dev") for f in folds]
    assert set().union(*devs) == inside and sum(map(len, devs)) == len(inside)  # a partition
    for fold in folds:
        assert _keys(fold, "test") == _keys(base, "test")  # test never touched
        assert _keys(fold, "train") == inside - _keys(fold, "dev")
        seekers = [set(fold.datasets[s]["seeker_post"]) for s in ("train", "dev", "test")]
        assert not (seekers[0] & seekers[1]) and not (seekers[1] & seekers[2])  # one seeker post, one fold
    assert max(map(len, devs)) - min(map(len, devs)) <= 8  # about equal folds (groups of <= 3 rows)
    with pytest.raises(ValueError, match="cv_fold"):
        _prepare_all(folder, tmp_path / "cache", tiny_encoder_cfg, split_scope=scope, cv_folds=4, cv_fold=4)
