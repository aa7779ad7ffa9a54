"""Domain-adaptive pre-training: continue masked-LM training of an encoder on unlabelled text.

    python -m empathy.pretrain corpus=epitome encoder=minilm trainer.max_steps=2000
    python -m empathy.pretrain corpus=table 'corpus.files=[posts.parquet]' \
        'corpus.text_columns=[seeker_post,response_post]'
    python -m empathy.train encoder=local encoder.path=<run folder>/encoder       # then fine-tune

Writes into the run folder: pretrain_metrics.json (held-out MLM loss and perplexity before and
after training, and before the head warm-up when there is one; corpus counts),
resolved_config.yaml, encoder/ (Hugging Face folder: safetensors, config, tokenizer) and the
logger's files. Returns the held-out MLM loss after training.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from empathy import CONFIG_DIR, runner
from empathy.errors import user_errors
from empathy.hardware import hardware
from empathy.io import write_json_atomic

log = logging.getLogger(__name__)

ENCODER_FOLDER = "encoder"
METRICS_FILE = "pretrain_metrics.json"
EPITOME_KEYS = ("on_conflict", "unescape_html", "split_fractions", "split_seed", "split_file", "split_scope")


def build_datamodule(cfg: DictConfig):
    data = cfg.data
    epitome = {k: data.get(k) for k in EPITOME_KEYS}
    epitome["data_dir"] = hydra.utils.to_absolute_path(data.data_dir)
    if epitome.get("split_file"):
        epitome["split_file"] = hydra.utils.to_absolute_path(epitome["split_file"])
    epitome["mechanisms"] = OmegaConf.to_container(data.mechanism_files, resolve=True)
    corpus = OmegaConf.to_container(cfg.corpus, resolve=True)
    if corpus.get("files"):
        corpus["files"] = [hydra.utils.to_absolute_path(f) for f in corpus["files"]]
    return hydra.utils.instantiate(
        cfg.datamodule,
        corpus=corpus,
        encoder=OmegaConf.to_container(cfg.encoder, resolve=True),
        epitome=epitome,
        seed=cfg.seed,
        cache_dir=str(Path(hydra.utils.to_absolute_path(cfg.paths.cache_dir)) / "corpus"),
        _convert_="all",
    )


def heldout(metrics: dict[str, float]) -> dict[str, float]:
    return {k.split("/", 1)[1]: v for k, v in runner.scalar_metrics(metrics).items() if k.startswith("heldout/")}


def pretrain(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    runner.quiet_libraries()
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    module = hydra.utils.instantiate(
        cfg.model, encoder=OmegaConf.to_container(cfg.encoder, resolve=True), _recursive_=False
    )
    loggers = runner.build_loggers(
        cfg,
        output_dir,
        name=f"pretrain-{cfg.corpus.name}-{cfg.encoder.name}-seed{cfg.seed}",
        tags=["pretrain", cfg.corpus.name, cfg.encoder.name],
        job_type="pretrain",
    )
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False)
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "resolved_config.yaml", resolve=True)

    fresh_head, warmup_steps = None, int(cfg.head_warmup.steps)
    if warmup_steps > 0:
        # Fit the head alone first, so that "before" measures the encoder, not a random head.
        fresh_head = heldout(trainer.validate(module, datamodule=datamodule, verbose=False)[0])
        module.head_warmup_lr = float(cfg.head_warmup.lr)
        head_trainer: pl.Trainer = hydra.utils.instantiate(
            cfg.trainer, logger=False, max_steps=warmup_steps, limit_val_batches=0, enable_checkpointing=False
        )
        head_trainer.fit(module, datamodule=datamodule)
        module.head_warmup_lr = None
    before = heldout(trainer.validate(module, datamodule=datamodule, verbose=False)[0])
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_minutes = (time.perf_counter() - started) / 60
    after = heldout(trainer.validate(module, datamodule=datamodule, verbose=False)[0])

    folder = output_dir / ENCODER_FOLDER
    result = {
        "heldout_before": before,
        "heldout_after": after,
        "heldout_before_head_warmup": fresh_head,
        "head_warmup_steps": warmup_steps,
        "steps": trainer.global_step,
        "fit_minutes": round(fit_minutes, 3),
        "encoder": cfg.encoder.name,
        "encoder_path": cfg.encoder.get("path"),
        "corpus": datamodule.summary,
        "max_len": cfg.datamodule.max_len,
        "seed": cfg.seed,
        "encoder_folder": str(folder),
        "hardware": hardware(),
    }
    if trainer.is_global_zero:
        module.save_encoder(folder, datamodule.tokenizer)
        write_json_atomic(output_dir / METRICS_FILE, result)
        if fresh_head:
            log.info(
                "head warm-up (%d steps, encoder frozen): held-out perplexity %.2f -> %.2f",
                warmup_steps,
                fresh_head["perplexity"],
                before["perplexity"],
            )
        log.info(
            "held-out MLM loss %.4f -> %.4f, perplexity %.2f -> %.2f after %d steps (%.1f min); "
            "encoder saved to %s (train with encoder=local encoder.path=%s)",
            before["mlm_loss"],
            after["mlm_loss"],
            before["perplexity"],
            after["perplexity"],
            trainer.global_step,
            fit_minutes,
            folder,
            folder,
        )
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            lg.experiment.summary.update({f"heldout_before/{k}": v for k, v in before.items()})
            import wandb

            wandb.finish()
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="pretrain")
def main(cfg: DictConfig) -> float | None:
    with user_errors():
        result = pretrain(cfg, Path(HydraConfig.get().runtime.output_dir))
        return result["heldout_after"].get("mlm_loss")


if __name__ == "__main__":
    main()
