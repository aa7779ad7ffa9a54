"""Reading and validating raw EPITOME CSVs."""

from __future__ import annotations

import pytest

from empathy.data.read import DataError, Example, read_epitome_csv, split_rationales


def test_reads_multiline_quotes_commas_emoji_and_html(write_csv):
    path = write_csv(
        [
            (
                "s1",
                "r1",
                'Line one\nline two, with "quotes"',
                "I'm sorry &amp; I care 😊",
                "2",
                "I care 😊| |sorry &amp;|",
            ),
            ("s2", "r2", "Plain", "Plain answer", "0", ""),
        ]
    )
    examples, report = read_epitome_csv(path)
    assert [e.row for e in examples] == [1, 2]
    first = examples[0]
    assert first.seeker_post == 'Line one\nline two, with "quotes"'
    assert first.response_post == "I'm sorry & I care 😊"
    assert first.rationales == ("I care 😊", "sorry &")
    assert first.level == 2
    assert examples[1].rationales == ()
    assert report.rows_read == 2 and report.rows_kept == 2
    assert report.duplicates_merged == [] and report.conflicts == [] and report.rows_dropped == []


def test_html_left_alone_when_asked(write_csv):
    path = write_csv([("s1", "r1", "a &gt; b", "c &amp; d", "1", "c &amp; d")])
    (e,), _ = read_epitome_csv(path, unescape_html=False)
    assert (e.seeker_post, e.response_post, e.rationales) == (
        "a &gt; b",
        "c &amp; d",
        ("c &amp; d",),
    )


def test_example_is_frozen(write_csv):
    (e,), _ = read_epitome_csv(write_csv([("s", "r", "a", "b", "0", "")]))
    assert isinstance(e, Example) and e.key == ("s", "r")
    with pytest.raises(AttributeError):
        e.level = 1  # type: ignore[misc]


def test_split_rationales():
    assert split_rationales(" a |b||  | c d ") == ("a", "b", "c d")
    assert split_rationales("") == ()


