"""End-to-end check: the prediction command reproduces the test metrics of training / evaluate.

    python scripts/check_predictions.py RUN_FOLDER [RUN_FOLDER ...] [--out DIR]

For each finished training run (a folder with metrics.json and its best checkpoint): take the
test split the checkpoint was evaluated on, write its (seeker, response) pairs to a CSV, score it
with the real `python -m empathy.predict` command, and compare the accuracy and macro-F1 of the
predicted levels with each mechanism's `test/<M>/acc` and `test/<M>/macro_f1` of the run, on the
pairs labelled for it. Prints one line per run and mechanism; exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from empathy import runner
from empathy.data.merge import IGNORE_INDEX, level_column
from empathy.evaluate import checkpoint_datamodule
from empathy.metrics import level_metrics
from empathy.models.module import EmpathyModule


def check(run: Path, out: Path) -> bool:
    result = json.loads((run / "metrics.json").read_text())
    ckpt = result["best_checkpoint"]
    module = EmpathyModule.from_checkpoint(ckpt)
    cfg = runner.compose_config("evaluate", [f"ckpt_path={ckpt}"])
    test = checkpoint_datamodule(cfg, module).dataset("test")
    mechanisms = module.mechanisms
    mechanism = runner.mechanisms_label(mechanisms)
    gold_column = {m: level_column(m) for m in mechanisms}
    pairs = out / f"{mechanism}-test-pairs.csv"
    with pairs.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "seeker_post", "response_post", *(f"gold_{m}" for m in mechanisms)])
        for i, row in enumerate(test):
            writer.writerow([i, row["seeker_post"], row["response_post"], *(row[gold_column[m]] for m in mechanisms)])
    scored = out / f"{mechanism}-test-scored.csv"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "empathy.predict",
            f"input={pairs}",
            f"output={scored}",
            f"models.{mechanism}={ckpt}",
            "overwrite=true",
            "progress=false",
            f"hydra.run.dir={out / ('predict-' + mechanism)}",
        ],
        check=True,
    )
    with scored.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    all_same = True
    for m in mechanisms:
        labelled = [r for r in rows if int(r[f"gold_{m}"]) != IGNORE_INDEX]
        preds = torch.tensor([int(r[f"{m}_level"]) for r in labelled])
        gold = torch.tensor([int(r[f"gold_{m}"]) for r in labelled])
        metric = level_metrics()
        metric.update(preds, gold)
        values = metric.compute()
        # a single-mechanism run of an earlier version logged test/acc
        prefix = f"test/{m}/" if f"test/{m}/acc" in result["metrics"] else "test/"
        expected = {k: result["metrics"][f"{prefix}{k}"] for k in ("acc", "macro_f1")}
        acc, f1 = float(values["acc"]), float(values["macro_f1"])
        same = abs(acc - expected["acc"]) < 1e-6 and abs(f1 - expected["macro_f1"]) < 1e-6
        all_same &= same
        print(
            f"{run}: {m} {len(labelled)} test pairs; predict acc {acc:.4f} macro-F1 {f1:.4f}; "
            f"training's {prefix}acc {expected['acc']:.4f} {prefix}macro_f1 {expected['macro_f1']:.4f}: "
            + ("identical" if same else "DIFFERENT")
        )
    return all_same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument(
        "--out", type=Path, default=None, help="where the pair and scored files go (default: a temp folder)"
    )
    args = parser.parse_args()
    runner.quiet_libraries()
    out = args.out or Path(tempfile.mkdtemp(prefix="check-predictions-"))
    out.mkdir(parents=True, exist_ok=True)
    ok = [check(run, out) for run in args.runs]
    sys.exit(0 if all(ok) else 1)


if __name__ == "__main__":
    main()
