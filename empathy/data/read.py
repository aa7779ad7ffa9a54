"""Read and validate one raw EPITOME CSV (``sp_id, rp_id, seeker_post, response_post, level, rationales``).

Every problem with the file is a :class:`DataError` that names the file, the row (1-based data row
and the line where it starts), the column and what was expected. Duplicate ``(sp_id, rp_id)`` rows
are never resolved silently: identical copies are merged, conflicting ones are resolved by
``on_conflict`` and everything is recorded in the :class:`ReadReport`.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

COLUMNS = ("sp_id", "rp_id", "seeker_post", "response_post", "level", "rationales")
LEVELS = (0, 1, 2)
ON_CONFLICT = ("drop", "first", "error")
RATIONALE_SEPARATOR = "|"


class DataError(ValueError):
    """A raw data file that does not hold what the pipeline expects."""

    def __init__(
        self,
        path: str | Path,
        message: str,
        *,
        row: int | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.path = str(path)
        self.row = row
        self.line = line
        self.column = column
        where = [f"{self.path}"]
        if row is not None:
            where.append(f"row {row}" + (f" (line {line})" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}")


@dataclass(frozen=True)
class Example:
    """One (seeker post, response post) pair with its level and rationale pieces."""

    sp_id: str
    rp_id: str
    seeker_post: str
    response_post: str
    level: int
    rationales: tuple[str, ...]
    row: int  # 1-based data row (the header is not counted) of the copy that was kept

    @property
    def key(self) -> tuple[str, str]:
        return (self.sp_id, self.rp_id)


@dataclass
class ReadReport:
    """What reading one file found and did."""

    path: str
    rows_read: int = 0
    # Identical copies of a (sp_id, rp_id) row that were merged into the first one.
    duplicates_merged: list[dict] = field(default_factory=list)
    # Keys whose copies disagree: {"sp_id", "rp_id", "rows", "fields", "resolution"}.
    conflicts: list[dict] = field(default_factory=list)
    # Rows that were not kept: {"row", "sp_id", "rp_id", "reason"}.
    rows_dropped: list[dict] = field(default_factory=list)
    rows_kept: int = 0

    @property
    def n_duplicates_merged(self) -> int:
        """Rows merged into an identical earlier copy."""
        return sum(len(d["rows"]) - 1 for d in self.duplicates_merged)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "duplicate_rows_merged": self.n_duplicates_merged,
            "duplicates_merged": self.duplicates_merged,
            "conflicting_keys": len(self.conflicts),
            "conflicts": self.conflicts,
            "rows_dropped": len(self.rows_dropped),
            "dropped": self.rows_dropped,
        }


def check_unique_columns(path: str | Path, names: Sequence[str], *, line: int | None = 1) -> None:
    """Raise a :class:`DataError` naming every column name that appears more than once, with its
    1-based positions: a reader keyed by name would keep only one of their values."""
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(names, start=1):
        positions.setdefault(name, []).append(i)
    repeated = {name: where for name, where in positions.items() if len(where) > 1}
    if repeated:
        listed = ", ".join(
            f"{name!r} (columns {', '.join(map(str, where[:-1]))} and {where[-1]})" for name, where in repeated.items()
        )
        raise DataError(
            path,
            f"duplicate column names: {listed}; expected each column name once",
            line=line,
            column=next(iter(repeated)),
        )


def split_rationales(text: str) -> tuple[str, ...]:
    """``"a | b||"`` -> ``("a", "b")``: split on ``|``, strip, drop empty pieces."""
    return tuple(p.strip() for p in text.split(RATIONALE_SEPARATOR) if p.strip())


def _decode(path: Path, data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    # surrogateescape keeps undecodable bytes as lone surrogates, so that the row holding them can
    # be named once the CSV structure is known.
    return data.decode("utf-8", errors="surrogateescape")


def _has_undecodable(text: str) -> int | None:
    """Index of the first byte that was not UTF-8 (a lone surrogate), or None."""
    for i, ch in enumerate(text):
        if "\udc80" <= ch <= "\udcff":
            return i
    return None


def _records(path: Path, text: str) -> Iterator[tuple[int, int, list[str]]]:
    """(data row, first line, fields) for each CSV record after the header."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        prev_line = reader.line_num
        row = 0
        for fields in reader:
            start = prev_line + 1
            prev_line = reader.line_num
            if row == 0:
                row = 1
                yield 0, start, fields
                continue
            if not fields or (len(fields) == 1 and fields[0] == ""):
                continue  # a blank line
            yield row, start, fields
            row += 1
    except csv.Error as err:
        raise DataError(
            path,
            f"malformed CSV ({err}); expected quoted fields closed by a double quote",
            line=reader.line_num,
        ) from err


def _parse_level(path: Path, value: str, row: int, line: int) -> int:
    try:
        level = int(value.strip())
    except ValueError:
        level = None
    if level not in LEVELS:
        raise DataError(
            path,
            f"level {value!r} is not one of {', '.join(map(str, LEVELS))}",
            row=row,
            line=line,
            column="level",
        )
    return level


