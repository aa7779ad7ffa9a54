"""Score a file of (seeker post, response post) pairs: streaming CSV / JSONL / Parquet in and out.

The input is read in chunks (``chunk_rows``) so that memory stays bounded whatever the file's
size: CSV with the ``csv`` module (every cell kept as the exact text it was), JSONL line by line,
Parquet by record batches (pyarrow). Every input column is carried through unchanged; for each
mechanism M the output gains ``M_level``, ``M_prob0``, ``M_prob1``, ``M_prob2`` and
``M_rationale`` (the predicted rationale spans of the response joined with ``|``, like the
dataset's ``rationales`` column). Rows keep their order and number (blank lines of a CSV or JSONL
file are not rows). A CSV header or Parquet schema that names a column twice stops the run
before any row is read (a record keyed by name would keep one of the two values).

A bad row (a post that is missing, not text, empty, or longer than ``max_chars``; a JSONL line
that is not a JSON object or repeats a key; a CSV record with the wrong number of fields) stops
the run with an error naming the file, the row and the column (``on_bad_row="error"``), or is
written with empty predictions and its reason in an ``error`` column (``on_bad_row="mark"``),
and counted. A marked JSONL line with a repeated key is written with the last value of that key
(what any JSON reader keeps); its ``error`` names the key.

Spreadsheets run a CSV cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return as a formula, and the posts and rationales are text written by anyone. With
``csv_formulas="escape"`` (the default) such a text cell of a CSV output, carried-through input
cells, header names and the rationale and error columns alike, is written with a leading ``'``,
which spreadsheets show as text (the OWASP recommendation); the summary counts them. A plain
number (``-3``, ``+0.5``, ``-1e-5``) and the levels and probabilities are never escaped.
``csv_formulas="keep"`` writes every cell verbatim, for programs that read the CSV. JSONL and
Parquet outputs are always verbatim.

The output is written to a temporary file in the output's folder and moved into place at the
end: a failed run leaves no partial file, and an existing output is only replaced with
``overwrite=True``. A run killed before it can clean up (``kill -9``) leaves its temporary
``.<output name>.<host>.<pid>.<random>.tmp`` beside the output; the next run writing the same
output on that host removes it (see :mod:`empathy.io`).
"""

from __future__ import annotations

import csv
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from empathy import MECHANISMS
from empathy.data.read import DataError, check_unique_columns
from empathy.io import atomic_output
from empathy.predict.predictor import EmpathyPredictor, MechanismPredictions

EXTENSIONS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
FORMATS = ("csv", "jsonl", "parquet")
ON_BAD_ROW = ("error", "mark")
CSV_FORMULAS = ("escape", "keep")
# Cells a spreadsheet may run as a formula (OWASP, "CSV Injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A plain number ("-3", "+0.5", "-1e-5") starts with a sign but is no formula: never escaped.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
PREDICTION_FIELDS = ("level", "prob0", "prob1", "prob2", "rationale")
ERROR_COLUMN = "error"
RATIONALE_SEPARATOR = "|"
_MISSING = object()


def file_format(path: str | Path, option: str | None = None) -> str:
    """``option`` when given, else the format named by the file's extension."""
    if option:
        if option not in FORMATS:
            raise ValueError(f"format {option!r} is not one of {', '.join(FORMATS)}")
        return option
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        raise ValueError(
            f"{path}: cannot tell the format from the extension {suffix!r}; expected one of {', '.join(EXTENSIONS)}"
        )
    return EXTENSIONS[suffix]


def prediction_columns(mechanisms: Sequence[str]) -> list[str]:
    return [f"{m}_{name}" for m in MECHANISMS if m in mechanisms for name in PREDICTION_FIELDS]


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------


@dataclass
class Chunk:
    """Consecutive input rows: their posts, their read problems and their native form."""

    kind: str  # the input format
    start: int  # 0-based index of the first row in the file
    seekers: list[Any]
    responses: list[Any]
    # (kind, message, column) of a problem found while reading, per row
    problems: list[tuple[str, str, str | None] | None]
    lines: list[int | None]  # 1-based line where each row starts (None: not known)
    data: Any  # csv: list of field lists; jsonl: list of dicts; parquet: pyarrow Table
    header: list[str] | None = None

    def __len__(self) -> int:
        return len(self.seekers)

    def records(self) -> list[dict]:
        if self.kind == "csv":
            return [dict(zip(self.header, row, strict=True)) for row in self.data]
        if self.kind == "jsonl":
            return [dict(r) for r in self.data]
        return self.data.to_pylist()

    def table(self):
        import pyarrow as pa

        if self.kind == "parquet":
            return self.data
        if self.kind == "csv":
            columns = list(zip(*self.data, strict=True)) if self.data else [() for _ in self.header]
            return pa.table({h: pa.array(list(c), type=pa.string()) for h, c in zip(self.header, columns, strict=True)})
        return pa.Table.from_pylist(self.records())


