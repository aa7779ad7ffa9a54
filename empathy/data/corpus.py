"""Unlabelled text for masked-LM pre-training: read a corpus, exclude evaluation texts, hold out a
slice, tokenize and pack into blocks.

The data path, left to right:

    text / CSV / JSONL / Parquet files, or the EPITOME CSVs --read--> one ``text`` column
        --deduplicate (optional)--> --exclude the dev/test texts of the EPITOME split (optional)-->
        --held-out slice by a seeded hash of each text--> train texts | held-out texts
        --tokenize, concatenate with separators, cut into blocks of max_len--> blocks
        --DataCollatorForLanguageModeling (15 %, 80/10/10)--> MLM batches

The functions are pure (plain values in and out, or ``datasets`` objects in and out) and work on
both an in-memory ``datasets.Dataset`` and a streaming ``datasets.IterableDataset``;
:class:`CorpusDataModule` only wires them together.

Texts are compared after :func:`normalise_text` (HTML entities decoded, Unicode NFKC, whitespace
collapsed, case folded): a corpus text is excluded when its normalised form equals that of a
dev/test seeker or response post.
"""

from __future__ import annotations

import hashlib
import html
import logging
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from empathy.data.processing import (
    assign_splits,
    missing_data_message,
    split_population,
)
from empathy.data.read import read_epitome_csv
from empathy.data.split import SPLITS, splits_of

log = logging.getLogger(__name__)

TEXT = "text"
# File extension -> the `datasets` builder that reads it.
TABLE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
FORMATS = ("epitome", "text", "csv", "json", "parquet", "auto")
SAMPLE_BY = ("line", "paragraph", "document")  # text files: one text a line / blank-line block / file
MAP_BATCH = 1000


class CorpusError(ValueError):
    """A corpus file that cannot be read as configured (names the file and the column)."""


# ---------------------------------------------------------------------------- texts
def normalise_text(text: str) -> str:
    """The form in which texts are compared: HTML entities decoded, NFKC, whitespace collapsed,
    case folded."""
    return " ".join(unicodedata.normalize("NFKC", html.unescape(text)).split()).casefold()


def text_key(text: str) -> bytes:
    """A 16-byte digest of the normalised text (what deduplication remembers)."""
    return hashlib.blake2b(normalise_text(text).encode("utf-8"), digest_size=16).digest()


def in_heldout(text: str, fraction: float, seed: int) -> bool:
    """Whether ``text`` belongs to the held-out slice: a seeded hash of its normalised form, so the
    slice is the same on every machine and in streaming mode, about ``fraction`` of the texts, and
    copies of a text never straddle the slice."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}\0{normalise_text(text)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


# ---------------------------------------------------------------------------- reading
def table_format(path: str | Path, format: str = "auto") -> str:
    """The ``datasets`` builder for a table file: ``format``, or the file's extension for auto."""
    if format != "auto":
        if format not in ("csv", "json", "parquet"):
            raise CorpusError(
                f"{path}: unknown table format {format!r}; expected csv, json (JSON lines), parquet or auto"
            )
        return format
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise CorpusError(
            f"{path}: cannot tell the format from the extension {suffix!r}; expected one of "
            f"{', '.join(TABLE_FORMATS)} or set corpus.format=csv|json|parquet"
        )
    return TABLE_FORMATS[suffix]


def _existing(files: Sequence[str | Path]) -> list[str]:
    if not files:
        raise CorpusError("corpus.files is empty: give one or more files (corpus.files=[a.txt,b.txt])")
    out = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise CorpusError(f"corpus file {path} does not exist")
        out.append(str(path.resolve()))
    return out


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """``datasets`` without its per-step progress bars (restored afterwards)."""
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if bars:
            datasets.enable_progress_bars()


def _quiet_load(*args: Any, **kwargs: Any):
    with no_progress_bars():
        return datasets.load_dataset(*args, **kwargs)


