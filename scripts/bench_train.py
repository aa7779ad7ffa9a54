"""Training-step benchmark: our step against the original code's naive step, on the same batches.

    python scripts/bench_train.py [--steps 20] [--encoder minilm] [--mechanism ER] [--precision 32]

ours:  length-grouped batches padded to their own longest post, seeker states from the cache
       (the frozen seeker encoder is run once per seeker post, in eval mode), --precision;
       and the configured optimiser (model.optimizer: fused AdamW by default);
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

from empathy import CONFIG_DIR, runner
from empathy.models.biencoder import multitask_loss


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
    args = parser.parse_args()
    runner.quiet_libraries()
    torch.manual_seed(0)

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"encoder={args.encoder}", f"mechanism={args.mechanism}",
                                          f"data.max_len={args.max_len}"])
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

    loader = datamodule.train_dataloader()
    batches = [b for _, b in zip(range(args.steps + 2), loader, strict=False)]
    steps_per_epoch = len(loader)
    import hydra

    optimizers = {
        "ours": hydra.utils.instantiate(cfg.model.optimizer)([p for p in ours.parameters() if p.requires_grad]),
        "naive": torch.optim.AdamW([p for p in naive.parameters() if p.requires_grad], lr=cfg.model.optimizer.lr),
    }
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()

    def step(name: str, batch: dict[str, torch.Tensor]) -> float:
        module = ours if name == "ours" else naive
        optimizer = optimizers[name]
        module.train()
        started = time.perf_counter()
        with autocast if name == "ours" else nullcontext():
            output = module(batch) if name == "ours" else module.net(
                response_input_ids=batch["response_input_ids"],
                response_attention_mask=batch["response_attention_mask"],
                seeker_input_ids=batch["seeker_input_ids"],
                seeker_attention_mask=batch["seeker_attention_mask"],
            )
            loss = multitask_loss(output, batch["level"], batch["rationale_strict"], batch["rationale_mask"])["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    times: dict[str, list[float]] = {"ours": [], "naive": []}
    widths = []
    for i, batch in enumerate(batches):
        padded = pad_to(batch, max_len, pad_id)
        t_ours, t_naive = step("ours", batch), step("naive", padded)
        if i >= 2:  # warm-up
            times["ours"].append(t_ours)
            times["naive"].append(t_naive)
            widths.append(batch["response_input_ids"].shape[1])

    ours_s, naive_s = statistics.mean(times["ours"]), statistics.mean(times["naive"])
    amortised = ours_s + cache_seconds / steps_per_epoch
    print(f"optimiser ours: {type(optimizers['ours']).__name__} fused={optimizers['ours'].defaults.get('fused')}; "
          f"naive: fused={optimizers['naive'].defaults.get('fused')}")
    print(f"encoder={args.encoder} mechanism={args.mechanism} batch={cfg.data.batch_size} max_len={max_len} "
          f"threads={torch.get_num_threads()} cpu_count={os.cpu_count()} steps={len(times['ours'])}")
    print(f"ours  ({args.precision:>4}, dynamic padding, cached seeker): {1 / ours_s:6.3f} steps/s "
          f"({ours_s:.3f} s/step, mean response width {statistics.mean(widths):.1f} tokens)")
    print(f"naive (fp32, padded to {max_len}, seeker every step):      {1 / naive_s:6.3f} steps/s ({naive_s:.3f} s/step)")
    print(f"seeker cache: {cache_seconds:.1f} s once per run ({steps_per_epoch} steps per epoch)")
    print(f"speed-up ours/naive: {naive_s / ours_s:.2f}x per step; {naive_s / amortised:.2f}x with the cache "
          "amortised over one epoch (more over several)")


if __name__ == "__main__":
    main()
