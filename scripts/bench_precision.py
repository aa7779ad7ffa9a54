"""Prediction in fp32 against bf16 autocast on this CPU: speed, and how often the levels agree.

    python scripts/bench_precision.py                                  # packaged MiniLM, random heads
    python scripts/bench_precision.py --encoder mpnet --rows 300       # all-mpnet-base-v2 (empathy.download)
    python scripts/bench_precision.py --model <run>/checkpoints/best-epoch05.ckpt --rows 3084

One process, the same rows, the precisions taking turns (--rounds) so that load from other
processes hits both alike: the bare batched forward pass of the model (prediction's batches:
length-sorted, padded to their own longest post, one seeker pass), in fp32 and under bf16
autocast, at --max-len 64 by default. Prints pairs/s of each and their ratio, whether this CPU has
native bf16 (``precision=auto`` picks bf16 only then), and per mechanism the share of rows whose
bf16 level equals the fp32 level and the largest probability difference. Rows come from the EPITOME
CSVs (EMPATHY_DATA_DIR, else data/epitome-reddit or ../shared/data/epitome-reddit beside the checkout).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from empathy import CONFIG_DIR
from empathy.hardware import cpu_has_native_bf16
from empathy.models.checkpoint import random_heads_model
from empathy.predict import EmpathyPredictor, load_model

ROOT = Path(__file__).resolve().parents[1]


def data_file() -> Path:
    for folder in (os.environ.get("EMPATHY_DATA_DIR"), ROOT / "data" / "epitome-reddit",
                   ROOT.parent / "shared" / "data" / "epitome-reddit"):  # fmt: skip
        if folder and (Path(folder) / "emotional-reactions-reddit.csv").is_file():
            return Path(folder) / "emotional-reactions-reddit.csv"
    raise SystemExit("no EPITOME data: set EMPATHY_DATA_DIR (see data/README.md)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a checkpoint or export folder (default: --encoder with random heads)")
    parser.add_argument(
        "--encoder", default="minilm", help="conf/encoder option of the random-head model (default: minilm)"
    )
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--max-len", type=int, default=64, help="tokens per post (a checkpoint keeps its own)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    if args.model:
        model, label = load_model(args.model), args.model
    else:
        encoder = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "encoder" / f"{args.encoder}.yaml"))
        model, label = random_heads_model(encoder, ["ER", "IP", "EX"], args.max_len), f"{args.encoder}, random heads"
    with data_file().open(encoding="utf-8", newline="") as f:
        rows = [(r["seeker_post"], r["response_post"]) for r in csv.DictReader(f)][: args.rows]
    seekers, responses = [s for s, _ in rows], [r for _, r in rows]
    predictors = {name: EmpathyPredictor({"joint": model}, precision=name, batch_size=64) for name in ("32", "bf16")}
    outputs, seconds = {}, {name: [] for name in predictors}
    for _ in range(args.rounds):
        for name, predictor in predictors.items():
            started = time.perf_counter()
            outputs[name] = predictor.predict(seekers, responses)
            seconds[name].append(time.perf_counter() - started)
    fp32, bf16 = statistics.mean(seconds["32"]), statistics.mean(seconds["bf16"])
    print(
        f"model {label}; {len(rows)} rows; torch threads {torch.get_num_threads()}; "
        f"native bf16 on this CPU: {cpu_has_native_bf16()}"
    )
    print(
        f"fp32 {len(rows) / fp32:8.1f} pairs/s   bf16 autocast {len(rows) / bf16:8.1f} pairs/s   "
        f"bf16/fp32 speed {fp32 / bf16:.2f}x"
    )
    for m, out in outputs["32"].items():
        other = outputs["bf16"][m]
        same = float((out.levels == other.levels).mean())
        print(
            f"{m}: levels equal on {100 * same:.2f}% of rows; largest probability difference "
            f"{abs(out.probs - other.probs).max():.4f}"
        )


if __name__ == "__main__":
    main()
