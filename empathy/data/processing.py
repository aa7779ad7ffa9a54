"""One mechanism's CSV -> tokenized, aligned, split Hugging Face datasets, cached on disk.

``prepare_mechanism`` wires the pure functions of ``read``, ``align`` and ``split`` together and
caches the result (Arrow files written by ``DatasetDict.save_to_disk``) under a key made of
everything that determines it, so a second call loads it instead of tokenizing again and a changed
input never reuses a stale result.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from empathy.data.align import find_rationale_spans, rationale_labels, spans_beyond_truncation
from empathy.data.read import LEVELS, Example, read_epitome_csv
from empathy.data.split import (
    SPLITS,
    grouped_stratified_folds,
    grouped_stratified_split,
    read_split_csv,
    seeker_groups,
    splits_of,
    write_split_csv,
)

# Bump when the processing changes in a way that changes the datasets (invalidates every cache).
PIPELINE_VERSION = "3"
DATASET_DIR = "dataset"
SUMMARY_FILE = "summary.json"
SPLIT_CSV = "split.csv"
SPLIT_SCOPES = ("shared", "mechanism")
UNALIGNED_CSV = "unaligned_rationales.csv"
TOKENIZE_BATCH = 1000

FEATURES = datasets.Features(
    {
        "sp_id": datasets.Value("string"),
        "rp_id": datasets.Value("string"),
        "level": datasets.Value("int64"),
        "seeker_post": datasets.Value("string"),
        "response_post": datasets.Value("string"),
        "seeker_id": datasets.Value("int64"),
        "seeker_input_ids": datasets.Sequence(datasets.Value("int32")),
        "response_input_ids": datasets.Sequence(datasets.Value("int32")),
        "response_offsets": datasets.Sequence(datasets.Sequence(datasets.Value("int32"), length=2)),
        "response_mask": datasets.Sequence(datasets.Value("int8")),
        "rationale_strict": datasets.Sequence(datasets.Value("int8")),
        "rationale_paper": datasets.Sequence(datasets.Value("int8")),
        "rationale_unaligned": datasets.Value("int64"),
    }
)


@dataclass
class PreparedData:
    """The prepared splits of one mechanism and where their by-products are."""

    datasets: datasets.DatasetDict  # keys train / dev / test
    summary: dict
    split_csv: Path
    cache_path: Path
    unaligned_report: Path


def missing_data_message(csv_path: Path, mechanism: str) -> str:
    return (
        f"the {mechanism} data file {csv_path} does not exist. Set the folder holding the EPITOME "
        "CSVs with the environment variable EMPATHY_DATA_DIR or the option data.data_dir=..., or "
        "fetch the files into data/epitome-reddit with `python scripts/fetch_data.py` (they come "
        "from the dataset/ folder of the GitHub repository behavioral-data/Empathy-Mental-Health; "
        "see data/README.md)."
    )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_identity(tokenizer: Any) -> dict:
    """Class and a hash of the full tokenizer definition (vocabulary, normaliser, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer (offsets are needed)")
    return {
        "class": type(tokenizer).__name__,
        "sha256": hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest(),
    }


def cache_key(params: Mapping[str, Any]) -> str:
    text = json.dumps(params, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _tokenize(tokenizer: Any, texts: Sequence[str], max_len: int) -> dict[str, list]:
    out: dict[str, list] = {"input_ids": [], "offset_mapping": [], "special_tokens_mask": []}
    for i in range(0, len(texts), TOKENIZE_BATCH):
        enc = tokenizer(
            list(texts[i : i + TOKENIZE_BATCH]),
            truncation=True,
            max_length=max_len,
            padding=False,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        for k in out:
            out[k].extend(enc[k])
    return out


def build_rows(examples: Sequence[Example], tokenizer: Any, max_len: int) -> tuple[list[dict], list[dict], dict]:
    """Tokenize and align: one dataset row per example, the report of rationale pieces that lost
    tokens (unaligned or beyond ``max_len``), and counts of pieces."""
    seeker_index: dict[str, int] = {}
    for e in examples:
        seeker_index.setdefault(e.seeker_post, len(seeker_index))
    seeker_enc = _tokenize(tokenizer, list(seeker_index), max_len)
    response_enc = _tokenize(tokenizer, [e.response_post for e in examples], max_len)

    rows: list[dict] = []
    report: list[dict] = []
    counts = Counter()
    for k, e in enumerate(examples):
        offsets = [list(o) for o in response_enc["offset_mapping"][k]]
        mask = [1 - s for s in response_enc["special_tokens_mask"][k]]
        spans, unaligned = find_rationale_spans(e.response_post, e.rationales)
        partly, wholly = spans_beyond_truncation(e.response_post, offsets, mask, spans)
        counts["pieces"] += len(e.rationales)
        counts["aligned"] += len(spans)
        counts["unaligned"] += len(unaligned)
        counts["beyond_max_len_partly"] += len(partly)
        counts["beyond_max_len_wholly"] += len(wholly)
        counts["rows_with_rationale"] += bool(e.rationales)
        for piece in unaligned:
            report.append(
                {
                    "sp_id": e.sp_id,
                    "rp_id": e.rp_id,
                    "piece": piece,
                    "reason": "not found in the response (verbatim or after whitespace/case normalisation)",
                }
            )
        for kind, lost in (("partly", partly), ("wholly", wholly)):
            for s, t in lost:
                report.append(
                    {
                        "sp_id": e.sp_id,
                        "rp_id": e.rp_id,
                        "piece": e.response_post[s:t],
                        "reason": f"aligned, but {kind} beyond max_len={max_len} tokens",
                    }
                )
        has_rationale = bool(e.rationales)
        rows.append(
            {
                "sp_id": e.sp_id,
                "rp_id": e.rp_id,
                "level": e.level,
                "seeker_post": e.seeker_post,
                "response_post": e.response_post,
                "seeker_id": seeker_index[e.seeker_post],
                "seeker_input_ids": seeker_enc["input_ids"][seeker_index[e.seeker_post]],
                "response_input_ids": response_enc["input_ids"][k],
                "response_offsets": offsets,
                "response_mask": mask,
                "rationale_strict": rationale_labels(
                    offsets, mask, spans, has_rationale=has_rationale, policy="strict"
                ),
                "rationale_paper": rationale_labels(offsets, mask, spans, has_rationale=has_rationale, policy="paper"),
                "rationale_unaligned": len(unaligned),
            }
        )
    return rows, report, dict(counts)


def _write_report(path: Path, report: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["sp_id", "rp_id", "piece", "reason"])
        writer.writeheader()
        writer.writerows(report)


def _summary(read_report: dict, split_of: Sequence[str], examples: Sequence[Example], counts: dict) -> dict:
    per_split = {}
    for name in SPLITS:
        levels = Counter(e.level for e, s in zip(examples, split_of, strict=True) if s == name)
        per_split[name] = {"rows": sum(levels.values()), "levels": {str(lv): levels.get(lv, 0) for lv in LEVELS}}
    return {
        "rows_read": read_report["rows_read"],
        "rows_kept": read_report["rows_kept"],
        "duplicate_rows_merged": read_report["duplicate_rows_merged"],
        "conflicting_keys": read_report["conflicting_keys"],
        "rows_dropped": read_report["rows_dropped"],
        "conflicts": read_report["conflicts"],
        "dropped": read_report["dropped"],
        "splits": per_split,
        "rows_with_rationale": counts.get("rows_with_rationale", 0),
        "rationale_pieces": {
            "total": counts.get("pieces", 0),
            "aligned": counts.get("aligned", 0),
            "unaligned": counts.get("unaligned", 0),
            "beyond_max_len_partly": counts.get("beyond_max_len_partly", 0),
            "beyond_max_len_wholly": counts.get("beyond_max_len_wholly", 0),
        },
    }


Stratum = tuple[int, ...]


def split_population(
    examples: Sequence[Example],
    *,
    data_dir: str | Path,
    split_scope: str,
    mechanism_files: Mapping[str, str] | None,
    on_conflict: str,
    unescape_html: bool,
) -> tuple[list[tuple[str, str]], list[str], list[str], list[Stratum]]:
    """The rows a split is computed on: keys, seeker ids, seeker posts and strata.

    ``mechanism``: this mechanism's rows, stratified by their level. ``shared``: the union of the
    pairs of every file in ``mechanism_files`` (the same pairs are annotated for ER, IP and EX),
    stratified by the tuple of their levels (-1 where a file lacks the pair, e.g. a dropped level
    conflict), so that every mechanism (and a joint model) gets the same split of the same pairs.
    """
    if split_scope not in SPLIT_SCOPES:
        raise ValueError(f"data.split_scope must be one of {', '.join(SPLIT_SCOPES)}, not {split_scope!r}")
    if split_scope == "mechanism":
        return (
            [e.key for e in examples],
            [e.sp_id for e in examples],
            [e.seeker_post for e in examples],
            [(e.level,) for e in examples],
        )
    if not mechanism_files:
        raise ValueError("data.split_scope=shared needs data.mechanism_files (mechanism -> CSV file name)")
    levels: dict[tuple[str, str], dict[str, int]] = {}
    seeker: dict[tuple[str, str], tuple[str, str]] = {}
    names = sorted(mechanism_files)
    for name in names:
        path = (Path(data_dir) / mechanism_files[name]).resolve()
        if not path.is_file():
            raise FileNotFoundError(
                f"{missing_data_message(path, name)} The shared split (data.split_scope=shared) reads "
                "every mechanism's file; with only some of them, set data.split_scope=mechanism."
            )
        rows, _ = read_epitome_csv(path, on_conflict=on_conflict, unescape_html=unescape_html)
        for e in rows:
            levels.setdefault(e.key, {})[name] = e.level
            seeker.setdefault(e.key, (e.sp_id, e.seeker_post))
    keys = list(levels)
    return (
        keys,
        [seeker[k][0] for k in keys],
        [seeker[k][1] for k in keys],
        [tuple(levels[k].get(n, -1) for n in names) for k in keys],
    )


def assign_splits(
    keys: Sequence[tuple[str, str]],
    sp_ids: Sequence[str],
    seeker_posts: Sequence[str],
    strata: Sequence[Stratum],
    *,
    split_fractions: Sequence[float],
    split_seed: int,
    split_file: Path | None = None,
    cv_folds: int = 0,
    cv_fold: int = 0,
) -> dict[tuple[str, str], str]:
    """``{key: split}`` for the population: a user split file or the seeded grouped stratified
    split, then, with ``cv_folds`` > 1, cross-validation inside train + dev: its rows are cut into
    ``cv_folds`` folds (grouped by seeker post, stratified), fold ``cv_fold`` becomes dev and the
    others train. Test rows are never touched."""
    groups = seeker_groups(list(sp_ids), list(seeker_posts))
    if split_file is not None:
        mapping = read_split_csv(split_file)
        splits = [mapping.get(k) for k in keys]
    else:
        splits = grouped_stratified_split(list(strata), groups, fractions=tuple(split_fractions), seed=split_seed)
    if cv_folds:
        if cv_folds < 2 or not 0 <= cv_fold < cv_folds:
            raise ValueError(
                f"data.cv_fold must be in 0..{cv_folds - 1} with data.cv_folds >= 2, "
                f"got cv_folds={cv_folds}, cv_fold={cv_fold}"
            )
        inside = [i for i, s in enumerate(splits) if s in ("train", "dev")]
        folds = grouped_stratified_folds([strata[i] for i in inside], [groups[i] for i in inside], cv_folds, split_seed)
        for i, fold in zip(inside, folds, strict=True):
            splits[i] = "dev" if fold == cv_fold else "train"
    return {k: s for k, s in zip(keys, splits, strict=True) if s is not None}


def prepare_mechanism(
    *,
    data_dir: str | Path,
    mechanism: str,
    mechanism_file: str,
    encoder_cfg: Mapping[str, Any],
    max_len: int = 64,
    on_conflict: str = "drop",
    unescape_html: bool = True,
    split_fractions: Sequence[float] = (0.75, 0.05, 0.2),
    split_seed: int = 12,
    split_file: str | Path | None = None,
    split_scope: str = "mechanism",
    mechanism_files: Mapping[str, str] | None = None,
    cv_folds: int = 0,
    cv_fold: int = 0,
    cache_dir: str | Path = ".cache/empathy",
) -> PreparedData:
    """Read, validate, split, tokenize and align one mechanism's CSV; cached under ``cache_dir``.

    The split: see :func:`split_population` (``split_scope``) and :func:`assign_splits`
    (``split_file``, ``cv_folds`` / ``cv_fold``)."""
    from empathy.encoders import load_tokenizer

    csv_path = (Path(data_dir) / mechanism_file).resolve()
    if not csv_path.is_file():
        raise FileNotFoundError(missing_data_message(csv_path, mechanism))
    split_path = Path(split_file).resolve() if split_file else None
    if split_path is not None and not split_path.is_file():
        raise FileNotFoundError(f"split file {split_path} (data.split_file) does not exist")
    tokenizer = load_tokenizer(encoder_cfg)
    params = {
        "pipeline_version": PIPELINE_VERSION,
        "csv_sha256": _sha256_file(csv_path),
        "split_file_sha256": _sha256_file(split_path) if split_path else None,
        "tokenizer": tokenizer_identity(tokenizer),
        "max_len": int(max_len),
        "on_conflict": on_conflict,
        "unescape_html": bool(unescape_html),
        "split_fractions": [float(f) for f in split_fractions],
        "split_seed": int(split_seed),
        "split_scope": split_scope,
        # the other files shape a shared split: their contents are part of the key
        "split_files_sha256": (
            {
                n: _sha256_file((Path(data_dir) / f).resolve())
                for n, f in sorted(mechanism_files.items())
                if (Path(data_dir) / f).is_file()
            }
            if split_scope == "shared" and split_path is None and mechanism_files
            else None
        ),
        "cv": [int(cv_folds), int(cv_fold)] if cv_folds else None,
    }
    cache_root = Path(cache_dir).resolve()
    cache_path = cache_root / f"{mechanism}-{cache_key(params)}"
    outputs = {
        "split_csv": cache_path / SPLIT_CSV,
        "unaligned_report": cache_path / UNALIGNED_CSV,
    }

    if (cache_path / SUMMARY_FILE).is_file():
        dsd = datasets.load_from_disk(str(cache_path / DATASET_DIR))
        summary = json.loads((cache_path / SUMMARY_FILE).read_text(encoding="utf-8"))
        summary.update(cache_hit=True, cache_path=str(cache_path), **{k: str(v) for k, v in outputs.items()})
        return PreparedData(dsd, summary, outputs["split_csv"], cache_path, outputs["unaligned_report"])

    examples, read_report = read_epitome_csv(csv_path, on_conflict=on_conflict, unescape_html=unescape_html)
    population = split_population(
        examples,
        data_dir=data_dir,
        split_scope="mechanism" if split_path is not None else split_scope,
        mechanism_files=mechanism_files,
        on_conflict=on_conflict,
        unescape_html=unescape_html,
    )
    mapping = assign_splits(
        *population,
        split_fractions=split_fractions,
        split_seed=split_seed,
        split_file=split_path,
        cv_folds=cv_folds,
        cv_fold=cv_fold,
    )
    split_of = splits_of(examples, mapping, str(split_path) if split_path else "the computed split")
    rows, report, counts = build_rows(examples, tokenizer, max_len)
    dsd = datasets.DatasetDict()
    for name in SPLITS:
        part = [r for r, s in zip(rows, split_of, strict=True) if s == name]
        # Column-wise, so that an empty split still has every column.
        dsd[name] = datasets.Dataset.from_dict({c: [r[c] for r in part] for c in FEATURES}, features=FEATURES)
    summary = {
        "mechanism": mechanism,
        "csv_path": str(csv_path),
        "max_len": int(max_len),
        "encoder": str(encoder_cfg.get("name")),
        "params": params,
        **_summary(read_report.to_dict(), split_of, examples, counts),
        "cache_path": str(cache_path),
        "split_csv": str(outputs["split_csv"]),
        "unaligned_report": str(outputs["unaligned_report"]),
    }

    # Write everything into a temporary folder next to the cache entry, then rename it into place:
    # a crash never leaves a half-written entry, and a concurrent writer of the same key wins cleanly.
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_root, prefix=f".{cache_path.name}.tmp-"))
    try:
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            # One shard per split: small data, and an empty split still gets a (loadable) file.
            dsd.save_to_disk(str(tmp / DATASET_DIR), num_shards={name: 1 for name in dsd})
        finally:
            if bars:
                datasets.enable_progress_bars()
        write_split_csv(tmp / SPLIT_CSV, examples, split_of)
        _write_report(tmp / UNALIGNED_CSV, report)
        (tmp / SUMMARY_FILE).write_text(json.dumps({**summary, "cache_hit": False}, indent=2), encoding="utf-8")
        if cache_path.exists() and not (cache_path / SUMMARY_FILE).is_file():
            shutil.rmtree(cache_path)  # an incomplete entry left by hand: replace it
        try:
            os.rename(tmp, cache_path)
        except OSError:
            if not (cache_path / SUMMARY_FILE).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process wrote the same entry first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dsd = datasets.load_from_disk(str(cache_path / DATASET_DIR))
    summary["cache_hit"] = False
    return PreparedData(dsd, summary, outputs["split_csv"], cache_path, outputs["unaligned_report"])
