"""LightningDataModule: wires the pure data functions (read, align, split, cache, merge) to loaders."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

from empathy import MECHANISMS
from empathy.data.collate import Collator
from empathy.data.merge import (
    POLICIES,
    level_column,
    level_counts,
    merge_prepared,
    rationale_column,
)
from empathy.data.processing import PreparedData, prepare_mechanism
from empathy.data.split import SPLITS
from empathy.encoders import load_tokenizer


class ResumableSampler(Sampler[int]):
    """The training order: a seeded shuffle per epoch (seed, epoch) that can start part-way
    into an epoch, so that a run resumed from a mid-epoch checkpoint sees exactly the batches it
    had left.

    With ``lengths``, consecutive ``batch_size`` chunks are grouped by length: the shuffled
    order is cut into windows of ``window`` batches, each window sorted by length and cut into
    batches, and the batches shuffled. Batches then hold posts of similar length, so dynamic
    padding pads little (the original code padded everything to max_len)."""

    def __init__(
        self, size: int, seed: int, batch_size: int, lengths: Sequence[int] | None = None, window: int = 50
    ) -> None:
        self.size = size
        self.seed = seed
        self.batch_size = batch_size
        self.lengths = None if lengths is None else list(lengths)
        self.window = window
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self._resume = (epoch, batches_done)

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.lengths is None:
            return order
        span = self.window * self.batch_size
        batches = []
        for start in range(0, self.size, span):
            window = sorted(order[start : start + span], key=lambda i: -self.lengths[i])
            batches += [window[i : i + self.batch_size] for i in range(0, len(window), self.batch_size)]
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [i for b in shuffled for i in batches[b]]

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)
        if self._resume is not None and self._resume[0] == self.epoch:
            order = order[self._resume[1] * self.batch_size :]
            self._resume = None
        return iter(order)

    def __len__(self) -> int:
        return self.size


# The EPITOME file of each mechanism (data.mechanism_files), for settings saved without one.
DEFAULT_FILES = {
    "ER": "emotional-reactions-reddit.csv",
    "IP": "interpretations-reddit.csv",
    "EX": "explorations-reddit.csv",
}


class EpitomeDataModule(pl.LightningDataModule):
    """The EPITOME pairs of one or several mechanisms (``mechanisms``, each read from its file in
    ``mechanism_files``): each mechanism is prepared alone (read, validate, align, split, cache:
    :func:`~empathy.data.processing.prepare_mechanism`) and the mechanisms are merged by pair
    (:func:`~empathy.data.merge.merge_prepared`). Batches hold the shared inputs plus
    ``level_M``, ``rationale_strict_M`` and ``rationale_paper_M`` per mechanism ``M`` (-100 where
    ``M``'s file lacks the pair)."""

    def __init__(
        self,
        *,
        data_dir: str,
        encoder: Mapping[str, Any],
        mechanisms: Sequence[str] | None = None,
        mechanism_files: Mapping[str, str] | None = None,
        cache_dir: str = ".cache/empathy",
        max_len: int = 64,
        rationale_policy: str = "strict",
        on_conflict: str = "drop",
        unescape_html: bool = True,
        split_fractions: Sequence[float] = (0.75, 0.05, 0.2),
        split_seed: int = 12,
        split_file: str | None = None,
        split_scope: str = "shared",
        cv_folds: int = 0,
        cv_fold: int = 0,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        group_by_length: bool = True,
        seed: int = 12,
    ) -> None:
        super().__init__()
        self.mechanism_files = dict(mechanism_files or DEFAULT_FILES)
        mechanisms = list(mechanisms) if mechanisms else [m for m in MECHANISMS if m in self.mechanism_files]
        unknown = [m for m in mechanisms if m not in MECHANISMS]
        if unknown or not mechanisms or len(set(mechanisms)) != len(mechanisms):
            raise ValueError(f"mechanisms: expected one or more distinct of {', '.join(MECHANISMS)}, got {mechanisms}")
        missing = [m for m in mechanisms if m not in self.mechanism_files]
        if missing:
            raise ValueError(
                f"data.mechanism_files names no file for {', '.join(missing)} (mechanism -> CSV file name)"
            )
        self.mechanisms = tuple(m for m in MECHANISMS if m in mechanisms)
        self.data_dir = data_dir
        self.encoder = encoder
        self.cache_dir = cache_dir
        self.max_len = max_len
        self.rationale_policy = rationale_policy
        self.on_conflict = on_conflict
        self.unescape_html = unescape_html
        self.split_fractions = tuple(split_fractions)
        self.split_seed = split_seed
        self.split_file = split_file
        self.split_scope = split_scope
        self.cv_folds = cv_folds
        self.cv_fold = cv_fold
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.group_by_length = group_by_length
        self.seed = seed
        self.prepared: PreparedData | None = None
        self.train_sampler: ResumableSampler | None = None
        self.tokenizer = None

    def prepare_data(self) -> None:
        # Builds the on-disk cache once (rank 0); setup() then loads it on every process. Lightning
        # calls this at each fit / validate / test: once this process has set up, the cache exists.
        if self.prepared is None:
            self._prepare()

    def _prepare(self) -> PreparedData:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.encoder)
        parts = {m: prepare_mechanism(**self.prepare_kwargs(m)) for m in self.mechanisms}
        return merge_prepared(parts, self.cache_dir)

    def prepare_kwargs(self, mechanism: str) -> dict[str, Any]:
        """The arguments of ``prepare_mechanism`` for one mechanism under this module's settings."""
        return dict(
            data_dir=self.data_dir,
            mechanism=mechanism,
            mechanism_file=self.mechanism_files[mechanism],
            encoder_cfg=self.encoder,
            max_len=self.max_len,
            on_conflict=self.on_conflict,
            unescape_html=self.unescape_html,
            split_fractions=self.split_fractions,
            split_seed=self.split_seed,
            split_file=self.split_file,
            split_scope=self.split_scope,
            mechanism_files=self.mechanism_files,
            cv_folds=self.cv_folds,
            cv_fold=self.cv_fold,
            cache_dir=self.cache_dir,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.prepared is not None:
            return
        prepared = self._prepare()
        for split in SPLITS:
            dataset = prepared.datasets[split]
            prepared.datasets[split] = dataset.add_column("index", list(range(len(dataset))))
        self.prepared = prepared
        self.collator = Collator(
            self.tokenizer.pad_token_id,
            token_columns=[rationale_column(m, p) for m in self.mechanisms for p in POLICIES],
            label_columns=[level_column(m) for m in self.mechanisms],
        )

    def dataset(self, split: str):
        if self.prepared is None:
            self.setup()
        return self.prepared.datasets[split]

    def level_counts(self, mechanism: str, split: str = "train") -> list[int]:
        """Rows per level (0, 1, 2) of ``mechanism`` in ``split`` (its unlabelled rows left out)."""
        return level_counts(self.dataset(split), mechanism)

    def inverse_frequency_weights(self) -> dict[str, list[float]]:
        """Per mechanism, level-loss weights n / (3 * n_c) from its labelled train rows."""
        weights = {}
        for m in self.mechanisms:
            counts = self.level_counts(m)
            total = sum(counts)
            weights[m] = [total / (3 * max(1, c)) for c in counts]
        return weights

    def _loader(self, split: str, **kwargs) -> DataLoader:
        return DataLoader(self.dataset(split), collate_fn=self.collator, num_workers=self.num_workers, **kwargs)

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        lengths = None
        if self.group_by_length:
            lengths = [len(r) for r in dataset["response_input_ids"]]
        self.train_sampler = ResumableSampler(len(dataset), self.seed, self.batch_size, lengths)
        return self._loader("train", batch_size=self.batch_size, sampler=self.train_sampler)

    def val_dataloader(self) -> DataLoader:
        return self.split_dataloader("dev")

    def test_dataloader(self) -> DataLoader:
        return self.split_dataloader("test")

    def split_dataloader(self, split: str) -> DataLoader:
        """A split for evaluation, its rows in order of response length (ties in dataset order), so
        that each batch is padded to about its own rows' length rather than to the longest row of
        the split (``scripts/bench_eval.py`` times both). The metrics are sums over rows, which the
        order does not change; the logged loss, a mean of per-batch means, moves a little."""
        dataset = self.dataset(split)
        lengths = [len(r) for r in dataset["response_input_ids"]]
        order = sorted(range(len(dataset)), key=lengths.__getitem__)
        return self._loader(split, batch_size=self.eval_batch_size, sampler=order)

    def seeker_dataloader(self) -> DataLoader:
        """Each distinct seeker post once (all splits), for the seeker cache: sorted by length, then
        seeker_id (a fixed order and batching, so the cache is the same in every run), so that a
        batch is padded to about its own posts' length (seeker posts are mostly short)."""
        rows: dict[int, list[int]] = {}
        for split in SPLITS:
            dataset = self.dataset(split)
            for seeker_id, ids in zip(dataset["seeker_id"], dataset["seeker_input_ids"], strict=True):
                rows.setdefault(seeker_id, ids)
        items = [
            {"seeker_id": sid, "seeker_input_ids": ids, "response_input_ids": [0], "response_mask": [0], "index": 0}
            for sid, ids in sorted(rows.items(), key=lambda row: (len(row[1]), row[0]))
        ]
        return DataLoader(items, batch_size=self.eval_batch_size, collate_fn=self.collator)
