"""The training run's callbacks: resumable checkpoints, progress in the log, the progress bar and
the job's share of the CPU cores.

Resumable checkpoints let a run killed mid-epoch continue bit for bit. Lightning restores the
weights, optimiser, scheduler and loop counters from a checkpoint; to end a resumed run with
exactly the metrics of an uninterrupted one we also need (a) the global RNG states (dropout) and
(b) the position in the epoch's shuffled order. ``ResumableCheckpoint`` saves ``last.ckpt`` with
both at every epoch end and within an epoch every ``every_n_minutes`` of training (or every
``every_n_train_steps`` optimiser steps), and the train loader
(``empathy.data.datamodule.ResumableSampler``) skips the batches that were already seen.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

log = logging.getLogger(__name__)


class ResumableCheckpoint(pl.Callback):
    """``last.ckpt`` at every epoch end and, within an epoch, when ``every_n_minutes`` have passed
    since the last save (decided on rank 0 and broadcast, so every DDP rank saves together) or
    every ``every_n_train_steps`` optimiser steps; 0 or None turns either off.

    A checkpoint with the optimiser state is hundreds of MB and takes seconds to write: saving
    every few steps would cost much of a GPU run's time. Minutes bound the work a preempted job
    loses, whatever the hardware."""

    def __init__(
        self,
        dirpath: str | os.PathLike,
        every_n_train_steps: int | None = 0,
        every_n_minutes: float | None = 10.0,
        filename: str = "last.ckpt",
    ) -> None:
        if every_n_minutes is not None and every_n_minutes < 0:
            raise ValueError(f"every_n_minutes must be >= 0 or null, got {every_n_minutes}")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps or 0
        self.every_n_minutes = every_n_minutes or 0.0
        self.filename = filename
        self._position: dict[str, int] | None = None
        self._pending_rng: dict[str, Any] | None = None
        self._last_save = time.monotonic()

    @property
    def state_key(self) -> str:
        return "ResumableCheckpoint"

    # Saving --------------------------------------------------------------------------------
    def _due(self, trainer: pl.Trainer) -> bool:
        if self.every_n_train_steps > 0 and trainer.global_step % self.every_n_train_steps == 0:
            return True
        if self.every_n_minutes > 0:
            late = time.monotonic() - self._last_save >= 60 * self.every_n_minutes
            return bool(trainer.strategy.broadcast(late, src=0))
        return False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the end-of-epoch save covers it
        if not self._due(trainer):
            return
        self._position = {"epoch": trainer.current_epoch, "batches_done": batch_idx + 1}
        self.save(trainer)
        self._position = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        # The epoch is complete (validation included): a resume starts the next one afresh.
        self._position = {"epoch": trainer.current_epoch + 1, "batches_done": 0}
        self.save(trainer)
        self._position = None

    def save(self, trainer: pl.Trainer) -> None:
        """Write ``last.ckpt`` atomically (temp file, then rename)."""
        path = self.dirpath / self.filename
        tmp = path.with_name(path.name + ".tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # the full state: a resume continues bit for bit
        if trainer.is_global_zero:
            os.replace(tmp, path)
        self._last_save = time.monotonic()

    def state_dict(self) -> dict[str, Any]:
        return {
            "position": self._position,
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
        }

    # Loading -------------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        position = state_dict.get("position")
        self._pending_rng = state_dict
        self._resume_position = position

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._last_save = time.monotonic()
        position = getattr(self, "_resume_position", None)
        if position:
            sampler = getattr(trainer.datamodule, "train_sampler", None) if trainer.datamodule else None
            if sampler is not None and hasattr(sampler, "resume_at"):
                sampler.resume_at(position["epoch"], position["batches_done"])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        if self._pending_rng is not None:
            torch.set_rng_state(self._pending_rng["torch_rng"])
            random.setstate(_as_python_state(self._pending_rng["python_rng"]))
            self._pending_rng = None


def _as_python_state(state: Any) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


class EpochSummary(pl.Callback):
    """Progress in the run's log file (and on a terminal without a progress bar: cluster jobs,
    CI): what the run will do at its start, a line every ``every_n_minutes`` within an epoch
    (step, loss, seconds a step, the epoch's remaining minutes) and one per epoch (train loss, dev
    metrics, seconds). Epochs are counted from 1, as the progress bar (:class:`ProgressBar`)
    counts them."""

    KEYS = ("train/loss", "dev/loss", "dev/macro_f1")

    def __init__(self, every_n_minutes: float | None = 1.0) -> None:
        self.every_n_minutes = every_n_minutes or 0.0
        self._started = self._reported = time.perf_counter()
        self._first_batch: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        log.info(
            "training %s for %d epochs of %s steps on %s (precision %s); checkpoints in %s",
            ", ".join(getattr(pl_module, "mechanisms", ())) or type(pl_module).__name__,
            trainer.max_epochs,
            trainer.num_training_batches,
            trainer.strategy.root_device,
            trainer.precision,
            trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else "(none)",
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._started = self._reported = time.perf_counter()
        self._first_batch = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._first_batch is None:
            self._first_batch = batch_idx  # a resumed epoch starts part-way
        now = time.perf_counter()
        if not trainer.is_global_zero or not self.every_n_minutes or now - self._reported < 60 * self.every_n_minutes:
            return
        self._reported = now
        done, total = batch_idx + 1, trainer.num_training_batches
        per_step = (now - self._started) / max(1, done - self._first_batch)
        loss = trainer.callback_metrics.get("train/loss")
        log.info(
            "epoch %d/%d step %d/%d%s  %.2f s/step, about %.1f min left in the epoch",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            done,
            total,
            "" if loss is None else f"  train/loss={float(loss):.4f}",
            per_step,
            per_step * (total - done) / 60,
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        mechanisms = getattr(pl_module, "mechanisms", ())
        keys = [*self.KEYS, *(f"dev/{m}/{k}" for m in mechanisms for k in ("macro_f1", "rationale_iou_f1"))]
        values = " ".join(f"{k}={float(metrics[k]):.4f}" for k in keys if k in metrics)
        seconds = time.perf_counter() - getattr(self, "_started", time.perf_counter())
        log.info("epoch %d/%d  %s  (%.1f s)", trainer.current_epoch + 1, trainer.max_epochs, values, seconds)


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar with epochs counted from 1 (``Epoch 1/6``), as the log counts them."""

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        # TQDMProgressBar's own, with the description set before the bar is first drawn
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset()
        self.train_progress_bar.total = convert_inf(self.total_train_batches)
        self.train_progress_bar.initial = 0
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")


