"""Training-step benchmark: our step against the original code's naive step, on the same batches.

    python scripts/bench_train.py [--steps 20] [--encoder minilm] [--mechanism ER] [--precision 32] [--compile]

ours:  length-grouped batches padded to their own longest post, seeker states from the cache
       (the frozen seeker encoder is run once per seeker post, in eval mode), --precision;
       and the configured optimiser (model.optimizer: fused AdamW by default); with --compile the
       response encoder is torch.compiled (model.compile=true) and the uncompiled step ("eager")
       is timed beside it;
naive: the same rows padded to max_len (64, the original code's), the seeker encoder run again
       every step, fp32, a plain (unfused) AdamW as the original code had.
Both run the full step (forward, loss, backward, clip, AdamW) on two copies of the same model.
The steps alternate (ours, naive, ours, ...) so that load from other processes hits both alike.
The one-off cost of building the seeker cache is measured and reported amortised over an epoch.
Needs the EPITOME CSVs (EMPATHY_DATA_DIR).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from contextlib import nullcontext

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from empathy import CONFIG_DIR, allowlist, runner
from empathy.data.merge import level_column, rationale_column
from empathy.models.biencoder import multitask_loss
from empathy.models.module import compile_response_encoder


def pad_to(batch: dict[str, torch.Tensor], width: int, pad_id: int) -> dict[str, torch.Tensor]:
    out = dict(batch)
    for key, value in batch.items():
        if value.ndim != 2:
            continue
        fill = pad_id if key.endswith("input_ids") else 0
        out[key] = torch.nn.functional.pad(value, (0, width - value.shape[1]), value=fill)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--mechanism", default="ER")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32", help="ours only; naive is fp32")
    parser.add_argument("--max-len", type=int, default=64, help="data.max_len of both (the original code's: 64)")
    parser.add_argument(
        "--compile", action="store_true", help="ours: torch.compile the response encoder (model.compile)"
    )
    args = parser.parse_args()
    runner.quiet_libraries()
    torch.manual_seed(0)

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "model=biencoder",
                f"encoder={args.encoder}",
                f"mechanism={args.mechanism}",
                f"data.max_len={args.max_len}",
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/empathy-bench"
    datamodule = runner.build_datamodule(cfg)
    datamodule.setup()
    ours = runner.build_module(cfg, datamodule)
    naive = copy.deepcopy(ours)
    max_len = cfg.data.max_len
    pad_id = datamodule.tokenizer.pad_token_id

    started = time.perf_counter()
    ours.build_seeker_cache(datamodule.seeker_dataloader())
    cache_seconds = time.perf_counter() - started
    # With --compile, ours is compiled and "eager" (the same step uncompiled) runs beside it.
    variants = {"ours": ours, "naive": naive}
    if args.compile:
        variants["eager"] = copy.deepcopy(ours)
        compile_response_encoder(ours.net)

    loader = datamodule.train_dataloader()
    batches = [b for _, b in zip(range(args.steps + 2), loader, strict=False)]
    steps_per_epoch = len(loader)
    optimizers = {
        name: allowlist.build_optimizer(cfg.model.optimizer, [p for p in module.parameters() if p.requires_grad])
        for name, module in variants.items()
        if name != "naive"
    }
    optimizers["naive"] = torch.optim.AdamW(
        [p for p in naive.parameters() if p.requires_grad], lr=cfg.model.optimizer.lr
    )
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()

    def step(name: str, batch: dict[str, torch.Tensor]) -> float:
        module = variants[name]
        optimizer = optimizers[name]
        module.train()
        started = time.perf_counter()
        with autocast if name != "naive" else nullcontext():
            output = (
                module(batch)
                if name != "naive"
                else module.net(
                    response_input_ids=batch["response_input_ids"],
                    response_attention_mask=batch["response_attention_mask"],
                    seeker_input_ids=batch["seeker_input_ids"],
                    seeker_attention_mask=batch["seeker_attention_mask"],
                )
            )
            m = args.mechanism
            loss = multitask_loss(
                output[m], batch[level_column(m)], batch[rationale_column(m, "strict")], batch["rationale_mask"]
            )["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    times: dict[str, list[float]] = {name: [] for name in variants}
    widths = []
    for i, batch in enumerate(batches):
        padded = pad_to(batch, max_len, pad_id)
        took = {name: step(name, padded if name == "naive" else batch) for name in variants}
        if i == 0:
            first_step = took
        if i >= 2:  # warm-up (and, with --compile, the first compilations)
            for name, seconds in took.items():
                times[name].append(seconds)
            widths.append(batch["response_input_ids"].shape[1])

    ours_s, naive_s = statistics.mean(times["ours"]), statistics.mean(times["naive"])
    amortised = ours_s + cache_seconds / steps_per_epoch
    print(
        f"optimiser ours: {type(optimizers['ours']).__name__} fused={optimizers['ours'].defaults.get('fused')}; "
        f"naive: fused={optimizers['naive'].defaults.get('fused')}"
    )
    print(
        f"encoder={args.encoder} mechanism={args.mechanism} batch={cfg.data.batch_size} max_len={max_len} "
        f"threads={torch.get_num_threads()} cpu_count={os.cpu_count()} steps={len(times['ours'])}"
    )
    compiled = ", compiled" if args.compile else ""
    print(
        f"ours  ({args.precision:>4}, dynamic padding, cached seeker{compiled}): {1 / ours_s:6.3f} steps/s "
        f"({ours_s:.3f} s/step, mean response width {statistics.mean(widths):.1f} tokens)"
    )
    if args.compile:
        eager_s = statistics.mean(times["eager"])
        print(
            f"eager (the same step, not compiled): {1 / eager_s:6.3f} steps/s ({eager_s:.3f} s/step); "
            f"speed-up eager/naive {naive_s / eager_s:.2f}x, compiled/eager {eager_s / ours_s:.2f}x"
        )
        print(
            f"compilation: the first compiled step took {first_step['ours']:.1f} s (eager {first_step['eager']:.1f} "
            "s); "
            "evaluation compiles once more"
        )
    print(
        f"naive (fp32, padded to {max_len}, seeker every step):      {1 / naive_s:6.3f} steps/s ({naive_s:.3f} s/step)"
    )
    print(f"seeker cache: {cache_seconds:.1f} s once per run ({steps_per_epoch} steps per epoch)")
    print(
        f"speed-up ours/naive: {naive_s / ours_s:.2f}x per step; {naive_s / amortised:.2f}x with the cache "
        "amortised over one epoch (more over several)"
    )


if __name__ == "__main__":
    main()