def test_utf8_bom_is_ignored(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfsp_id,rp_id,seeker_post,response_post,level,rationales\ns,r,a,b,1,b\n")
    (e,), _ = read_epitome_csv(path)
    assert e.sp_id == "s" and e.rationales == ("b",)


def test_identical_duplicates_are_merged_and_reported(write_csv):
    row = ("s1", "r1", "seek", "resp", "1", "resp")
    examples, report = read_epitome_csv(write_csv([row, ("s2", "r2", "x", "y", "0", ""), row]))
    assert [e.key for e in examples] == [("s1", "r1"), ("s2", "r2")]
    assert report.duplicates_merged == [{"sp_id": "s1", "rp_id": "r1", "rows": [1, 3]}]
    assert report.n_duplicates_merged == 1
    assert report.rows_dropped == []


CONFLICT_ROWS = [
    ("s1", "r1", "seek", "resp", "1", "resp"),
    ("s2", "r2", "x", "y", "0", ""),
    ("s1", "r1", "seek", "resp", "2", "resp"),
    ("s3", "r3", "p", "q", "1", "q"),
    ("s3", "r3", "p", "q", "1", "other"),
]


def test_conflicts_dropped_by_default(write_csv):
    examples, report = read_epitome_csv(write_csv(CONFLICT_ROWS))
    # Copies that differ only in rationales are merged (union of pieces), not dropped.
    assert [(e.key, e.rationales) for e in examples] == [
        (("s2", "r2"), ()),
        (("s3", "r3"), ("q", "other")),
    ]
    assert [(c["rp_id"], c["rows"], c["fields"], c["resolution"]) for c in report.conflicts] == [
        ("r1", [1, 3], ["level"], "drop"),
    ]
    assert {
        "sp_id": "s3",
        "rp_id": "r3",
        "rows": [4, 5],
        "rationales_merged": 2,
    } in report.duplicates_merged
    assert sorted(d["row"] for d in report.rows_dropped) == [1, 3]
    assert all("conflicting" in d["reason"] for d in report.rows_dropped)
    assert report.to_dict()["rows_dropped"] == 2


def test_conflicts_keep_first(write_csv):
    examples, report = read_epitome_csv(write_csv(CONFLICT_ROWS), on_conflict="first")
    assert [(e.key, e.level, e.rationales, e.row) for e in examples] == [
        (("s1", "r1"), 1, ("resp",), 1),
        (("s2", "r2"), 0, (), 2),
        (("s3", "r3"), 1, ("q", "other"), 4),
    ]
    assert sorted(d["row"] for d in report.rows_dropped) == [3]


def test_conflicts_error(write_csv):
    path = write_csv(CONFLICT_ROWS)
    with pytest.raises(DataError) as info:
        read_epitome_csv(path, on_conflict="error")
    message = str(info.value)
    assert str(path) in message and "row 3" in message and "'level'" in message
    assert "(s1, r1)" in message and "[1, 3]" in message


def test_bad_on_conflict():
    with pytest.raises(ValueError, match="on_conflict"):
        read_epitome_csv("unused.csv", on_conflict="last")


def test_missing_column(write_csv):
    path = write_csv(
        [("s", "r", "a", "b", "0")],
        header=("sp_id", "rp_id", "seeker_post", "response_post", "level"),
    )
    with pytest.raises(DataError) as info:
        read_epitome_csv(path)
    message = str(info.value)
    assert str(path) in message and "line 1" in message and "'rationales'" in message
    assert "missing column" in message and info.value.column == "rationales"


@pytest.mark.parametrize(
    ("header", "named"),
    [
        (
            ("sp_id", "rp_id", "seeker_post", "response_post", "level", "rationales", "level"),
            "'level' (columns 5 and 7)",
        ),
        (
            (
                "sp_id",
                "rp_id",
                "seeker_post",
                "response_post",
                "level",
                "rationales",
                " response_post ",
            ),
            "'response_post' (columns 4 and 7)",
        ),  # names are compared stripped, as they are used
    ],
)
def test_duplicate_column_names(write_csv, header, named):
    path = write_csv([("s", "r", "a", "b", "0", "b", "1")], header=header)
    with pytest.raises(DataError) as info:
        read_epitome_csv(path)
    message = str(info.value)
    assert str(path) in message and "line 1" in message and "duplicate column names" in message
    assert named in message and info.value.line == 1


@pytest.mark.parametrize("level", ["3", "-1", "high", "", "1.5"])
def test_bad_level(write_csv, level):
    # Row 2 starts on line 4: row 1 has a two-line seeker post.
    path = write_csv([("s1", "r1", "two\nlines", "b", "0", ""), ("s2", "r2", "a", "b", level, "")])
    with pytest.raises(DataError) as info:
        read_epitome_csv(path)
    message = str(info.value)
    assert str(path) in message and "row 2 (line 4)" in message and "column 'level'" in message
    assert "0, 1, 2" in message
    assert (info.value.row, info.value.line, info.value.column) == (2, 4, "level")


@pytest.mark.parametrize("column", ["seeker_post", "response_post"])
def test_empty_post(write_csv, column):
    row = {
        "sp_id": "s",
        "rp_id": "r",
        "seeker_post": "a",
        "response_post": "b",
        "level": "0",
        "rationales": "",
    }
    row[column] = "  "
    path = write_csv([("s0", "r0", "x", "y", "1", "y"), tuple(row.values())])
    with pytest.raises(DataError) as info:
        read_epitome_csv(path)
    message = str(info.value)
    assert str(path) in message and "row 2 (line 3)" in message and f"column {column!r}" in message
    assert "empty" in message


def test_undecodable_bytes_name_the_row(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        b"sp_id,rp_id,seeker_post,response_post,level,rationales\ns1,r1,fine,fine,0,\ns2,r2,caf\xe9,fine,0,\n"
    )
    with pytest.raises(DataError) as info:
        read_epitome_csv(path)
    message = str(info.value)
    assert str(path) in message and "row 2 (line 3)" in message and "column 'seeker_post'" in message
    assert "UTF-8" in message


def test_wrong_number_of_fields(tmp_path):
    path = tmp_path / "fields.csv"
    path.write_text("sp_id,rp_id,seeker_post,response_post,level,rationales\ns,r,a, b,c,1,\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 1 \(line 2\).*7 fields; expected 6"):
        read_epitome_csv(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        read_epitome_csv(path)


@pytest.mark.real_data
@pytest.mark.parametrize(
    "name",
    ["emotional-reactions-reddit.csv", "interpretations-reddit.csv", "explorations-reddit.csv"],
)
def test_real_files_read(real_data_dir, name):
    examples, report = read_epitome_csv(real_data_dir / name)
    assert report.rows_read == 3084
    keys = [e.key for e in examples]
    assert len(keys) == len(set(keys))
    # 3,023 unique keys: each one is kept, or dropped with all its copies as a conflict.
    assert len(keys) + len(report.conflicts) == 3023
    assert all(c["resolution"] == "drop" for c in report.conflicts)
    assert len(examples) == report.rows_kept == 3084 - report.n_duplicates_merged - len(report.rows_dropped)
    assert not any("&amp;" in e.response_post for e in examples)
