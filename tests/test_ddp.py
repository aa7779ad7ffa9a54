"""DDP for real on the CPU (2 processes, gloo) through the entry point: the test metrics of a
checkpoint, synchronised over both processes, equal a single-process evaluation of it, and the
run's files are written once.

Exactness: Lightning's DistributedSampler pads an evaluation split to a multiple of the world size
with repeated examples (it does not drop any), so the synchronised metrics would count up to
world_size - 1 examples twice. The data here is sized so that dev and test are multiples of 2
(asserted below); for final numbers on other sizes, evaluate the checkpoint on one device
(`python -m empathy.evaluate`), see docs/experiments.md.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from empathy import CONFIG_DIR
from empathy.data.synthetic import write_synthetic_epitome
from empathy.evaluate import evaluate

WORLD_SIZE = 2


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process_and_writes_once(tmp_path):
    data = write_synthetic_epitome(tmp_path / "data", n_rows=40, seed=0)
    logs, cache = tmp_path / "logs", tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "empathy.train", "trainer=ddp", "trainer.accelerator=cpu",
        f"trainer.devices={WORLD_SIZE}",
        "model=biencoder", "encoder=tiny", "debug=limit", "logger=csv", "data.eval_batch_size=2",
        f"paths.data_dir={data}",
        f"paths.log_dir={logs}", f"paths.cache_dir={cache}", "++trainer.enable_progress_bar=false",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (logs / "train" / "runs").iterdir()

    with (run / "split.csv").open() as f:
        sizes = collections.Counter(row["split"] for row in csv.DictReader(f))
    assert sizes["test"] % WORLD_SIZE == 0 and sizes["dev"] % WORLD_SIZE == 0, sizes

    # Both processes ran in this folder; files are written by rank 0 only, once.
    assert (run / "train_ddp_process_1.log").exists()
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and checkpoints[1] == "last.ckpt" and checkpoints[0].startswith("best-"), checkpoints
    assert sorted(p.name for p in (run / "csv").iterdir()) == ["version_0"]
    result = json.loads((run / "metrics.json").read_text())

    # The same checkpoint on one process.
    best = run / "checkpoints" / checkpoints[0]
    assert result["best_checkpoint"] == str(best)
    for split in ("test", "dev"):
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            cfg = compose(
                "evaluate", overrides=[f"ckpt_path={best}", f"split={split}", "++trainer.enable_progress_bar=false"]
            )
        with open_dict(cfg):
            cfg.paths.data_dir, cfg.paths.cache_dir = str(data), str(cache)
            cfg.paths.output_dir = cfg.paths.log_dir = str(tmp_path / "eval")
        single = evaluate(cfg, tmp_path / "eval")
        keys = ["macro_f1", *(f"{m}/{key}" for m in ("ER", "IP", "EX") for key in (
            "acc", "macro_f1", "f1_level0", "rationale_token_f1_paper", "rationale_token_f1_strict",
            "rationale_iou_f1_paper", "rationale_iou_f1_strict"))]  # fmt: skip
        for key in keys:
            assert result["metrics"][f"{split}/{key}"] == pytest.approx(
                single[f"{split}/{key}"], abs=1e-6, nan_ok=True
            ), (split, key)


def test_bf16_mixed_precision_is_selectable(tmp_path):
    """trainer.precision=bf16-mixed (trainer=gpu's default) trains and evaluates; on the CPU it is
    slower than fp32 without AVX512-BF16, hence 32-true there by default."""
    from empathy.train import train

    data = write_synthetic_epitome(tmp_path / "data", n_rows=40, seed=0)
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["encoder=tiny", "debug=fast", "trainer.accelerator=cpu", "trainer.precision=bf16-mixed",
                       "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false"],
        )  # fmt: skip
    with open_dict(cfg):
        cfg.paths.data_dir, cfg.paths.cache_dir = str(data), str(tmp_path / "cache")
        cfg.paths.output_dir = cfg.paths.log_dir = str(tmp_path)
    metrics = train(cfg, tmp_path)["metrics"]
    assert 0.0 <= metrics["test/macro_f1"] <= 1.0 and metrics["test/loss"] == metrics["test/loss"]
