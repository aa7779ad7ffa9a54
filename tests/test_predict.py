"""Prediction on new pairs: the Python API, files in and out, bad rows, and agreement with evaluate."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import DictConfig, open_dict

from empathy import runner
from empathy.data.read import DataError
from empathy.data.synthetic import write_synthetic_epitome
from empathy.evaluate import evaluate
from empathy.metrics import level_metrics, spans_from_labels
from empathy.models.checkpoint import state_dict_sha256
from empathy.models.module import EmpathyModule
from empathy.predict import EmpathyPredictor, load_model, predict_file
from empathy.predict.cli import predict_from_config
from empathy.predict.predictor import RationaleSpan, length_sorted_batches, token_runs
from empathy.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]
PAIRS = [
    (
        "I feel so alone lately.",
        "I'm so sorry you're going through this. Have you talked to anyone?",
    ),
    ("Can't sleep again.", "That sounds really hard."),
    (
        "Lost my job today and I don't know what to do anymore, everything is falling apart.",
        "Hang in there.",
    ),
    ("Nobody cares.", "I understand how lonely that feels.   Ça va aller 😊 — je suis là."),
    (
        "My exams went badly.",
        "What happened that made you feel this way? I went through something similar last year, "
        "and it took a long time, but things can change. Take care of yourself.",
    ),
    ("Everything feels pointless.", "Sleep helps a lot."),
]


def compose_cfg(name: str, overrides: list[str], data_dir: Path, out: Path) -> DictConfig:
    return runner.compose_config(name, overrides, data_dir=data_dir, output_dir=out)


def train_tiny(data_dir: Path, out: Path, mechanism: str) -> tuple[DictConfig, dict]:
    cfg = compose_cfg(
        "train",
        [
            "encoder=tiny",
            "logger=csv",
            "model=biencoder",
            f"mechanism={mechanism}",
            "trainer.max_epochs=1",
            "++trainer.limit_train_batches=6",
            "test=false",
            "trainer.precision=32-true",
            "trainer.accelerator=cpu",
            "++trainer.enable_progress_bar=false",
            "data.batch_size=8",
            "model.optimizer.lr=1e-3",
        ],
        data_dir,
        out,
    )
    return cfg, train(cfg, out)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    return write_synthetic_epitome(tmp_path_factory.mktemp("epitome"), n_rows=160, seed=0)


@pytest.fixture(scope="module")
def trained(synthetic_dir, tmp_path_factory) -> dict[str, tuple[DictConfig, dict]]:
    """A tiny ER and a tiny IP model, one epoch each (their seeker encoders are the same seeded init)."""
    return {m: train_tiny(synthetic_dir, tmp_path_factory.mktemp(f"run-{m}"), m) for m in ("ER", "IP")}


@pytest.fixture(scope="module")
def ckpts(trained) -> dict[str, str]:
    return {m: result["best_checkpoint"] for m, (_, result) in trained.items()}


@pytest.fixture(scope="module")
def predictor(ckpts) -> EmpathyPredictor:
    return EmpathyPredictor.from_pretrained(ckpts, precision="32", batch_size=4, sort_window=2)


def write_pairs_csv(path: Path, pairs=PAIRS, extra: bool = True) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "seeker_post", "response_post", "note"] if extra else ["seeker_post", "response_post"])
        for i, (s, r) in enumerate(pairs):
            writer.writerow([f"{i:03d}", s, r, f"n{i}"] if extra else [s, r])
    return path


def read_csv_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------- pure helpers


def test_token_runs_matches_spans_from_labels():
    rng = np.random.default_rng(0)
    on = rng.random((20, 13)) < 0.4
    on[0] = True
    on[1] = False
    for row, runs in zip(on, token_runs(on), strict=True):
        assert runs == spans_from_labels(torch.as_tensor(row.astype(np.int64)))


def test_length_sorted_batches_is_a_stable_partition():
    lengths = [(5, 1), (2, 0), (5, 1), (1, 9), (2, 0)]
    batches = length_sorted_batches(lengths, 2)
    assert batches == [[3, 1], [4, 0], [2]]
    assert sorted(i for b in batches for i in b) == list(range(5))


# ------------------------------------------------------------------------------- the API


def test_api_returns_levels_probabilities_and_spans(predictor):
    seekers, responses = zip(*PAIRS, strict=True)
    out = predictor.predict(seekers, responses)
    assert set(out) == {"ER", "IP"}
    for p in out.values():
        assert p.levels.shape == (len(PAIRS),) and p.probs.shape == (len(PAIRS), 3)
        assert np.allclose(p.probs.sum(1), 1.0, atol=1e-5)
        assert np.array_equal(p.levels, p.probs.argmax(1))
        for response, spans in zip(responses, p.rationales, strict=True):
            for span in spans:
                assert response[span.start : span.end] == span.text
    again = predictor.predict(seekers, responses)
    for m, p in out.items():  # deterministic: bit-identical on a second call
        assert np.array_equal(p.probs, again[m].probs) and p.rationales == again[m].rationales
    with pytest.raises(ValueError, match=r"response_posts\[1\]: expected non-empty text"):
        predictor.predict(["a", "b"], ["fine", "  "])
    with pytest.raises(ValueError, match="2 seeker posts but 1 response posts"):
        predictor.predict(["a", "b"], ["fine"])


def test_a_model_of_another_mechanism_is_refused(ckpts, tmp_path):
    with pytest.raises(ValueError, match=r"scores IP, but it was given as the model of ER"):
        EmpathyPredictor.from_pretrained({"ER": ckpts["IP"]})
    with pytest.raises(ValueError, match="unknown mechanism"):
        EmpathyPredictor.from_pretrained({"XX": ckpts["IP"]})
    cfg = compose_cfg(
        "predict",
        [
            f"input={write_pairs_csv(tmp_path / 'in.csv')}",
            f"output={tmp_path / 'out.csv'}",
            f"models.EX={ckpts['ER']}",
        ],
        tmp_path,
        tmp_path,
    )
    with pytest.raises(ValueError, match=r"scores ER, but it was given as the model of EX"):
        predict_from_config(cfg)
    assert not (tmp_path / "out.csv").exists()


def test_shared_seeker_pass_only_when_seeker_encoders_are_identical(ckpts):
    shared = EmpathyPredictor.from_pretrained(ckpts, precision="32", batch_size=4)
    assert shared.models["ER"].seeker_sha256 == shared.models["IP"].seeker_sha256, "same seeded seeker init expected"
    assert shared.seeker_groups == [("ER", "IP")]
    seekers, responses = zip(*PAIRS, strict=True)
    out = shared.predict(seekers, responses)
    assert shared.counts["seeker_passes"] == shared.counts["batches"] == 2
    assert shared.counts["response_passes"] == 4

    separate = EmpathyPredictor.from_pretrained(ckpts, precision="32", batch_size=4, share_seeker=False)
    assert separate.seeker_groups == [("ER",), ("IP",)]
    out_separate = separate.predict(seekers, responses)
    assert separate.counts["seeker_passes"] == 2 * separate.counts["batches"]
    for m in out:  # the shared pass changes nothing but the work done
        assert np.array_equal(out[m].probs, out_separate[m].probs)

    models = {m: load_model(p, m) for m, p in ckpts.items()}
    with torch.no_grad():
        next(models["IP"].net.seeker_encoder.parameters()).add_(0.01)
    models["IP"].seeker_sha256 = state_dict_sha256(models["IP"].net.seeker_encoder)
    differing = EmpathyPredictor(models, precision="32", batch_size=4)
    assert differing.seeker_groups == [("ER",), ("IP",)]
    differing.predict(seekers, responses)
    assert differing.counts["seeker_passes"] == 2 * differing.counts["batches"]


# ------------------------------------------------------------------------------- files


def test_order_and_columns_kept_with_shuffled_lengths(predictor, tmp_path):
    rng = random.Random(3)
    words = "so sorry hard alone sleep talk friend help understand".split()
    pairs = [
        (
            " ".join(rng.choices(words, k=rng.randint(1, 40))),
            " ".join(rng.choices(words, k=rng.randint(1, 70))),
        )
        for _ in range(37)
    ]
    src = write_pairs_csv(tmp_path / "in.csv", pairs)
    summary = predict_file(predictor, src, tmp_path / "out.csv", chunk_rows=7, progress=False)
    assert (summary.rows, summary.bad_rows) == (37, 0)
    rows = read_csv_rows(tmp_path / "out.csv")
    assert [r["id"] for r in rows] == [f"{i:03d}" for i in range(37)]
    assert [(r["seeker_post"], r["response_post"]) for r in rows] == pairs
    assert [r["note"] for r in rows] == [f"n{i}" for i in range(37)]
    assert list(rows[0]) == [
        "id",
        "seeker_post",
        "response_post",
        "note",
        *[f"{m}_{k}" for m in ("ER", "IP") for k in ("level", "prob0", "prob1", "prob2", "rationale")],
    ]
    # Each row on its own (no padding, no sorting) gives the same predictions.
    single = EmpathyPredictor(predictor.models, precision="32", batch_size=1)
    alone = single.predict(*zip(*pairs, strict=True))
    for m in ("ER", "IP"):
        assert [int(r[f"{m}_level"]) for r in rows] == alone[m].levels.tolist()
        probs = np.array([[float(r[f"{m}_prob{c}"]) for c in range(3)] for r in rows])
        assert np.allclose(probs, alone[m].probs, atol=1e-5)


def test_csv_jsonl_parquet_round_trip(predictor, tmp_path):
    seekers, responses = zip(*PAIRS, strict=True)
    records = [
        {"id": f"{i:03d}", "seeker_post": s, "response_post": r, "score": i * 0.5, "tags": ["a", i]}
        for i, (s, r) in enumerate(PAIRS)
    ]
    src_csv = write_pairs_csv(tmp_path / "in.csv")
    src_jsonl = tmp_path / "in.jsonl"
    src_jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    src_parquet = tmp_path / "in.parquet"
    pq.write_table(
        pa.Table.from_pylist([{k: v for k, v in r.items() if k != "tags"} for r in records]),
        src_parquet,
    )

    predict_file(predictor, src_csv, tmp_path / "out.csv", progress=False)
    predict_file(predictor, src_jsonl, tmp_path / "out.jsonl", progress=False)
    predict_file(predictor, src_parquet, tmp_path / "out.parquet", progress=False)
    predict_file(predictor, src_csv, tmp_path / "csv_as.parquet", output_format="parquet", progress=False)

    out_csv = read_csv_rows(tmp_path / "out.csv")
    out_jsonl = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    out_parquet = pq.read_table(tmp_path / "out.parquet")
    csv_as_parquet = pq.read_table(tmp_path / "csv_as.parquet").to_pylist()
    # Carried through unchanged, with each format's own types.
    assert [r["id"] for r in out_csv] == [r["id"] for r in out_jsonl] == [f"{i:03d}" for i in range(len(PAIRS))]
    assert [r["tags"] for r in out_jsonl] == [r["tags"] for r in records]
    assert out_parquet.schema.field("score").type == pa.float64()
    assert out_parquet.column("score").to_pylist() == [r["score"] for r in records]
    assert out_parquet.schema.field("ER_level").type == pa.int64()
    assert [r["note"] for r in csv_as_parquet] == [r["note"] for r in out_csv]
    direct = predictor.predict(seekers, responses)
    for m in ("ER", "IP"):
        levels = direct[m].levels.tolist()
        assert [int(r[f"{m}_level"]) for r in out_csv] == levels
        assert [r[f"{m}_level"] for r in out_jsonl] == levels
        assert out_parquet.column(f"{m}_level").to_pylist() == levels
        assert [r[f"{m}_level"] for r in csv_as_parquet] == levels
        texts = direct[m].rationale_texts()
        assert [r[f"{m}_rationale"] for r in out_csv] == [r[f"{m}_rationale"] for r in out_jsonl] == texts
        assert [float(r[f"{m}_prob1"]) for r in out_csv] == pytest.approx([r[f"{m}_prob1"] for r in out_jsonl], abs=0)
    with pytest.raises(ValueError, match="has a parquet extension, but the output format is csv"):
        predict_file(predictor, src_csv, tmp_path / "x.parquet", progress=False)


def test_rationale_text_spans_are_substrings_of_the_response(ckpts, tmp_path):
    model = load_model(ckpts["ER"], "ER")
    model.hparams["rationale_decoding"] = {}  # argmax: no gap filling merging the spans
    head = model.net.heads["ER"].rationale_head[-1]
    with torch.no_grad():  # a head that marks about half the tokens: many spans to check
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(0)) * 3)
        head.bias.zero_()
    predictor = EmpathyPredictor({"ER": model}, precision="32", batch_size=3)
    src = write_pairs_csv(tmp_path / "in.csv")
    predict_file(predictor, src, tmp_path / "out.csv", progress=False)
    out = predictor.predict(*zip(*PAIRS, strict=True))["ER"]
    assert sum(len(spans) for spans in out.rationales) > len(PAIRS)
    for (_, response), spans, row in zip(PAIRS, out.rationales, read_csv_rows(tmp_path / "out.csv"), strict=True):
        assert row["ER_rationale"] == "|".join(s.text for s in spans)
        for span in spans:
            assert response[span.start : span.end] == span.text and span.text.strip() == span.text
        for piece in filter(None, row["ER_rationale"].split("|")):
            assert piece in response


BAD_CSV = [
    ('seeker_post,response_post\nok,fine\nok,""\n', {}, 2, "response_post", "empty post"),
    ('seeker_post,response_post\n"   ",fine\n', {}, 1, "seeker_post", "empty post"),
    (
        "seeker_post,response_post\nok,fine\nok," + "x" * 60 + "\n",
        {"max_chars": 50},
        2,
        "response_post",
        "60 characters, over max_chars=50",
    ),
    ("seeker_post,response_post\nok,fine,extra\n", {}, 1, None, "found 3 fields; expected 2"),
    ("id,seeker_post,response\n1,ok,fine\n", {}, None, "response_post", "missing column"),
    (
        b"seeker_post,response_post\nok,fine\nok,caf\xe9\n",
        {},
        2,
        "response_post",
        "bytes that are not valid UTF-8",
    ),
]


@pytest.mark.parametrize(("text", "options", "row", "column", "message"), BAD_CSV)
def test_bad_csv_rows_name_file_row_and_column(predictor, tmp_path, text, options, row, column, message):
    src = tmp_path / "pairs.csv"
    src.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    with pytest.raises(DataError, match=message) as info:
        predict_file(predictor, src, tmp_path / "out.csv", progress=False, **options)
    err = info.value
    assert err.path == str(src) and err.row == row and err.column == column
    assert not (tmp_path / "out.csv").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["pairs.csv"]


BAD_JSONL = [
    ({"seeker_post": 5, "response_post": "fine"}, "seeker_post", "not text"),
    ({"seeker_post": "ok", "response_post": None}, "response_post", "missing value"),
    ({"seeker_post": "ok"}, "response_post", "the row has no such field"),
    ("{not json", None, "not valid JSON"),
    ([1, 2], None, "expected a JSON object"),
]


@pytest.mark.parametrize(("record", "column", "message"), BAD_JSONL)
def test_bad_jsonl_rows_name_file_row_and_column(predictor, tmp_path, record, column, message):
    src = tmp_path / "pairs.jsonl"
    bad = record if isinstance(record, str) else json.dumps(record)
    src.write_text(
        json.dumps({"seeker_post": "a", "response_post": "b"}) + "\n\n" + bad + "\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=message) as info:
        predict_file(predictor, src, tmp_path / "out.jsonl", progress=False)
    assert (info.value.row, info.value.line, info.value.column) == (2, 3, column)
    assert "pairs.jsonl, row 2 (line 3)" in str(info.value)
    assert not (tmp_path / "out.jsonl").exists()


def test_bad_parquet_rows_and_mark_mode(predictor, tmp_path):
    src = tmp_path / "pairs.parquet"
    pq.write_table(
        pa.table(
            {
                "id": [1, 2, 3, 4],
                "seeker_post": ["ok", "ok", None, "ok"],
                "response_post": ["fine", "", "fine", "x" * 30],
            }
        ),
        src,
    )
    with pytest.raises(DataError, match=r"pairs.parquet, row 2, column 'response_post': empty post"):
        predict_file(predictor, src, tmp_path / "out.parquet", progress=False)
    summary = predict_file(predictor, src, tmp_path / "out.parquet", on_bad_row="mark", max_chars=20, progress=False)
    assert (summary.rows, summary.bad_rows) == (4, 3)
    assert summary.bad_reasons == {"empty post": 1, "missing value": 1, "over max_chars": 1}
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["id"] for r in out] == [1, 2, 3, 4]
    assert out[0]["error"] is None and out[0]["ER_level"] in (0, 1, 2)
    for r in out[1:]:
        assert r["error"] and r["ER_level"] is None and r["IP_prob0"] is None and r["ER_rationale"] is None
    assert "row 3, column 'seeker_post': missing value" in out[2]["error"]


def test_mark_mode_csv_keeps_every_row(predictor, tmp_path):
    src = tmp_path / "pairs.csv"
    src.write_text(
        "id,seeker_post,response_post\n1,ok,fine\n2,ok,\n3,ok,good\n4,ok,good,extra\n",
        encoding="utf-8",
    )
    summary = predict_file(predictor, src, tmp_path / "out.csv", on_bad_row="mark", progress=False)
    rows = read_csv_rows(tmp_path / "out.csv")
    assert [r["id"] for r in rows] == ["1", "2", "3", "4"] and summary.bad_rows == 2
    assert [bool(r["error"]) for r in rows] == [False, True, False, True]
    assert rows[1]["ER_level"] == "" and rows[2]["ER_level"] in ("0", "1", "2")
    assert "2 bad rows" in summary.message()


def test_output_is_atomic_and_never_overwritten_without_permission(predictor, tmp_path, monkeypatch):
    src = write_pairs_csv(tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    out.write_text("precious\n", encoding="utf-8")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        predict_file(predictor, src, out, progress=False)
    assert out.read_text(encoding="utf-8") == "precious\n"

    calls = {"n": 0}
    real_predict = predictor.predict

    def failing_predict(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated failure mid-way")
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(predictor, "predict", failing_predict)
    fresh = tmp_path / "fresh.csv"
    with pytest.raises(RuntimeError, match="mid-way"):
        predict_file(predictor, src, fresh, chunk_rows=2, progress=False)
    calls["n"] = 0
    with pytest.raises(RuntimeError, match="mid-way"):
        predict_file(predictor, src, out, chunk_rows=2, overwrite=True, progress=False)
    assert not fresh.exists() and out.read_text(encoding="utf-8") == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "in.csv",
        "out.csv",
    ]  # no temporary files left
    monkeypatch.undo()
    predict_file(predictor, src, out, chunk_rows=2, overwrite=True, progress=False)
    assert len(read_csv_rows(out)) == len(PAIRS)


def open_files_under(folder: Path) -> list[str]:
    """The files under ``folder`` that this process holds open (Linux /proc)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="lists open files through /proc")
