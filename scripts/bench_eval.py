"""Time the evaluation of a trained checkpoint on a split with its rows in dataset order against
length-sorted order (what ``EpitomeDataModule.split_dataloader`` gives), in one
process, taking turns; and check that both give the same metrics. As in a training run, the seeker
states come from the seeker cache (built first, not timed).

    python scripts/bench_eval.py outputs/reproduce/<run>/0/checkpoints/best-epoch05.ckpt [--split test] [--rounds 2]

Prints the padded response tokens of each order, the seconds of each round and the ratio, and the
largest difference between the two orders' metrics (the loss apart: it is a mean of per-batch
means, so it moves with the batches). Needs the EPITOME CSVs (EMPATHY_DATA_DIR).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--split", default="test", choices=["train", "dev", "test"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: every core)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    import tempfile
    from pathlib import Path

    import lightning.pytorch as pl
    import torch

    from empathy import runner
    from empathy.evaluate import checkpoint_datamodule
    from empathy.hardware import usable_cores
    from empathy.models.module import EmpathyModule

    runner.quiet_libraries()
    torch.set_num_threads(args.threads or usable_cores())
    module = EmpathyModule.from_checkpoint(args.checkpoint)
    cfg = runner.compose_config(
        "evaluate", [f"ckpt_path={args.checkpoint}", f"split={args.split}"], output_dir=Path(tempfile.mkdtemp())
    )
    datamodule = checkpoint_datamodule(cfg, module)
    if module.caches_seeker:  # as in a training run's evaluation: seeker states from the cache
        module.build_seeker_cache(datamodule.seeker_dataloader())
    loaders = {
        "dataset order": datamodule._loader(args.split, batch_size=datamodule.eval_batch_size),
        "length-sorted": datamodule.split_dataloader(args.split),
    }
    for name, loader in loaders.items():
        padded = sum(b["response_input_ids"].numel() for b in loader)
        print(f"{name}: {padded} padded response tokens", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in loaders}
    metrics: dict[str, dict[str, float]] = {}
    for r in range(args.rounds):
        for name, loader in loaders.items():
            trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
            start = time.perf_counter()
            metrics[name] = runner.scalar_metrics(trainer.test(module, dataloaders=loader, verbose=False)[0])
            seconds[name].append(time.perf_counter() - start)
            print(f"round {r + 1}  {name}: {seconds[name][-1]:.1f} s", flush=True)
    base = statistics.mean(seconds["dataset order"])
    for name, values in seconds.items():
        print(f"{name}: {statistics.mean(values):.1f} s ({base / statistics.mean(values):.2f}x dataset order)")
    a, b = metrics["dataset order"], metrics["length-sorted"]
    scores = [k for k in a if not k.endswith("loss")]  # the loss is a mean of batch means: it moves with the batches
    worst = max(scores, key=lambda k: abs(a[k] - b[k]))
    print(
        f"largest difference of a metric between the orders: {worst} {a[worst]:.6f} vs {b[worst]:.6f}; "
        f"loss {a['test/loss']:.4f} vs {b['test/loss']:.4f}"
    )


if __name__ == "__main__":
    main()
