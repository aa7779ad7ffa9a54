"""End-to-end check: the prediction command reproduces the test metrics of training / evaluate.

    python scripts/check_predictions.py RUN_FOLDER [RUN_FOLDER ...] [--out DIR]

For each finished training run (a folder with metrics.json and its best checkpoint): take the
test split the checkpoint was evaluated on, write its (seeker, response) pairs to a CSV, score it
with the real `python -m empathy.predict` command, and compare the accuracy and macro-F1 of the
predicted levels with the run's `test/acc` and `test/macro_f1`. Prints one line per run; exits 1 on a mismatch.
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
from empathy.evaluate import checkpoint_datamodule
from empathy.metrics import level_metrics
from empathy.models.module import EmpathyModule


def check(run: Path, out: Path) -> bool:
    result = json.loads((run / "metrics.json").read_text())
    ckpt, mechanism = result["best_checkpoint"], result["mechanism"]
    module = EmpathyModule.from_checkpoint(ckpt)
    cfg = runner.compose_config("evaluate", [f"ckpt_path={ckpt}"])
    test = checkpoint_datamodule(cfg, module).dataset("test")

    pairs = out / f"{mechanism}-test-pairs.csv"
    with pairs.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "seeker_post", "response_post", "gold_level"])
        for i, row in enumerate(test):
            writer.writerow([i, row["seeker_post"], row["response_post"], row["level"]])
    scored = out / f"{mechanism}-test-scored.csv"
    subprocess.run(
        [sys.executable, "-m", "empathy.predict", f"input={pairs}", f"output={scored}", f"models.{mechanism}={ckpt}",
         "overwrite=true", "progress=false", f"hydra.run.dir={out / ('predict-' + mechanism)}"],
        check=True,
    )
    with scored.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    preds = torch.tensor([int(r[f"{mechanism}_level"]) for r in rows])
    gold = torch.tensor([int(r["gold_level"]) for r in rows])
    metric = level_metrics()
    metric.update(preds, gold)
    values = metric.compute()
    expected = result["metrics"]
    acc, f1 = float(values["acc"]), float(values["macro_f1"])
    same = abs(acc - expected["test/acc"]) < 1e-6 and abs(f1 - expected["test/macro_f1"]) < 1e-6
    print(
        f"{run}: {mechanism} {len(rows)} test pairs; predict acc {acc:.4f} macro-F1 {f1:.4f}; "
        f"training's test/acc {expected['test/acc']:.4f} test/macro_f1 {expected['test/macro_f1']:.4f}: "
        + ("identical" if same else "DIFFERENT")
    )
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="where the pair and scored files go (default: a temp folder)")
    args = parser.parse_args()
    runner.quiet_libraries()
    out = args.out or Path(tempfile.mkdtemp(prefix="check-predictions-"))
    out.mkdir(parents=True, exist_ok=True)
    ok = [check(run, out) for run in args.runs]
    sys.exit(0 if all(ok) else 1)


if __name__ == "__main__":
    main()