@contextmanager
def _csv_field_limit():
    """Let the csv module read long fields: ``max_chars`` decides what is too long."""
    old = csv.field_size_limit()
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            break
        except OverflowError:
            limit //= 2
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _undecodable(text: str) -> bool:
    """Whether the text holds bytes that were not UTF-8 (kept as lone surrogates on reading)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _missing_column(path: Path, column: str, option: str, found: Sequence[str]) -> DataError:
    return DataError(
        path,
        f"missing column; expected a column {column!r} ({option}=...), found {', '.join(map(str, found))}",
        line=1 if path.suffix.lower() == ".csv" else None,
        column=column,
    )


def read_csv_chunks(path: Path, seeker: str, response: str, chunk_rows: int) -> Iterator[Chunk]:
    with (
        _csv_field_limit(),
        path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as f,
    ):
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(
                path, f"the file is empty; expected a header with {seeker} and {response}", line=1
            ) from None
        except csv.Error as err:
            raise DataError(path, f"malformed CSV header ({err})", line=1) from err
        check_unique_columns(path, header)
        for column, option in ((seeker, "columns.seeker"), (response, "columns.response")):
            if column not in header:
                raise _missing_column(path, column, option, header)
        s_col, r_col = header.index(seeker), header.index(response)
        width = len(header)
        chunk = Chunk("csv", 0, [], [], [], [], [], header)
        row = 0
        prev_line = reader.line_num
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                raise DataError(
                    path,
                    f"malformed CSV ({err}); expected fields quoted with a double quote",
                    row=row + 1,
                    line=prev_line + 1,
                ) from err
            line, prev_line = prev_line + 1, reader.line_num
            if not fields:
                continue  # a blank line is not a row
            problem = None
            if len(fields) != width:
                problem = (
                    "wrong number of fields",
                    f"found {len(fields)} fields; expected {width} "
                    f"({','.join(header)}): is a field with a comma or a line break not quoted?",
                    None,
                )
                fields = (fields + [""] * width)[:width] if len(fields) < width else fields[:width]
            chunk.seekers.append(fields[s_col])
            chunk.responses.append(fields[r_col])
            chunk.problems.append(problem)
            chunk.lines.append(line)
            chunk.data.append(fields)
            row += 1
            if len(chunk) >= chunk_rows:
                yield chunk
                chunk = Chunk("csv", row, [], [], [], [], [], header)
        if len(chunk) or row == 0:
            yield chunk


def _parse_json(line: str) -> tuple[Any, list[str], list[str]]:
    """``json.loads``, plus the keys that appear more than once in the top-level object and in
    objects nested in it: json.loads keeps the last value of a repeated key and drops the others."""
    repeated: list[list[str]] = []  # per object, inner objects first: the top-level one is last

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict:
        record = dict(pairs)
        if len(record) < len(pairs):
            counts = Counter(key for key, _ in pairs)
            repeated.append([key for key, n in counts.items() if n > 1])
        else:
            repeated.append([])
        return record

    value = json.loads(line, object_pairs_hook=pairs_hook)
    top = repeated.pop() if isinstance(value, dict) else []
    return value, top, [key for keys in repeated for key in keys]


def read_jsonl_chunks(path: Path, seeker: str, response: str, chunk_rows: int) -> Iterator[Chunk]:
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape") as f:
        chunk = Chunk("jsonl", 0, [], [], [], [], [])
        row = 0
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            problem = None
            try:
                record, repeated, nested = _parse_json(line)
            except ValueError as err:
                record = {}
                problem = ("invalid JSON", f"not valid JSON ({err}); expected a JSON object", None)
            else:
                if not isinstance(record, dict):
                    found = type(record).__name__
                    record = {}
                    problem = ("not a JSON object", f"expected a JSON object, found {found}", None)
                elif repeated or nested:
                    # Written as read (the last value of each key) if marked: the message names the key.
                    key = (repeated or nested)[0]
                    where = "" if repeated else " in a nested object"
                    problem = (
                        "duplicate key",
                        f"duplicate key {key!r}{where}: only its last value would be kept; expected each key once",
                        key if repeated else None,
                    )
            chunk.seekers.append(record.get(seeker, _MISSING))
            chunk.responses.append(record.get(response, _MISSING))
            chunk.problems.append(problem)
            chunk.lines.append(line_no)
            chunk.data.append(record)
            row += 1
            if len(chunk) >= chunk_rows:
                yield chunk
                chunk = Chunk("jsonl", row, [], [], [], [], [])
        if len(chunk) or row == 0:
            yield chunk


def read_parquet_chunks(path: Path, seeker: str, response: str, chunk_rows: int) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as parquet:
        names = parquet.schema_arrow.names
        check_unique_columns(path, names, line=None)
        for column, option in ((seeker, "columns.seeker"), (response, "columns.response")):
            if column not in names:
                raise _missing_column(path, column, option, names)
        row = 0
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            table = pa.Table.from_batches([batch])
            n = table.num_rows
            yield Chunk(
                "parquet",
                row,
                table.column(seeker).to_pylist(),
                table.column(response).to_pylist(),
                [None] * n,
                [None] * n,
                table,
            )
            row += n
        if row == 0:
            yield Chunk("parquet", 0, [], [], [], [], parquet.schema_arrow.empty_table())


READERS = {"csv": read_csv_chunks, "jsonl": read_jsonl_chunks, "parquet": read_parquet_chunks}


def count_rows(path: Path, kind: str) -> int | None:
    """The number of rows (for the progress bar's ETA): exact, by a quick pass over the file."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="" if kind == "csv" else None) as f:
        if kind == "jsonl":
            return sum(1 for line in f if line.strip())
        with _csv_field_limit():
            try:
                return max(0, sum(1 for fields in csv.reader(f) if fields) - 1)
            except csv.Error:
                return None  # the real pass reports it


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------


def post_problem(value: Any, max_chars: int | None) -> tuple[str, str] | None:
    """Why a post cannot be scored, as (kind, message), or None."""
    if value is _MISSING:
        return "missing field", "the row has no such field"
    if value is None:
        return "missing value", "missing value (null)"
    if not isinstance(value, str):
        return "not text", f"not text ({type(value).__name__} {value!r:.40})"
    if not value.strip():
        return "empty post", "empty post" if not value else "empty post (whitespace only)"
    if _undecodable(value):
        return "not UTF-8", "bytes that are not valid UTF-8"
    if max_chars is not None and len(value) > max_chars:
        return "over max_chars", f"{len(value)} characters, over max_chars={max_chars}"
    return None


def chunk_problems(
    chunk: Chunk, seeker: str, response: str, max_chars: int | None
) -> list[tuple[str, str, str | None] | None]:
    """Per row of the chunk: (kind, message, column) of its first problem, or None."""
    expected = "expected non-empty text" + (f" of at most {max_chars} characters" if max_chars is not None else "")
    out: list[tuple[str, str, str | None] | None] = []
    for k in range(len(chunk)):
        problem = chunk.problems[k]
        if problem is None:
            for column, value in ((seeker, chunk.seekers[k]), (response, chunk.responses[k])):
                found = post_problem(value, max_chars)
                if found is not None:
                    problem = (found[0], f"{found[1]}; {expected}", column)
                    break
        out.append(problem)
    return out


def row_error(path: Path, chunk: Chunk, k: int, problem: tuple[str, str, str | None], hint: str = "") -> DataError:
    return DataError(path, problem[1] + hint, row=chunk.start + k + 1, line=chunk.lines[k], column=problem[2])


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


class CsvWriter:
    """CSV output; with ``formulas="escape"``, text cells that a spreadsheet would run as a formula
    get a leading ``'`` (counted in ``escaped``). Numbers are written as they are."""

    def __init__(self, path: Path, formulas: str = "escape") -> None:
        self.file = path.open("w", encoding="utf-8", errors="surrogateescape", newline="")
        self.writer = csv.writer(self.file)
        self.header: list[str] | None = None
        self.escape = formulas == "escape"
        self.escaped = 0

    def _escape_formulas(self, cells: list[Any]) -> list[str]:
        out = []
        for value in cells:
            if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
                self.escaped += 1
                value = "'" + value
            out.append(_cell(value))
        return out

    def writerow(self, cells: list[Any]) -> None:
        self.writer.writerow(self._escape_formulas(cells) if self.escape else [_cell(v) for v in cells])

    def write(self, chunk: Chunk, columns: dict[str, list]) -> None:
        if chunk.kind == "csv":
            header, rows = list(chunk.header), chunk.data
        else:
            records = chunk.records()
            if self.header is None:
                keys: dict[str, None] = {}
                for r in records:
                    keys.update(dict.fromkeys(r))
                header = list(keys)
            else:
                header = self.header[: len(self.header) - len(columns)]
            for r in records:
                extra = set(r) - set(header)
                if extra:
                    raise ValueError(
                        f"keys {sorted(extra)} first appear after the CSV header was written; "
                        "write JSONL (output_format=jsonl) or give every record the same keys"
                    )
            rows = [[r.get(h) for h in header] for r in records]
        if self.header is None:
            self.header = header + list(columns)
            self.writerow(self.header)
        values = list(columns.values())
        for k, row in enumerate(rows):
            self.writerow([*row, *(col[k] for col in values)])

    def close(self) -> None:
        self.file.close()


class JsonlWriter:
    def __init__(self, path: Path) -> None:
        self.file = path.open("w", encoding="utf-8", errors="surrogateescape")

    def write(self, chunk: Chunk, columns: dict[str, list]) -> None:
        names = list(columns)
        for k, record in enumerate(chunk.records()):
            record.update({name: columns[name][k] for name in names})
            self.file.write(json.dumps(record, ensure_ascii=False, default=str))
            self.file.write("\n")

    def close(self) -> None:
        self.file.close()


class ParquetWriter:
    TYPES = {
        "level": "int64",
        "prob0": "float32",
        "prob1": "float32",
        "prob2": "float32",
        "rationale": "string",
    }

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer = None

    def write(self, chunk: Chunk, columns: dict[str, list]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = chunk.table()
        for name, values in columns.items():
            kind = "string" if name == ERROR_COLUMN else self.TYPES[name.split("_", 1)[1]]
            table = table.append_column(name, pa.array(values, type=pa.type_for_alias(kind)))
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        elif table.schema != self.writer.schema:
            try:
                table = table.cast(self.writer.schema)
            except (pa.ArrowInvalid, ValueError) as err:
                raise ValueError(
                    f"rows {chunk.start + 1}-{chunk.start + len(chunk)} have other column types than "
                    f"the first rows ({err}); write CSV or JSONL instead (output_format=...)"
                ) from err
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


WRITERS = {"csv": CsvWriter, "jsonl": JsonlWriter, "parquet": ParquetWriter}


# ---------------------------------------------------------------------------------------
# the whole file
# ---------------------------------------------------------------------------------------


@dataclass
class PredictSummary:
    input: str
    output: str
    input_format: str
    output_format: str
    mechanisms: list[str]
    rows: int = 0
    bad_rows: int = 0
    bad_reasons: dict[str, int] = field(default_factory=dict)
    first_bad_rows: list[str] = field(default_factory=list)
    # CSV cells that start like a formula and were written with a leading ' (csv_formulas=escape).
    formulas_escaped: int = 0
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**self.__dict__, "rows_per_second": round(self.rows_per_second, 2)}

    def message(self) -> str:
        text = (
            f"scored {self.rows - self.bad_rows} of {self.rows} rows ({', '.join(self.mechanisms)}) "
            f"in {self.seconds:.1f} s ({self.rows_per_second:.1f} rows/s) -> {self.output}"
        )
        if self.bad_rows:
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.bad_reasons.items()))
            text += f"\n{self.bad_rows} bad rows marked in the '{ERROR_COLUMN}' column ({reasons})"
        if self.formulas_escaped:
            text += (
                f"\n{self.formulas_escaped} cells starting with =, +, -, @, a tab or a carriage return "
                "were written with a leading ' so that spreadsheets show them as text "
                "(csv_formulas=keep writes them verbatim)"
            )
        return text