def read_text_files(
    files: Sequence[str | Path], *, sample_by: str = "line", streaming: bool = False, cache_dir: str | None = None
) -> datasets.Dataset | datasets.IterableDataset:
    """Plain text files -> a ``text`` column: one text a line (``line``), a blank-line-separated
    block (``paragraph``) or a whole file (``document``); empty texts are dropped."""
    if sample_by not in SAMPLE_BY:
        raise CorpusError(f"corpus.sample_by: expected one of {', '.join(SAMPLE_BY)}, got {sample_by!r}")
    ds = _quiet_load(
        "text",
        data_files=_existing(files),
        sample_by=sample_by,
        split="train",
        streaming=streaming,
        cache_dir=cache_dir,
    )
    return drop_empty(ds)


def _columns_of(ds: datasets.Dataset | datasets.IterableDataset) -> list[str]:
    if ds.column_names is not None:
        return list(ds.column_names)
    first = next(iter(ds), None)  # a streaming dataset whose schema is only known from its rows
    return [] if first is None else list(first)


def read_table_files(
    files: Sequence[str | Path],
    *,
    text_columns: Sequence[str],
    format: str = "auto",
    streaming: bool = False,
    cache_dir: str | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """CSV / JSON lines / Parquet files -> a ``text`` column with one text per non-empty cell of
    ``text_columns`` (a row with a seeker and a response post gives two texts). Each file is read
    on its own, so a missing column is reported with the file that lacks it."""
    if not text_columns:
        raise CorpusError("corpus.text_columns is empty: name the column(s) that hold the texts")
    parts = []
    for path in _existing(files):
        ds = _quiet_load(
            table_format(path, format), data_files=[path], split="train", streaming=streaming, cache_dir=cache_dir
        )
        columns = _columns_of(ds)
        for column in text_columns:
            if column not in columns:
                raise CorpusError(
                    f"{path}: no column {column!r} (corpus.text_columns={list(text_columns)}); "
                    f"the file has the columns {', '.join(map(str, columns)) or '(none)'}"
                )
        parts.append(texts_from_columns(ds, text_columns))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def texts_from_columns(
    ds: datasets.Dataset | datasets.IterableDataset, text_columns: Sequence[str]
) -> datasets.Dataset | datasets.IterableDataset:
    """Flatten ``text_columns`` into one ``text`` column (row order, then column order), skipping
    empty and missing cells."""
    columns = list(text_columns)

    def flatten(batch: Mapping[str, list]) -> dict[str, list[str]]:
        n = len(batch[columns[0]])
        texts = []
        for i in range(n):
            for c in columns:
                value = batch[c][i]
                if value is not None and str(value).strip():
                    texts.append(str(value))
        return {TEXT: texts}

    remove = _columns_of(ds)
    return ds.map(flatten, batched=True, batch_size=MAP_BATCH, remove_columns=remove)


def drop_empty(ds: datasets.Dataset | datasets.IterableDataset):
    return ds.filter(lambda batch: [bool(t and t.strip()) for t in batch[TEXT]], batched=True, batch_size=MAP_BATCH)


# ---------------------------------------------------------------------------- EPITOME
def epitome_split_texts(
    data_dir: str | Path,
    mechanisms: Mapping[str, str],
    *,
    on_conflict: str = "drop",
    unescape_html: bool = True,
    split_fractions: Sequence[float] = (0.75, 0.05, 0.2),
    split_seed: int = 12,
    split_file: str | Path | None = None,
    split_scope: str = "mechanism",
) -> dict[str, dict[str, list[str]]]:
    """The seeker and response posts of each mechanism's train / dev / test split, computed with
    the same reading and split functions (and settings) as training (``prepare_mechanism``).

    Returns ``{mechanism: {split: [seeker post, response post, ...]}}`` in file order."""
    out: dict[str, dict[str, list[str]]] = {}
    for mechanism, file in mechanisms.items():
        csv_path = (Path(data_dir) / file).resolve()
        if not csv_path.is_file():
            raise FileNotFoundError(missing_data_message(csv_path, mechanism))
        examples, _ = read_epitome_csv(csv_path, on_conflict=on_conflict, unescape_html=unescape_html)
        split_path = Path(split_file).resolve() if split_file else None
        population = split_population(
            examples,
            data_dir=data_dir,
            split_scope="mechanism" if split_path else split_scope,
            mechanism_files=mechanisms,
            on_conflict=on_conflict,
            unescape_html=unescape_html,
        )
        mapping = assign_splits(
            *population, split_fractions=split_fractions, split_seed=split_seed, split_file=split_path
        )
        split_of = splits_of(examples, mapping, str(split_path) if split_path else "the computed split")
        texts: dict[str, list[str]] = {name: [] for name in SPLITS}
        for e, split in zip(examples, split_of, strict=True):
            texts[split] += [e.seeker_post, e.response_post]
        out[mechanism] = texts
    return out


def eval_texts(
    split_texts: Mapping[str, Mapping[str, Sequence[str]]], splits: Sequence[str] = ("dev", "test")
) -> set[str]:
    """The normalised texts in ``splits`` (dev and test) of any mechanism."""
    return {normalise_text(t) for by_split in split_texts.values() for s in splits for t in by_split.get(s, ())}


def epitome_corpus(split_texts: Mapping[str, Mapping[str, Sequence[str]]]) -> datasets.Dataset:
    """Every seeker and response post of the EPITOME files (all splits, every mechanism; the
    exclusion and deduplication steps decide what stays)."""
    texts = [t for by_split in split_texts.values() for s in SPLITS for t in by_split.get(s, ())]
    return datasets.Dataset.from_dict({TEXT: texts})


# ---------------------------------------------------------------------------- filtering
class _FirstCopy:
    """Keeps the first copy of each normalised text (a batched filter; stateful, one pass)."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def __call__(self, batch: Mapping[str, list[str]]) -> list[bool]:
        keep = []
        for text in batch[TEXT]:
            key = text_key(text)
            keep.append(key not in self.seen)
            self.seen.add(key)
        return keep


def deduplicate(ds: datasets.Dataset | datasets.IterableDataset):
    """Drop every copy of a text but the first (after normalisation)."""
    return ds.filter(_FirstCopy(), batched=True, batch_size=MAP_BATCH)


def exclude_texts(ds: datasets.Dataset | datasets.IterableDataset, excluded: set[str]):
    """Drop the texts whose normalised form is in ``excluded``."""
    if not excluded:
        return ds
    frozen = frozenset(excluded)
    return ds.filter(
        lambda batch: [normalise_text(t) not in frozen for t in batch[TEXT]],
        batched=True,
        batch_size=MAP_BATCH,
    )


def split_heldout(ds: datasets.Dataset | datasets.IterableDataset, fraction: float, seed: int):
    """(train, held-out): the texts outside and inside the seeded held-out slice."""

    def mark(want: bool) -> Callable[[Mapping[str, list[str]]], list[bool]]:
        return lambda batch: [in_heldout(t, fraction, seed) == want for t in batch[TEXT]]

    kwargs = {"batched": True, "batch_size": MAP_BATCH}
    return ds.filter(mark(False), **kwargs), ds.filter(mark(True), **kwargs)


# ---------------------------------------------------------------------------- packing
def pack_token_ids(
    token_ids: Sequence[Sequence[int]],
    max_len: int,
    *,
    prefix: Sequence[int],
    suffix: Sequence[int],
    separator: int,
    offsets: Sequence[Sequence[Sequence[int]]] | None = None,
) -> dict[str, list]:
    """Concatenate tokenized texts (no special tokens) with ``separator`` between them, cut the
    stream into pieces of ``max_len - len(prefix) - len(suffix)`` tokens and wrap each piece in
    ``prefix`` / ``suffix`` (``[CLS] ... [SEP]``, ``<s> ... </s>``): every block has exactly
    ``max_len`` tokens but the last, which holds the remainder.

    Returns ``input_ids`` and ``special_tokens_mask`` per block, and ``offset_mapping`` (character
    offsets in each token's own text; ``(0, 0)`` for special tokens) when ``offsets`` is given
    (whole-word masking needs it)."""
    width = max_len - len(prefix) - len(suffix)
    if width < 1:
        raise ValueError(f"max_len={max_len} leaves no room for text beside {len(prefix) + len(suffix)} special tokens")
    stream: list[int] = []
    special: list[int] = []
    spans: list[tuple[int, int]] = []
    for k, ids in enumerate(token_ids):
        if not ids:
            continue
        if stream:
            stream.append(separator)
            special.append(1)
            spans.append((0, 0))
        stream.extend(ids)
        special.extend([0] * len(ids))
        if offsets is not None:
            spans.extend(tuple(o) for o in offsets[k])
    out: dict[str, list] = {"input_ids": [], "special_tokens_mask": []}
    if offsets is not None:
        out["offset_mapping"] = []
    for start in range(0, len(stream), width):
        piece = stream[start : start + width]
        out["input_ids"].append([*prefix, *piece, *suffix])
        out["special_tokens_mask"].append([1] * len(prefix) + special[start : start + width] + [1] * len(suffix))
        if offsets is not None:
            out["offset_mapping"].append(
                [(0, 0)] * len(prefix) + [list(o) for o in spans[start : start + width]] + [(0, 0)] * len(suffix)
            )
    return out


def block_tokens(tokenizer: Any) -> tuple[list[int], list[int], int]:
    """(prefix, suffix, separator) token ids of a block for ``tokenizer`` (BERT: [CLS], [SEP],
    [SEP]; RoBERTa: <s>, </s>, </s>)."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if end is None:
        raise ValueError(f"{type(tokenizer).__name__} has neither a sep nor an eos token to separate texts")
    return ([] if start is None else [start]), [end], end


def tokenize_blocks(
    ds: datasets.Dataset | datasets.IterableDataset,
    tokenizer: Any,
    max_len: int,
    *,
    packing: bool = True,
    with_offsets: bool = False,
):
    """``text`` -> ``input_ids`` / ``special_tokens_mask`` (/ ``offset_mapping``) blocks: packed
    (:func:`pack_token_ids`, per batch of texts) or one truncated text per block."""
    prefix, suffix, separator = block_tokens(tokenizer)

    def encode(batch: Mapping[str, list[str]]) -> dict[str, list]:
        if packing:
            enc = tokenizer(
                batch[TEXT],
                add_special_tokens=False,
                truncation=False,
                return_offsets_mapping=with_offsets,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            return pack_token_ids(
                enc["input_ids"],
                max_len,
                prefix=prefix,
                suffix=suffix,
                separator=separator,
                offsets=enc["offset_mapping"] if with_offsets else None,
            )
        enc = tokenizer(
            batch[TEXT],
            truncation=True,
            max_length=max_len,
            return_special_tokens_mask=True,
            return_offsets_mapping=with_offsets,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        keys = ["input_ids", "special_tokens_mask"] + (["offset_mapping"] if with_offsets else [])
        return {k: enc[k] for k in keys}

    return ds.map(encode, batched=True, batch_size=MAP_BATCH, remove_columns=[TEXT])


def take(ds: datasets.Dataset | datasets.IterableDataset, n: int | None) -> list[dict]:
    """The first ``n`` rows (all when ``n`` is None) as plain dicts."""
    rows = []
    for row in ds:
        if n is not None and len(rows) >= n:
            break
        rows.append(dict(row))
    return rows


def masked_batches(rows: Sequence[Mapping[str, Any]], collator: Callable[[list], dict], batch_size: int) -> list[dict]:
    """Mask ``rows`` once, in order, into batches (a collator with a fixed seed gives the same
    masks every time: the held-out loss before and after training is over the same tokens)."""
    return [collator([dict(r) for r in rows[i : i + batch_size]]) for i in range(0, len(rows), batch_size)]


# ---------------------------------------------------------------------------- DataModule
def _count(ds: datasets.Dataset | datasets.IterableDataset) -> int | None:
    return None if isinstance(ds, datasets.IterableDataset) else len(ds)


class CorpusDataModule(pl.LightningDataModule):
    """Wires the functions above: a corpus config (``conf/corpus/*.yaml``) and an encoder config
    in, MLM training batches and fixed-mask held-out batches out. ``summary`` holds the counts."""

    def __init__(
        self,
        *,
        corpus: Mapping[str, Any],
        encoder: Mapping[str, Any],
        epitome: Mapping[str, Any],
        max_len: int = 128,
        packing: bool = True,
        mlm_probability: float = 0.15,
        whole_word_mask: bool = False,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        heldout_fraction: float = 0.05,
        heldout_seed: int = 12,
        heldout_max_blocks: int | None = 2000,
        eval_mask_seed: int = 12,
        shuffle_buffer: int = 10_000,
        num_workers: int = 0,
        seed: int = 12,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.corpus = dict(corpus)
        self.encoder = dict(encoder)
        self.epitome = dict(epitome)
        self.max_len = int(max_len)
        self.packing = packing
        self.mlm_probability = mlm_probability
        self.whole_word_mask = whole_word_mask
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.heldout_fraction = float(heldout_fraction)
        self.heldout_seed = int(heldout_seed)
        self.heldout_max_blocks = heldout_max_blocks
        self.eval_mask_seed = int(eval_mask_seed)
        self.shuffle_buffer = shuffle_buffer
        self.num_workers = num_workers
        self.seed = int(seed)
        self.cache_dir = cache_dir
        self.tokenizer = None
        self.train_blocks = None
        self.heldout_batches: list[dict] | None = None
        self.summary: dict[str, Any] = {}

    # -- reading
    def read_texts(self) -> tuple[datasets.Dataset | datasets.IterableDataset, set[str]]:
        """The corpus as a ``text`` column, and the normalised texts to exclude."""
        corpus = self.corpus
        fmt = corpus.get("format", "auto")
        if fmt not in FORMATS:
            raise CorpusError(f"corpus.format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
        split_texts = None
        if fmt == "epitome" or corpus.get("exclude_eval_texts"):
            settings = {k: v for k, v in self.epitome.items() if k not in ("data_dir", "mechanisms")}
            split_texts = epitome_split_texts(self.epitome["data_dir"], self.epitome["mechanisms"], **settings)
        excluded = eval_texts(split_texts) if corpus.get("exclude_eval_texts") else set()
        streaming = bool(corpus.get("streaming"))
        if fmt == "epitome":
            ds = epitome_corpus(split_texts)
            if streaming:
                ds = ds.to_iterable_dataset()
        elif fmt == "text":
            ds = read_text_files(
                corpus.get("files") or [],
                sample_by=corpus.get("sample_by", "line"),
                streaming=streaming,
                cache_dir=self.cache_dir,
            )
        else:
            ds = read_table_files(
                corpus.get("files") or [],
                text_columns=corpus.get("text_columns") or [],
                format=fmt,
                streaming=streaming,
                cache_dir=self.cache_dir,
            )
        return ds, excluded

    def select_texts(
        self,
    ) -> tuple[datasets.Dataset | datasets.IterableDataset, datasets.Dataset | datasets.IterableDataset]:
        """(train texts, held-out texts) after deduplication and exclusion; counts in ``summary``."""
        with no_progress_bars():
            return self._select_texts()

    def _select_texts(self):
        ds, excluded = self.read_texts()
        summary: dict[str, Any] = {"corpus": self.corpus.get("name"), "streaming": bool(self.corpus.get("streaming"))}
        summary["texts_read"] = _count(ds)
        summary["duplicates_removed"] = 0
        if self.corpus.get("deduplicate"):
            ds = deduplicate(ds)
            summary["duplicates_removed"] = None if summary["texts_read"] is None else summary["texts_read"] - len(ds)
        before = _count(ds)
        ds = exclude_texts(ds, excluded)
        summary["eval_texts_known"] = len(excluded)
        summary["excluded_eval_texts"] = None if before is None else before - len(ds)
        train, heldout = split_heldout(ds, self.heldout_fraction, self.heldout_seed)
        summary["train_texts"], summary["heldout_texts"] = _count(train), _count(heldout)
        if summary["train_texts"] == 0:
            raise CorpusError(f"corpus {self.corpus.get('name')!r}: no training text left ({summary})")
        self.summary = summary
        return train, heldout

    def setup(self, stage: str | None = None) -> None:
        if self.heldout_batches is not None:
            return
        from empathy.encoders import load_tokenizer

        self.tokenizer = load_tokenizer(self.encoder)
        with no_progress_bars():
            self._setup()

    def _setup(self) -> None:
        train, heldout = self._select_texts()
        summary = self.summary
        kwargs = {"packing": self.packing, "with_offsets": self.whole_word_mask}
        self.train_blocks = tokenize_blocks(train, self.tokenizer, self.max_len, **kwargs)
        heldout_rows = take(tokenize_blocks(heldout, self.tokenizer, self.max_len, **kwargs), self.heldout_max_blocks)
        if not heldout_rows:
            raise CorpusError(
                f"corpus {self.corpus.get('name')!r}: the held-out slice is empty "
                f"(heldout_fraction={self.heldout_fraction}); raise the fraction or give more text"
            )
        self.heldout_batches = masked_batches(
            heldout_rows, self.collator(seed=self.eval_mask_seed), self.eval_batch_size
        )
        summary["train_blocks"] = _count(self.train_blocks)
        summary["heldout_blocks"] = len(heldout_rows)
        summary["heldout_masked_tokens"] = int(sum((b["labels"] != -100).sum().item() for b in self.heldout_batches))
        log.info(
            "corpus %s: %s texts read, %s duplicates removed, %s dev/test texts of the EPITOME split excluded "
            "(%d known), %s train texts -> %s blocks of %d tokens, %s held-out texts -> %d blocks%s",
            summary["corpus"],
            summary["texts_read"],
            summary["duplicates_removed"],
            summary["excluded_eval_texts"],
            summary["eval_texts_known"],
            summary["train_texts"],
            summary["train_blocks"],
            self.max_len,
            summary["heldout_texts"],
            summary["heldout_blocks"],
            " (streaming: None is a count not known until the corpus is read)" if summary["streaming"] else "",
        )

    def collator(self, seed: int | None = None):
        from transformers import DataCollatorForLanguageModeling

        kwargs: dict[str, Any] = {"mlm_probability": self.mlm_probability, "seed": seed}
        if self.whole_word_mask:
            kwargs["whole_word_mask"] = True
        return DataCollatorForLanguageModeling(self.tokenizer, **kwargs)

    # -- loaders
    def train_dataloader(self) -> DataLoader:
        blocks = self.train_blocks
        if isinstance(blocks, datasets.IterableDataset):
            blocks = blocks.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            if self.trainer is not None and self.trainer.world_size > 1:
                from datasets.distributed import split_dataset_by_node

                blocks = split_dataset_by_node(
                    blocks, rank=self.trainer.global_rank, world_size=self.trainer.world_size
                )
            return DataLoader(
                blocks, batch_size=self.batch_size, collate_fn=self.collator(), num_workers=self.num_workers
            )
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            blocks,
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=self.collator(),
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.heldout_batches, batch_size=None, shuffle=False)
