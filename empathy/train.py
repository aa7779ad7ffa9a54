"""Train the bi-encoder on ER, IP and EX at once (the default) or on one mechanism, keep the best
checkpoint by dev macro-F1, test it.

    python -m empathy.train                                           # ER, IP and EX in one model
    python -m empathy.train mechanism=IP                              # a model of IP alone
    python -m empathy.train model=biencoder mechanism=IP loss.lambda_RE=0.5 seed=3
    python -m empathy.train -m seed=1,2,3                             # a Hydra multirun
    python -m empathy.train -m model=biencoder mechanism=ER,IP,EX     # one model per mechanism
    python -m empathy.train --help                                    # every config group

Writes into the run folder: metrics.json (dev/* and test/* of the best checkpoint),
resolved_config.yaml, split.csv, checkpoints/ (best-*.ckpt, last.ckpt) and the logger's files.
Returns the dev metric named by ``optimized_metric`` (what a sweeper optimises).
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from empathy import CONFIG_DIR, runner
from empathy.errors import user_errors
from empathy.hardware import hardware
from empathy.io import write_json_atomic
from empathy.models.callbacks import ThreadShare

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path, resume: str = "never") -> str | None:
    if resume not in ("auto", "never"):
        raise ValueError(f"resume: expected auto or never, got {resume!r}")
    if ckpt_path in (None, ""):
        last = output_dir / "checkpoints" / "last.ckpt"
        if resume == "auto" and last.exists():
            log.info("resuming from %s (resume=auto; resume=never starts afresh)", last)
            return str(last)
        return None
    if ckpt_path == "last":
        path = output_dir / "checkpoints" / "last.ckpt"
        return str(path) if path.exists() else None
    path = Path(hydra.utils.to_absolute_path(ckpt_path))
    if not path.exists():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint ({path})")
    return str(path)


def train(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    runner.quiet_libraries()
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = runner.build_datamodule(cfg)
    datamodule.setup()
    module = runner.build_module(cfg, datamodule)
    loggers = runner.build_loggers(cfg, output_dir)
    trainer = runner.build_trainer(
        cfg, callbacks=runner.build_callbacks(cfg, with_logger=bool(loggers)), logger=loggers or False
    )
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "resolved_config.yaml", resolve=True)
        shutil.copyfile(datamodule.prepared.split_csv, output_dir / "split.csv")
    frozen = sum(1 for m in module.net.seeker_encoder.modules()) if module.net.seeker_encoder is not None else 0
    if frozen and module.net.freeze_seeker:
        # Lightning warns about modules in eval mode: the frozen seeker encoder is meant to be.
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
        log.info("the frozen seeker encoder's %d modules stay in eval mode (no dropout: its states are cached)", frozen)

    succeeded = False
    try:
        started = time.perf_counter()
        trainer.fit(
            module,
            datamodule=datamodule,
            ckpt_path=resolve_ckpt_path(cfg.ckpt_path, output_dir, cfg.get("resume", "never")),
            weights_only=True,
        )
        fit_minutes = (time.perf_counter() - started) / 60

        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        best = best or None  # fast_dev_run and runs without checkpoints evaluate the last weights
        metrics: dict[str, Any] = {}
        with runner.loggers_off(trainer):  # the best epoch's dev metrics are logged already
            metrics.update(
                runner.scalar_metrics(
                    trainer.validate(module, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)[0]
                )
            )
        if cfg.get("test"):
            metrics.update(
                runner.scalar_metrics(trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=True)[0])
            )
            runner.log_confusion(loggers, module, "test")
        result = {
            "metrics": metrics,
            "best_checkpoint": best,
            "fit_minutes": round(fit_minutes, 3),
            "epochs": trainer.current_epoch,
            "mechanism": runner.mechanisms_label(datamodule.mechanisms),
            "mechanisms": list(datamodule.mechanisms),
            "encoder": cfg.encoder.name,
            "seed": cfg.seed,
            "precision": str(trainer.precision),
            "summary": datamodule.prepared.summary,
            "hardware": hardware(),
        }
        shares = [cb for cb in trainer.callbacks if isinstance(cb, ThreadShare) and cb.path is not None]
        if shares:  # a job of a local pool (reproduce_table.py --jobs): [global step, threads] at each change
            result["thread_changes"] = [list(change) for change in shares[0].changes]
        if trainer.is_global_zero:
            write_json_atomic(output_dir / "metrics.json", result)
            log.info(
                "run folder %s: metrics.json, best checkpoint %s (dev/macro_f1 %.4f%s)",
                output_dir,
                best or "(none kept)",
                metrics.get("dev/macro_f1", float("nan")),
                f", test/macro_f1 {metrics['test/macro_f1']:.4f}" if "test/macro_f1" in metrics else "",
            )
        for lg in loggers:
            if isinstance(lg, WandbLogger):
                lg.experiment.summary.update(metrics)
        succeeded = True
        return result
    finally:
        if any(isinstance(lg, WandbLogger) for lg in loggers):
            import wandb

            wandb.finish(exit_code=0 if succeeded else 1)  # a failed job's run is closed, marked failed


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    with user_errors():
        result = train(cfg, Path(HydraConfig.get().runtime.output_dir))
        return result["metrics"].get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