@pytest.mark.parametrize(
    ("records", "output", "message"),
    [
        pytest.param([{"v": 1}, {"v": 2, "late": 3}], "out.csv", "after the CSV header", id="csv-writer"),
        pytest.param([{"v": 1}, {"v": "text"}], "out.parquet", "other column types", id="parquet-writer"),
        pytest.param([{"v": 1}, {"seeker_post": ""}], "out.jsonl", "empty post", id="bad-row"),
    ],
)
def test_a_failed_run_closes_its_files_and_leaves_no_temporary(predictor, tmp_path, records, output, message):
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(json.dumps({"seeker_post": "a", "response_post": "b", **r}) + "\n" for r in records),
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=message) as info:
        predict_file(
            predictor,
            src,
            tmp_path / output,
            output_format=output.split(".")[1],
            chunk_rows=1,
            progress=False,
        )
    assert open_files_under(tmp_path) == [], f"files left open while the {info.typename} is held"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


# ------------------------------------------------------------------------------- duplicate names


@pytest.mark.parametrize("output_format", ["csv", "jsonl"])
def test_duplicate_csv_header_names_are_refused(predictor, tmp_path, output_format):
    src = tmp_path / "pairs.csv"
    src.write_text(
        "id,seeker_post,response_post,note,response_post,note\n1,ok,first,a,second,b\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError) as info:
        predict_file(
            predictor,
            src,
            tmp_path / f"out.{output_format}",
            output_format=output_format,
            progress=False,
        )
    assert str(info.value) == (
        f"{src}, line 1, column 'response_post': duplicate column names: 'response_post' (columns 3 and 5), "
        "'note' (columns 4 and 6); expected each column name once"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.csv"]


def test_duplicate_parquet_column_names_are_refused(predictor, tmp_path):
    src = tmp_path / "pairs.parquet"
    arrays = [pa.array(["ok"]), pa.array(["first"]), pa.array(["second"])]
    pq.write_table(pa.Table.from_arrays(arrays, names=["seeker_post", "response_post", "response_post"]), src)
    with pytest.raises(DataError, match=r"duplicate column names: 'response_post' \(columns 2 and 3\)") as info:
        predict_file(predictor, src, tmp_path / "out.parquet", progress=False)
    assert (info.value.path, info.value.column) == (str(src), "response_post")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.parquet"]


def test_duplicate_jsonl_keys_name_row_line_and_key(predictor, tmp_path):
    src = tmp_path / "pairs.jsonl"
    src.write_text(
        '{"seeker_post": "a", "response_post": "b", "note": "x"}\n\n'
        '{"seeker_post": "a", "response_post": "b", "note": "x", "note": "y"}\n'
        '{"seeker_post": "a", "response_post": "b", "meta": {"k": 1, "k": 2}}\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError, match="duplicate key 'note': only its last value would be kept") as info:
        predict_file(predictor, src, tmp_path / "out.jsonl", progress=False)
    assert (info.value.row, info.value.line, info.value.column) == (2, 3, "note")
    assert not (tmp_path / "out.jsonl").exists()
    summary = predict_file(predictor, src, tmp_path / "out.jsonl", on_bad_row="mark", progress=False)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert summary.bad_reasons == {"duplicate key": 2}
    assert out[0]["error"] is None and out[0]["ER_level"] in (0, 1, 2)
    assert out[1]["note"] == "y" and out[1]["ER_level"] is None
    assert "row 2 (line 3), column 'note': duplicate key 'note'" in out[1]["error"]
    assert "row 3 (line 4): duplicate key 'k' in a nested object" in out[2]["error"]


# ------------------------------------------------------------------------------- spreadsheet formulas

FORMULA_CELLS = ["=1+1", "+1+1", "-2+3", "@SUM(A1:A2)", "\t=1+1", "\r=1+1"]


def test_csv_formula_cells_are_escaped_unless_kept(predictor, tmp_path, monkeypatch):
    real_predict = predictor.predict

    def whole_response_rationales(seekers, responses, **kwargs):
        out = real_predict(seekers, responses, **kwargs)
        for p in out.values():  # each rationale is the whole response, its formula start included
            p.rationales = [[RationaleSpan(0, len(r), r)] for r in responses]
        return out

    monkeypatch.setattr(predictor, "predict", whole_response_rationales)
    src = tmp_path / "in.csv"
    with src.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["@id", "seeker_post", "response_post", "number", "dash"])
        for i, cell in enumerate(FORMULA_CELLS):
            writer.writerow([f"={i}", "hello", f"{cell} so sorry", "-0.25", "-"])
    summary = predict_file(predictor, src, tmp_path / "escaped.csv", progress=False)
    kept = predict_file(predictor, src, tmp_path / "kept.csv", csv_formulas="keep", progress=False)
    predict_file(predictor, src, tmp_path / "out.jsonl", output_format="jsonl", progress=False)

    def read(name: str) -> list[list[str]]:
        with (tmp_path / name).open(encoding="utf-8", newline="") as f:
            return list(csv.reader(f))

    verbatim, escaped = read("kept.csv"), read("escaped.csv")
    assert verbatim[0][:5] == ["@id", "seeker_post", "response_post", "number", "dash"]
    assert [r[2] for r in verbatim[1:]] == [f"{cell} so sorry" for cell in FORMULA_CELLS]
    assert kept.formulas_escaped == 0 and "csv_formulas" not in kept.message()
    # Every text cell that starts like a formula gets a leading ', and nothing else changes.
    n = 0
    for row_kept, row_escaped in zip(verbatim, escaped, strict=True):
        for cell, out in zip(row_kept, row_escaped, strict=True):
            formula = cell[:1] in ("=", "+", "-", "@", "\t", "\r") and cell != "-0.25"
            assert out == ("'" + cell if formula else cell)
            n += formula
    assert escaped[0][0] == "'@id" and [r[0] for r in escaped[1:3]] == ["'=0", "'=1"]
    # A plain number is not escaped.
    assert all(r[3] == "-0.25" and r[4] == "'-" for r in escaped[1:])
    for m in ("ER", "IP"):
        rationale = escaped[0].index(f"{m}_rationale")
        assert [r[rationale] for r in escaped[1:]] == [f"'{cell} so sorry" for cell in FORMULA_CELLS]
    # The header's @id; per row: the id, the response, the dash and the two rationales.
    assert summary.formulas_escaped == n == 1 + 5 * len(FORMULA_CELLS)
    assert f"{n} cells starting with =" in summary.message()
    jsonl = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["response_post"] for r in jsonl] == [f"{cell} so sorry" for cell in FORMULA_CELLS]
    assert jsonl[0]["ER_rationale"] == "=1+1 so sorry"


def test_numbers_are_never_escaped(predictor, tmp_path):
    src = tmp_path / "in.jsonl"
    record = {
        "seeker_post": "a",
        "response_post": "b",
        "int": -3,
        "float": -0.5,
        "text": "-3",
        "formula": "-A1",
    }
    src.write_text(json.dumps(record) + "\n", encoding="utf-8")
    summary = predict_file(predictor, src, tmp_path / "out.csv", output_format="csv", progress=False)
    (row,) = read_csv_rows(tmp_path / "out.csv")
    assert (row["int"], row["float"], row["text"], row["formula"]) == ("-3", "-0.5", "-3", "'-A1")
    assert summary.formulas_escaped == 1


def test_csv_formulas_option_reaches_the_output(predictor, ckpts, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,seeker_post,response_post\n=1+1,hello,fine\n", encoding="utf-8")
    with pytest.raises(ValueError, match="csv_formulas must be one of escape, keep"):
        predict_file(predictor, src, tmp_path / "x.csv", csv_formulas="strip", progress=False)
    for option, expected in (("keep", "=1+1"), ("escape", "'=1+1")):
        out = tmp_path / f"{option}.csv"
        cfg = compose_cfg(
            "predict",
            [
                f"input={src}",
                f"output={out}",
                f"models.ER={ckpts['ER']}",
                f"csv_formulas={option}",
                "progress=false",
            ],
            tmp_path,
            tmp_path,
        )
        predict_from_config(cfg)
        assert read_csv_rows(out)[0]["id"] == expected


def test_empty_input_gives_a_header_only_output(predictor, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,seeker_post,response_post\n", encoding="utf-8")
    summary = predict_file(predictor, src, tmp_path / "out.csv", progress=False)
    assert summary.rows == 0
    assert (
        (tmp_path / "out.csv")
        .read_text(encoding="utf-8")
        .splitlines()[0]
        .startswith("id,seeker_post,response_post,ER_level")
    )


# ------------------------------------------------------------------------------- agreement with evaluate


def _module_predictions(cfg: DictConfig, ckpt: str):
    """Levels and probabilities of the test split as EmpathyModule computes them (seeker cache)."""
    module = EmpathyModule.from_checkpoint(ckpt)
    datamodule = runner.build_datamodule(
        cfg, data_overrides=module.hparams["data_config"], mechanisms=module.mechanisms
    )
    datamodule.setup()
    module.eval()
    module.build_seeker_cache(datamodule.seeker_dataloader())
    dataset = datamodule.dataset("test")
    levels = np.zeros(len(dataset), dtype=np.int64)
    probs = np.zeros((len(dataset), 3), dtype=np.float32)
    with torch.no_grad():
        for batch in datamodule.split_dataloader("test"):
            (mechanism,) = module.mechanisms
            logits = module(batch)[mechanism].level_logits.float()
            levels[batch["index"].numpy()] = logits.argmax(-1).numpy()
            probs[batch["index"].numpy()] = torch.softmax(logits, -1).numpy()
    return dataset, levels, probs


def test_cli_predictions_reproduce_evaluate_metrics(trained, ckpts, tmp_path):
    rows: dict[tuple[str, str], dict] = {}
    expected = {}
    for m, (cfg, _) in trained.items():
        dataset, levels, probs = _module_predictions(cfg, ckpts[m])
        expected[m] = (levels, probs)
        for k, r in enumerate(dataset):
            row = rows.setdefault(
                (r["sp_id"], r["rp_id"]),
                {
                    "id": f"{r['sp_id']}/{r['rp_id']}",
                    "seeker_post": r["seeker_post"],
                    "response_post": r["response_post"],
                },
            )
            row[f"gold_{m}"], row[f"index_{m}"] = r[f"level_{m}"], k
    src = tmp_path / "test_rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows.values()), encoding="utf-8")
    out = tmp_path / "scored.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "empathy.predict",
            f"input={src}",
            f"output={out}",
            f"models.ER={ckpts['ER']}",
            f"models.IP={ckpts['IP']}",
            "precision=32",
            "progress=false",
            "threads=1",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "predict_summary.json").exists()
    scored = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in scored] == [r["id"] for r in rows.values()]
    for m, (cfg, _) in trained.items():
        mine = [r for r in scored if f"gold_{m}" in r]
        order = np.array([r[f"index_{m}"] for r in mine])
        levels, probs = expected[m]
        predicted = np.array([r[f"{m}_level"] for r in mine])
        assert np.array_equal(predicted, levels[order])
        assert np.allclose([[r[f"{m}_prob{c}"] for c in range(3)] for r in mine], probs[order], atol=1e-5)
        metric = level_metrics()
        metric.update(torch.as_tensor(predicted), torch.as_tensor([r[f"gold_{m}"] for r in mine]))
        values = metric.compute()
        eval_cfg = compose_cfg(
            "evaluate",
            [
                f"ckpt_path={ckpts[m]}",
                "split=test",
                "trainer.precision=32-true",
                "++trainer.enable_progress_bar=false",
            ],
            Path(cfg.paths.data_dir),
            tmp_path,
        )
        with open_dict(eval_cfg):
            eval_cfg.paths.cache_dir = cfg.paths.cache_dir
        metrics = evaluate(eval_cfg, tmp_path)
        assert float(values["acc"]) == pytest.approx(metrics[f"test/{m}/acc"], abs=1e-6)
        assert float(values["macro_f1"]) == pytest.approx(metrics[f"test/{m}/macro_f1"], abs=1e-6)


# ------------------------------------------------------------------------------- precision
def test_auto_precision_follows_what_the_machine_computes_fast(monkeypatch):
    from empathy import hardware, runner
    from empathy.predict.predictor import autocast_dtype

    cpu = torch.device("cpu")
    for native, dtype, trainer in ((True, torch.bfloat16, "bf16-mixed"), (False, None, "32-true")):
        monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda native=native: native)
        assert autocast_dtype("auto", cpu) is dtype
        assert runner.training_precision("auto", "cpu") == trainer
    assert autocast_dtype("32", cpu) is None and autocast_dtype("bf16", cpu) is torch.bfloat16
    assert runner.training_precision("32-true", "cpu") == "32-true"


