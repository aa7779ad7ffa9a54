"""Time the real training step of configurations against one another, in one process.

    python scripts/bench_step.py [--steps 12] [--rounds 2] [--threads N] \
        "model.net.freeze_response_layers=0" "model.net.freeze_response_layers=2" [...]

Each argument is one configuration: space-separated train overrides on top of the default (the
joint model with the packaged MiniLM; "" for the default itself). Each one builds its model and
takes the first real training batches of the EPITOME data (the same batches for all, from the
same seed), then times ``--steps`` steps (forward, loss, backward, gradient clipping, optimiser)
after one warm-up step. The configurations take turns for ``--rounds`` rounds, so that a slow
spell of this noisy machine falls on all of them. Prints seconds per step of every round, the mean,
and each configuration's speed relative to the first. Needs the EPITOME CSVs (EMPATHY_DATA_DIR).

``--json FILE`` also writes ``{"threads": N, "seconds_per_step": {configuration: mean}}`` (replaced
whole: the figures of one run). ``scripts/ablations.py`` reads ``<out>/step_seconds.json`` to rank
cheaper variants by their training step on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path


def training_steps(overrides: list[str], steps: int, folder: Path) -> tuple[Callable[[dict], None], list[dict]]:
    """The real training step of a train config (forward, loss, backward, clipping, optimiser) and
    its first ``steps + 1`` training batches. Also used by ``scripts/bench_threads.py``."""
    import torch
    from omegaconf import open_dict

    from empathy import allowlist, runner
    from empathy.models.module import SEEKER_STATES

    torch.manual_seed(0)
    cfg = runner.compose_config("train", overrides, output_dir=folder)
    with open_dict(cfg):  # the processed data of the usual cache
        cfg.paths.cache_dir = os.environ.get("EMPATHY_CACHE_DIR", ".cache/empathy")
    datamodule = runner.build_datamodule(cfg)
    datamodule.setup()
    module = runner.build_module(cfg, datamodule)
    if module.caches_seeker:
        module.build_seeker_cache(datamodule.seeker_dataloader(), store=Path(cfg.paths.cache_dir) / SEEKER_STATES)
    batches = [b for _, b in zip(range(steps + 1), datamodule.train_dataloader(), strict=False)]
    optimizer = allowlist.build_optimizer(cfg.model.optimizer, [p for p in module.parameters() if p.requires_grad])
    module.train()
    # trainer.precision as a training run resolves it (auto: bf16-mixed where bf16 is fast)
    precision = runner.training_precision(cfg.trainer.precision, cfg.trainer.get("accelerator"))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision.startswith("bf16") else contextlib.nullcontext()

    def step(batch) -> None:
        with autocast:
            loss = module.training_step(batch, 0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, batches


def seconds_per_step(overrides: list[str], steps: int, folder: Path) -> float:
    step, batches = training_steps(overrides, steps, folder)
    step(batches[0])  # warm-up
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    return (time.perf_counter() - start) / (len(batches) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "configs", nargs="+", help='space-separated train overrides per configuration ("" = the default)'
    )
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: every core)")
    parser.add_argument("--json", type=Path, help="also write the mean seconds per step of each configuration here")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*self.log.*")  # the step logs without a Trainer
    import tempfile

    import torch

    from empathy import runner
    from empathy.hardware import usable_cores

    runner.quiet_libraries()
    torch.set_num_threads(args.threads or usable_cores())
    print(f"{torch.get_num_threads()} thread(s), {args.steps} steps per round, {args.rounds} rounds", flush=True)
    times: dict[str, list[float]] = {c: [] for c in args.configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for c in args.configs:
                times[c].append(seconds_per_step(c.split(), args.steps, Path(tmp) / "run"))
                print(f"round {r + 1}  {c or '(default)'}: {times[c][-1]:.3f} s/step", flush=True)
    first = statistics.mean(times[args.configs[0]])
    for c, values in times.items():
        mean = statistics.mean(values)
        print(
            f"{c or '(default)'}: {mean:.3f} s/step (rounds: {', '.join(f'{v:.3f}' for v in values)}), "
            f"{first / mean:.2f}x the first",
            flush=True,
        )
    if args.json:
        from empathy.io import write_json_atomic

        write_json_atomic(
            args.json,
            {
                "threads": torch.get_num_threads(),
                "steps": args.steps,
                "rounds": args.rounds,
                "seconds_per_step": {c: statistics.mean(v) for c, v in times.items()},
            },
        )


if __name__ == "__main__":
    main()