def _columns(
    n: int, good: list[int], preds: dict[str, MechanismPredictions], errors: list[str | None] | None
) -> dict[str, list]:
    columns: dict[str, list] = {}
    for m, p in preds.items():
        for name in PREDICTION_FIELDS:
            columns[f"{m}_{name}"] = [None] * n
        texts = p.rationale_texts(RATIONALE_SEPARATOR)
        levels, probs = p.levels.tolist(), p.probs.tolist()
        for j, k in enumerate(good):
            columns[f"{m}_level"][k] = levels[j]
            for c in range(3):
                columns[f"{m}_prob{c}"][k] = probs[j][c]
            columns[f"{m}_rationale"][k] = texts[j]
    if errors is not None:
        columns[ERROR_COLUMN] = errors
    return columns


def _check_clashes(path: Path, names: Sequence[str], new: Sequence[str]) -> None:
    clash = [c for c in new if c in names]
    if clash:
        raise DataError(
            path,
            f"the input already has column(s) {', '.join(clash)}, which the output adds; "
            "rename them (or score the original file)",
            column=clash[0],
        )


def predict_file(
    predictor: EmpathyPredictor,
    input_path: str | Path,
    output_path: str | Path,
    *,
    seeker_column: str = "seeker_post",
    response_column: str = "response_post",
    output_format: str | None = None,
    overwrite: bool = False,
    on_bad_row: str = "error",
    csv_formulas: str = "escape",
    max_chars: int | None = 40000,
    chunk_rows: int = 10000,
    progress: bool = True,
) -> PredictSummary:
    """Score every row of ``input_path`` and write ``output_path`` (see the module docstring)."""
    from tqdm.auto import tqdm

    input_path, output_path = Path(input_path), Path(output_path)
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {', '.join(ON_BAD_ROW)}, not {on_bad_row!r}")
    if csv_formulas not in CSV_FORMULAS:
        raise ValueError(f"csv_formulas must be one of {', '.join(CSV_FORMULAS)}, not {csv_formulas!r}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if not input_path.is_file():
        raise FileNotFoundError(f"input file {input_path} does not exist")
    kind = file_format(input_path)
    out_kind = file_format(output_path, output_format or kind)
    suffix_kind = EXTENSIONS.get(output_path.suffix.lower())
    if suffix_kind is not None and suffix_kind != out_kind:
        raise ValueError(
            f"output {output_path} has a {suffix_kind} extension, but the output format is {out_kind}"
            + ("" if output_format else " (the input's)")
            + f"; set output_format={suffix_kind} or rename it"
        )
    if output_path.resolve() == input_path.resolve() and not overwrite:
        raise FileExistsError(f"{output_path} is the input file; pass overwrite=true to replace it")
    if output_path.exists() and not overwrite:
        raise FileExistsError(f"{output_path} exists; pass overwrite=true to replace it")

    added = prediction_columns(predictor.mechanisms) + ([ERROR_COLUMN] if on_bad_row == "mark" else [])
    summary = PredictSummary(str(input_path), str(output_path), kind, out_kind, list(predictor.mechanisms))
    reasons: Counter[str] = Counter()
    started = time.perf_counter()
    total = count_rows(input_path, kind) if progress else None
    bar = tqdm(total=total, unit="rows", disable=not progress, desc="predict", smoothing=0.05)
    try:
        with atomic_output(output_path, overwrite) as tmp:
            writer = CsvWriter(tmp, csv_formulas) if out_kind == "csv" else WRITERS[out_kind](tmp)
            chunks = READERS[kind](input_path, seeker_column, response_column, chunk_rows)
            try:
                for chunk in chunks:
                    if chunk.kind == "jsonl":
                        for record in chunk.data:
                            _check_clashes(input_path, list(record), added)
                    else:
                        _check_clashes(input_path, chunk.header or chunk.data.column_names, added)
                    problems = chunk_problems(chunk, seeker_column, response_column, max_chars)
                    bad = [k for k, p in enumerate(problems) if p is not None]
                    if bad and on_bad_row == "error":
                        raise row_error(
                            input_path,
                            chunk,
                            bad[0],
                            problems[bad[0]],
                            " (on_bad_row=mark writes such rows with an error column instead)",
                        )
                    errors = [
                        None if p is None else str(row_error(input_path, chunk, k, p)) for k, p in enumerate(problems)
                    ]
                    good = [k for k, p in enumerate(problems) if p is None]
                    preds = predictor.predict(
                        [chunk.seekers[k] for k in good],
                        [chunk.responses[k] for k in good],
                        progress=bar.update,
                    )
                    writer.write(
                        chunk,
                        _columns(len(chunk), good, preds, errors if on_bad_row == "mark" else None),
                    )
                    bar.update(len(bad))
                    summary.rows += len(chunk)
                    summary.bad_rows += len(bad)
                    for k in bad:
                        reasons[problems[k][0]] += 1
                        if len(summary.first_bad_rows) < 10:
                            summary.first_bad_rows.append(errors[k])
            finally:
                chunks.close()  # the input file, now rather than when the generator is collected
                writer.close()
            summary.formulas_escaped = getattr(writer, "escaped", 0)
    finally:
        bar.close()
    summary.bad_reasons = dict(reasons)
    summary.seconds = time.perf_counter() - started
    return summary
