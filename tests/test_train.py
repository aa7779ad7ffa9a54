"""Training and evaluation through the real Hydra entry points, on a tiny encoder and small data."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import DictConfig, open_dict

from empathy import runner
from empathy.data.synthetic import write_synthetic_epitome
from empathy.evaluate import evaluate
from empathy.train import train


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    return write_synthetic_epitome(tmp_path_factory.mktemp("epitome"), n_rows=80, seed=0)


def compose_cfg(name: str, overrides: list[str], data_dir: Path, out: Path) -> DictConfig:
    return runner.compose_config(name, overrides, data_dir=data_dir, output_dir=out)


def train_cfg(data_dir: Path, out: Path, *extra: str) -> DictConfig:
    return compose_cfg(
        "train",
        [
            "encoder=tiny",
            "logger=csv",
            "trainer.max_epochs=2",
            "trainer.precision=32-true",
            "trainer.accelerator=cpu",
            "++trainer.enable_progress_bar=false",
            "data.batch_size=8",
            "model.optimizer.lr=1e-3",
            "callbacks.resumable.every_n_train_steps=3",
            *extra,
        ],
        data_dir,
        out,
    )


def test_fast_dev_run_train_then_evaluate(synthetic_dir, tmp_path):
    cfg = train_cfg(synthetic_dir, tmp_path / "run", "debug=fast", "model=biencoder", "mechanism=IP")
    result = train(cfg, Path(cfg.paths.output_dir))
    metrics = result["metrics"]
    for key in ("acc", "macro_f1", "rationale_token_f1", "rationale_iou_f1"):
        assert 0.0 <= metrics[f"test/IP/{key}"] <= 1.0
        assert 0.0 <= metrics[f"dev/IP/{key}"] <= 1.0
    assert metrics["test/macro_f1"] == metrics["test/IP/macro_f1"]  # the mean over its one mechanism
    assert not any(k.startswith(("test/ER", "test/EX")) for k in metrics)
    for policy in ("paper", "strict"):
        assert f"test/IP/rationale_iou_f1_{policy}" in metrics
    assert result["mechanism"] == "IP" and result["mechanisms"] == ["IP"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["metrics"] == pytest.approx(metrics)
    assert (tmp_path / "run" / "split.csv").exists()
    assert (tmp_path / "run" / "resolved_config.yaml").exists()


@pytest.fixture(scope="module")
def trained_run(synthetic_dir, tmp_path_factory) -> tuple[DictConfig, dict]:
    out = tmp_path_factory.mktemp("trained")
    cfg = train_cfg(synthetic_dir, out, "model=biencoder", "mechanism=ER")
    return cfg, train(cfg, out)


def test_train_writes_best_checkpoint_and_evaluate_reproduces_it(trained_run, synthetic_dir, tmp_path):
    cfg, result = trained_run
    best = Path(result["best_checkpoint"])
    assert best.exists() and best.parent.name == "checkpoints"
    assert (best.parent / "last.ckpt").exists()
    # The checkpoint loads with weights_only=True: nothing but tensors and plain containers.
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["hyper_parameters"]["mechanisms"] == ["ER"]
    assert set(checkpoint["hyper_parameters"]["class_weights"]) == {"ER"}
    for split in ("test", "dev"):
        eval_cfg = compose_cfg(
            "evaluate",
            [f"ckpt_path={best}", f"split={split}", "++trainer.enable_progress_bar=false"],
            synthetic_dir,
            tmp_path,
        )
        with open_dict(eval_cfg):
            eval_cfg.paths.cache_dir = cfg.paths.cache_dir
        metrics = evaluate(eval_cfg, tmp_path)
        for key in (
            "macro_f1",
            *(
                f"ER/{k}"
                for k in ("acc", "macro_f1", "rationale_token_f1", "rationale_iou_f1", "rationale_iou_f1_paper")
            ),
        ):
            assert metrics[f"{split}/{key}"] == pytest.approx(result["metrics"][f"{split}/{key}"], abs=1e-6)
        assert (tmp_path / f"eval_{split}.json").exists()


def test_evaluate_refuses_a_checkpoint_of_another_mechanism_or_encoder(trained_run, synthetic_dir, tmp_path):
    _, result = trained_run
    best = result["best_checkpoint"]
    cfg = compose_cfg("evaluate", [f"ckpt_path={best}", "mechanism=IP"], synthetic_dir, tmp_path)
    with pytest.raises(ValueError, match="is a model of ER, but mechanism=IP"):
        evaluate(cfg, tmp_path)
    cfg = compose_cfg("evaluate", [f"ckpt_path={best}", "encoder=minilm"], synthetic_dir, tmp_path)
    with pytest.raises(ValueError, match="trained with encoder tiny"):
        evaluate(cfg, tmp_path)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_same_seed_gives_identical_metrics(trained_run, synthetic_dir, tmp_path):
    cfg, result = trained_run
    again = train(train_cfg(synthetic_dir, tmp_path, "model=biencoder", "mechanism=ER"), tmp_path)
    assert again["metrics"] == result["metrics"]
    assert_same_weights(final_weights(tmp_path), final_weights(Path(cfg.paths.output_dir)))


class _Crash(pl.Callback):
    """Kills training after ``step`` optimiser steps, like a job killed mid-epoch."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_resume_after_interrupt_ends_with_the_same_metrics(trained_run, synthetic_dir, tmp_path, monkeypatch):
    uninterrupted_cfg, uninterrupted = trained_run
    out = tmp_path / "killed"
    cfg = train_cfg(synthetic_dir, out, "model=biencoder", "mechanism=ER")
    build = runner.build_callbacks
    # Epoch 0 has 8 steps (60 train rows / 8); last.ckpt is written at steps 3 and 6, and at
    # epoch end (8): crash at step 11, mid-epoch 1, three steps after the checkpoint at step 9.
    monkeypatch.setattr(runner, "build_callbacks", lambda c, **kw: [*build(c, **kw), _Crash(step=11)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, out)
    monkeypatch.setattr(runner, "build_callbacks", build)
    last = out / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 9
    with open_dict(cfg):
        cfg.ckpt_path = "last"
    resumed = train(cfg, out)
    assert resumed["metrics"] == uninterrupted["metrics"]
    # The final weights too: the metrics come from the best checkpoint, maybe an early one.
    assert_same_weights(final_weights(out), final_weights(Path(uninterrupted_cfg.paths.output_dir)))


class _Snapshot(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.seeker = {k: v.clone() for k, v in pl_module.net.seeker_encoder.state_dict().items()}
        self.response = {k: v.clone() for k, v in pl_module.net.response_encoder.state_dict().items()}

    def on_train_end(self, trainer, pl_module):
        self.seeker_after = pl_module.net.seeker_encoder.state_dict()
        self.response_after = pl_module.net.response_encoder.state_dict()


def test_frozen_seeker_is_unchanged_and_response_is_trained(synthetic_dir, tmp_path, monkeypatch):
    snapshot = _Snapshot()
    build = runner.build_callbacks
    monkeypatch.setattr(runner, "build_callbacks", lambda c, **kw: [*build(c, **kw), snapshot])
    train(train_cfg(synthetic_dir, tmp_path, "trainer.max_epochs=1", "test=false"), tmp_path)
    for name, before in snapshot.seeker.items():
        assert torch.equal(before, snapshot.seeker_after[name]), name
    changed = [n for n, before in snapshot.response.items() if not torch.equal(before, snapshot.response_after[n])]
    assert len(changed) > len(snapshot.response) // 2


# a confusion matrix per mechanism, test/<M>/confusion_matrix
@pytest.mark.parametrize(
    ("mechanism", "image_folders"),
    [("IP", ["test/IP"]), ("all", ["test/ER", "test/IP", "test/EX"])],
    ids=["one", "joint"],
)
def test_wandb_offline_run_has_metrics_and_confusion_image(
    mechanism, image_folders, synthetic_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = train_cfg(
        synthetic_dir,
        tmp_path,
        f"mechanism={mechanism}",
        "logger=wandb",
        "trainer.max_epochs=1",
        "group=pytest",
        "trainer.log_every_n_steps=2",
    )
    result = train(cfg, tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    for folder in image_folders:
        images = list(runs[0].glob(f"files/media/images/{folder}/confusion_matrix_*.png"))
        assert images, f"no confusion-matrix image logged under {folder}"
    assert result["metrics"]["test/macro_f1"] >= 0
    (records,) = runs[0].glob("run-*.wandb")  # the offline run's records (protobuf)
    assert b"lr-AdamW" in records.read_bytes()  # the learning rate is logged
    import wandb

    assert wandb.run is None  # finished


def test_a_failed_run_closes_its_wandb_run(synthetic_dir, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    build = runner.build_callbacks
    monkeypatch.setattr(runner, "build_callbacks", lambda c, **kw: [*build(c, **kw), _Crash(step=2)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(train_cfg(synthetic_dir, tmp_path, "logger=wandb", "trainer.max_epochs=1"), tmp_path)
    assert wandb.run is None


def test_dev_metrics_are_logged_once_per_epoch_and_progress_reaches_the_log(synthetic_dir, tmp_path, caplog):
    import logging

    cfg = train_cfg(synthetic_dir, tmp_path, "trainer.max_epochs=2", "callbacks.epoch_summary.every_n_minutes=1e-9")
    with caplog.at_level(logging.INFO):
        result = train(cfg, tmp_path)
    with (tmp_path / "csv" / "version_0" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(1 for r in rows if r.get("dev/macro_f1")) == 2  # the two epochs', not a third from the end
    assert any(r.get("lr-AdamW") for r in rows)
    text = caplog.text
    assert "training ER, IP, EX for 2 epochs" in text
    assert "epoch 1/2 step 1/" in text and "s/step" in text and "epoch 2/2  train/loss=" in text
    assert f"run folder {tmp_path}: metrics.json, best checkpoint {result['best_checkpoint']}" in text
    assert "eval mode at the start of training" not in text  # said once, as an info line
    assert "frozen seeker encoder's" in text


def test_the_progress_bar_counts_epochs_from_one(synthetic_dir, tmp_path, capfd):
    cfg = train_cfg(synthetic_dir, tmp_path, "trainer.max_epochs=1")
    with open_dict(cfg):
        cfg.trainer.enable_progress_bar = True
    train(cfg, tmp_path)
    out = capfd.readouterr().out  # Lightning draws the training bar on stdout
    assert "Epoch 1/1" in out and "Epoch 0" not in out


def test_sweep_jobs_that_differ_in_any_value_get_distinct_wandb_names(monkeypatch, tmp_path):
    cfg = compose_cfg("train", ["logger=wandb", "encoder=tiny"], tmp_path, tmp_path)
    names = []
    for overrides in (["model.optimizer.lr=1e-3", "seed=1"], ["model.optimizer.lr=2e-4", "seed=1"]):
        monkeypatch.setattr(runner, "sweep_overrides", lambda o=overrides: o)
        monkeypatch.setattr(runner, "sweep_name", lambda: "sweep")
        (logger,) = runner.build_loggers(cfg, tmp_path)
        names.append(logger._wandb_init["name"])
    assert names[0] != names[1] and "model.optimizer.lr=1e-3" in names[0] and names[0].startswith("joint-tiny-seed12")


# ------------------------------------------------------------------------------------- mechanism=
def test_mechanism_chooses_the_mechanisms_of_the_one_model(tmp_path):
    """mechanism=all (the default) trains ER, IP and EX in one model; mechanism=IP a model of IP
    alone, with either preset (model=joint, the default, or model=biencoder)."""
    assert runner.config_mechanisms(compose_cfg("train", [], tmp_path, tmp_path)) == ["ER", "IP", "EX"]
    for overrides in (["mechanism=IP"], ["model=biencoder", "mechanism=IP"]):
        cfg = compose_cfg("train", overrides, tmp_path, tmp_path)
        assert runner.config_mechanisms(cfg) == ["IP"] and cfg.model._target_ == "empathy.models.module.EmpathyModule"
    assert runner.mechanisms_label(["IP"]) == "IP" and runner.mechanisms_label(["ER", "IP", "EX"]) == "joint"


def test_the_entry_point_trains_one_mechanism_with_the_joint_preset(synthetic_dir, tmp_path):
    logs, cache = tmp_path / "logs", tmp_path / "cache"
    command = [
        sys.executable, "-m", "empathy.train", "mechanism=IP", "encoder=tiny", "debug=fast", "logger=csv",
        f"paths.data_dir={synthetic_dir}", f"paths.log_dir={logs}", f"paths.cache_dir={cache}",
        "trainer.precision=32-true", "trainer.accelerator=cpu", "++trainer.enable_progress_bar=false",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("EMPATHY_LOG_DIR", None)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (metrics,) = logs.rglob("metrics.json")
    result = json.loads(metrics.read_text())
    assert result["mechanisms"] == ["IP"] and "test/IP/macro_f1" in result["metrics"]


def test_resumable_checkpoint_saves_mid_epoch_by_minutes_or_steps(tmp_path, monkeypatch):
    from empathy.models import callbacks

    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])

    class Trainer:  # what the callback reads of a Lightning Trainer
        num_training_batches, current_epoch, is_global_zero, global_step = 100, 0, True, 0
        strategy = type("Strategy", (), {"broadcast": staticmethod(lambda obj, src=0: obj)})()

        def __init__(self):
            self.saved = []

        def save_checkpoint(self, path, weights_only=None):
            self.saved.append(self.global_step)
            Path(path).write_bytes(b"ckpt")

    def steps_saved(**kwargs) -> list[int]:
        callback, trainer = callbacks.ResumableCheckpoint(tmp_path, **kwargs), Trainer()
        clock[0] = 0.0
        callback.on_train_start(trainer, None)
        for step in range(1, 100):  # one minute a step; the last batch is left to the epoch end
            clock[0] += 60.0
            trainer.global_step = step
            callback.on_train_batch_end(trainer, None, None, None, step - 1)
        return trainer.saved

    assert steps_saved(every_n_minutes=10)[:3] == [10, 20, 30]
    assert steps_saved(every_n_minutes=None, every_n_train_steps=30) == [30, 60, 90]
    assert steps_saved(every_n_minutes=0, every_n_train_steps=0) == []
    assert (tmp_path / "last.ckpt").read_bytes() == b"ckpt"
    with pytest.raises(ValueError, match="every_n_minutes"):
        callbacks.ResumableCheckpoint(tmp_path, every_n_minutes=-1)


def test_the_seeker_cache_is_stored_and_loaded_by_a_run_with_the_same_encoder_and_posts(synthetic_dir, tmp_path):
    cfg = train_cfg(synthetic_dir, tmp_path / "run", "model=biencoder", "mechanism=ER")
    datamodule = runner.build_datamodule(cfg)
    datamodule.setup()
    store = tmp_path / "store"
    first = runner.build_module(cfg, datamodule)
    first.build_seeker_cache(datamodule.seeker_dataloader(), store=store)
    (saved,) = store.glob("*.pt")
    assert saved.with_suffix(".lock").is_file()  # the lock that makes one process build it at a time
    assert not [p for p in store.iterdir() if p.name.startswith(".")]

    def must_not_encode(*args, **kwargs):
        raise AssertionError("the stored states should have been loaded")

    second = runner.build_module(cfg, datamodule)
    second.load_state_dict(first.state_dict())
    second.net.encode_seeker = must_not_encode
    second.build_seeker_cache(datamodule.seeker_dataloader(), store=store)
    assert second._seeker_cache.keys() == first._seeker_cache.keys()
    assert all(torch.equal(second._seeker_cache[k], first._seeker_cache[k]) for k in first._seeker_cache)

    # other seeker weights: another key, the states are computed (and stored) again
    third = runner.build_module(cfg, datamodule)
    third.load_state_dict(first.state_dict())
    with torch.no_grad():
        next(third.net.seeker_encoder.parameters()).add_(1.0)
    third.build_seeker_cache(datamodule.seeker_dataloader(), store=store)
    assert len(list(store.glob("*.pt"))) == 2
    assert not all(torch.equal(third._seeker_cache[k], first._seeker_cache[k]) for k in first._seeker_cache)


def test_file_lock_makes_another_process_wait(tmp_path):
    import fcntl
    import subprocess
    import sys

    lock = tmp_path / "cache" / "entry.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from empathy.io import file_lock\n"
            f"with file_lock({str(lock)!r}):\n    print('held', flush=True); sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with open(lock) as handle:
            with pytest.raises(BlockingIOError):
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.wait(timeout=30) == 0
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: taken at once
    finally:
        holder.kill()


def test_prepare_data_reads_nothing_once_the_datamodule_is_set_up(synthetic_dir, tmp_path, monkeypatch):
    cfg = train_cfg(synthetic_dir, tmp_path / "run")
    datamodule = runner.build_datamodule(cfg)
    datamodule.setup()

    def must_not_prepare():
        raise AssertionError("prepared again")

    monkeypatch.setattr(datamodule, "_prepare", must_not_prepare)
    datamodule.prepare_data()  # what Lightning calls at each fit / validate / test
    fresh = runner.build_datamodule(cfg)
    monkeypatch.setattr(fresh, "_prepare", must_not_prepare)
    with pytest.raises(AssertionError, match="prepared again"):
        fresh.prepare_data()


def test_evaluation_batches_are_length_sorted_and_hold_every_row_once(synthetic_dir, tmp_path):
    cfg = train_cfg(synthetic_dir, tmp_path / "run", "data.eval_batch_size=4")
    datamodule = runner.build_datamodule(cfg)
    datamodule.setup()
    for split, loader in (
        ("dev", datamodule.val_dataloader()),
        ("test", datamodule.test_dataloader()),
        ("train", datamodule.split_dataloader("train")),
    ):
        batches = list(loader)
        seen = [int(i) for b in batches for i in b["index"]]
        assert sorted(seen) == list(range(len(datamodule.dataset(split))))  # every row, once
        lengths = [int(m.sum()) for b in batches for m in b["response_attention_mask"]]
        assert lengths == sorted(lengths) and len(set(lengths)) > 1
        # each batch is padded to its own longest row
        assert all(b["response_input_ids"].shape[1] == int(b["response_attention_mask"].sum(1).max()) for b in batches)


def test_a_training_run_keeps_the_seeker_cache_in_the_data_cache(synthetic_dir, tmp_path):
    cfg = train_cfg(synthetic_dir, tmp_path / "run", "debug=fast", "model=biencoder", "mechanism=EX")
    train(cfg, Path(cfg.paths.output_dir))
    assert len(list((Path(cfg.paths.cache_dir) / "seeker_states").glob("*.pt"))) == 1


def test_each_process_takes_its_share_of_the_cores(monkeypatch):
    from empathy.models.callbacks import cpu_share

    class _Trainer:
        def __init__(self, world_size: int, device: str = "cpu") -> None:
            self.world_size = self.num_devices = world_size
            self.strategy = type("S", (), {"root_device": torch.device(device)})()

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr("empathy.hardware.usable_cores", lambda: 8)
    assert cpu_share(_Trainer(1)) is None  # one process: torch's own choice
    assert cpu_share(_Trainer(2)) == 4  # two DDP ranks on the CPU: half the cores each
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert cpu_share(_Trainer(1)) == 3  # a cluster job: the cores it was given
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_share(_Trainer(2)) is None  # the user's choice stands