def test_bf16_and_fp32_give_the_same_levels_on_real_rows(real_data_dir):
    """bf16 autocast (what precision=auto picks on a CPU with native bf16, and on GPUs) decides the
    same levels as fp32 on real rows, on at least 99% of them (packaged MiniLM, random heads; a
    trained model: scripts/bench_precision.py, docs/benchmarks.md)."""
    from empathy.models.checkpoint import random_heads_model

    model = random_heads_model({"name": "minilm", "path": "packaged:all-MiniLM-L6-v2"}, ["ER", "IP", "EX"])
    with (real_data_dir / "emotional-reactions-reddit.csv").open(encoding="utf-8", newline="") as f:
        rows = [(r["seeker_post"], r["response_post"]) for r in csv.DictReader(f)][:200]
    seekers, responses = zip(*rows, strict=True)
    fp32 = EmpathyPredictor({"joint": model}, precision="32").predict(seekers, responses)
    bf16 = EmpathyPredictor({"joint": model}, precision="bf16").predict(seekers, responses)
    for m in fp32:
        assert (fp32[m].levels == bf16[m].levels).mean() >= 0.99, m
        assert np.abs(fp32[m].probs - bf16[m].probs).max() < 0.02, m


def test_a_response_predicted_at_level_0_has_no_rationale(ckpts):
    """A rationale is the evidence for a predicted level above 0, as in the gold data: even a head
    that marks every token gives no span to a row decided at level 0."""
    model = load_model(ckpts["ER"], "ER")
    head = model.net.heads["ER"].rationale_head[-1]
    with torch.no_grad():  # a rationale head that marks every token
        head.weight.zero_()
        head.bias.copy_(torch.tensor([-5.0, 5.0]))
    seekers, responses = zip(*PAIRS, strict=True)
    model.hparams["level_offsets"] = {"ER": [-50.0, -50.0]}  # every row decided at level 0
    zero = EmpathyPredictor({"ER": model}, precision="32").predict(seekers, responses)["ER"]
    assert (zero.levels == 0).all() and all(spans == [] for spans in zero.rationales)
    model.hparams["level_offsets"] = {"ER": [50.0, 0.0]}  # every row at level 1
    one = EmpathyPredictor({"ER": model}, precision="32").predict(seekers, responses)["ER"]
    assert (one.levels == 1).all() and all(spans for spans in one.rationales)