def read_epitome_csv(
    path: str | Path, *, on_conflict: str = "drop", unescape_html: bool = True
) -> tuple[list[Example], ReadReport]:
    """Read one EPITOME CSV into validated :class:`Example` rows (file order) and a report.

    Duplicate ``(sp_id, rp_id)`` rows: identical copies are merged; copies that differ only in
    their rationales are merged with the union of their rationale pieces (the level agrees);
    ``on_conflict`` resolves copies whose level or posts disagree: ``drop`` every copy (default),
    keep the ``first``, or raise (``error``). Every merge and drop is recorded in the report.
    ``unescape_html`` decodes HTML entities (``&amp;``, ``&gt;``, ...) in posts and rationales.
    """
    if on_conflict not in ON_CONFLICT:
        raise ValueError(f"on_conflict must be one of {ON_CONFLICT}, got {on_conflict!r}")
    path = Path(path)
    text = _decode(path, path.read_bytes())
    report = ReadReport(path=str(path))

    records = _records(path, text)
    try:
        _, _, header = next(records)
    except StopIteration:
        raise DataError(path, f"the file is empty; expected a header {','.join(COLUMNS)}", line=1) from None
    header = [h.strip() for h in header]
    check_unique_columns(path, header)
    for column in COLUMNS:
        if column not in header:
            raise DataError(
                path,
                f"missing column; expected a header with {','.join(COLUMNS)}, found {','.join(header)}",
                row=None,
                line=1,
                column=column,
            )
    index = {c: header.index(c) for c in COLUMNS}

    clean = html.unescape if unescape_html else (lambda s: s)
    copies: dict[tuple[str, str], list[Example]] = {}
    for row, line, fields in records:
        report.rows_read += 1
        if len(fields) != len(header):
            raise DataError(
                path,
                f"found {len(fields)} fields; expected {len(header)} ({','.join(header)}): "
                "is a field with a comma or a line break not quoted?",
                row=row,
                line=line,
            )
        for column, i in index.items():
            if _has_undecodable(fields[i]) is not None:
                raise DataError(
                    path,
                    "bytes that are not valid UTF-8; expected a UTF-8 encoded file",
                    row=row,
                    line=line,
                    column=column,
                )
        values = {c: fields[i] for c, i in index.items()}
        for column in ("sp_id", "rp_id", "seeker_post", "response_post"):
            if not values[column].strip():
                raise DataError(path, "empty value; expected non-empty text", row=row, line=line, column=column)
        example = Example(
            sp_id=values["sp_id"].strip(),
            rp_id=values["rp_id"].strip(),
            seeker_post=clean(values["seeker_post"]),
            response_post=clean(values["response_post"]),
            level=_parse_level(path, values["level"], row, line),
            rationales=split_rationales(clean(values["rationales"])),
            row=row,
        )
        copies.setdefault(example.key, []).append(example)

    kept: list[Example] = []
    for (sp_id, rp_id), group in copies.items():
        first = group[0]
        if len(group) == 1:
            kept.append(first)
            continue
        rows = [e.row for e in group]
        differing = sorted(
            {
                f
                for e in group[1:]
                for f in ("level", "rationales", "seeker_post", "response_post")
                if getattr(e, f) != getattr(first, f)
            }
        )
        if not differing:
            report.duplicates_merged.append({"sp_id": sp_id, "rp_id": rp_id, "rows": rows})
            kept.append(first)
            continue
        if differing == ["rationales"]:
            # Same pair, same level, annotators marked different rationales: keep every piece.
            pieces = tuple(dict.fromkeys(p for e in group for p in e.rationales))
            report.duplicates_merged.append(
                {"sp_id": sp_id, "rp_id": rp_id, "rows": rows, "rationales_merged": len(pieces)}
            )
            kept.append(replace(first, rationales=pieces))
            continue
        if on_conflict == "error":
            raise DataError(
                path,
                f"(sp_id, rp_id) = ({sp_id}, {rp_id}) appears in rows {rows} with different "
                f"{', '.join(differing)}; expected one value (or set on_conflict to drop or first)",
                row=group[1].row,
                column=differing[0],
            )
        report.conflicts.append(
            {
                "sp_id": sp_id,
                "rp_id": rp_id,
                "rows": rows,
                "fields": differing,
                "resolution": on_conflict,
            }
        )
        reason = f"conflicting duplicate of ({sp_id}, {rp_id}): {', '.join(differing)} differ in rows {rows}"
        if on_conflict == "first":
            kept.append(first)
            dropped = group[1:]
        else:
            dropped = group
        for e in dropped:
            report.rows_dropped.append({"row": e.row, "sp_id": sp_id, "rp_id": rp_id, "reason": reason})
    kept.sort(key=lambda e: e.row)
    report.rows_kept = len(kept)
    return kept, report