def _launcher_cpus() -> int | None:
    """``hydra.launcher.cpus_per_task`` inside a job of a submitit launcher (``cluster=...``)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    cpus = (HydraConfig.get().get("launcher") or {}).get("cpus_per_task")
    return int(cpus) if isinstance(cpus, int) and cpus > 0 else None


def cpu_share(trainer: pl.Trainer) -> int | None:
    """The torch threads of this process when no pool decides them: None when ``OMP_NUM_THREADS``
    is set (the user's choice) or when nothing calls for a change; the cores a cluster job was
    given (``SLURM_CPUS_PER_TASK``, or the submitit launcher's ``cpus_per_task``, which its local
    executor does not enforce): torch would otherwise take every core of the machine; for the ranks
    of one run on the CPU (``trainer=ddp``), the usable cores shared among the ranks of this machine."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, int(os.environ["SLURM_CPUS_PER_TASK"]))
    if (cpus := _launcher_cpus()) is not None:
        return cpus
    if trainer.world_size > 1 and trainer.strategy.root_device.type == "cpu":
        from empathy.hardware import usable_cores

        return max(1, usable_cores() // max(1, trainer.num_devices))
    return None


class ThreadShare(pl.Callback):
    """This job's share of the machine's CPU cores.

    - With ``path`` (a file holding one integer, re-read before every training, validation and
      test batch; one ``stat`` each): the share a local pool gives it (``empathy.study.local_pool``:
      ``scripts/reproduce_table.py --jobs N`` runs N training jobs at once and gives the cores of a
      finished job to those still running). No such file: nothing changes.
    - Without: :func:`cpu_share` (a cluster job's allocated cores; DDP ranks on the CPU share the
      cores) instead of every process taking every core (oversubscribed cores run many times
      slower).
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else None
        self._stamp: int | None = None
        self.changes: list[tuple[int, int]] = []  # (global step, threads) at each change

    def refresh(self, step: int = 0) -> None:
        if self.path is None:
            return
        try:
            stamp = self.path.stat().st_mtime_ns
            if stamp == self._stamp:
                return
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return
        self._stamp = stamp
        try:
            threads = int(text)
        except ValueError:
            raise ValueError(f"{self.path}: expected a thread count (one integer), got {text!r}") from None
        if threads < 1:
            raise ValueError(f"{self.path}: expected a thread count >= 1, got {threads}")
        if threads != torch.get_num_threads():
            log.info("threads: %d -> %d at step %d (%s)", torch.get_num_threads(), threads, step, self.path)
            torch.set_num_threads(threads)
            self.changes.append((step, threads))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        share = cpu_share(trainer) if self.path is None else None
        if share is not None and share != torch.get_num_threads():
            log.info("threads: %d -> %d (this process's share of the CPU cores)", torch.get_num_threads(), share)
            torch.set_num_threads(share)
        self.refresh(trainer.global_step)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.refresh(trainer.global_step)

    def on_validation_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.refresh(trainer.global_step)

    def on_test_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.refresh(trainer.global_step)
