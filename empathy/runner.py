"""What the entry points share: building objects from a composed config and writing results."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from empathy import CONFIG_DIR, JOINT, MECHANISMS, allowlist
from empathy.data.datamodule import EpitomeDataModule

# Data settings that define the split and the labels; stored in checkpoints so that evaluation
# rebuilds exactly the data a model was trained on.
DATA_KEYS = (
    "max_len",
    "rationale_policy",
    "on_conflict",
    "unescape_html",
    "split_fractions",
    "split_seed",
    "split_file",
    "split_scope",
    "mechanism_files",
    "cv_folds",
    "cv_fold",
)
DATAMODULE = "empathy.data.datamodule.EpitomeDataModule"
# What a checkpoint written before a data key existed was trained with.
LEGACY_DATA = {"split_scope": "mechanism", "mechanism_files": None, "cv_folds": 0, "cv_fold": 0}


def quiet_libraries() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def compose_config(
    name: str,
    overrides: Sequence[str] = (),
    *,
    data_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
) -> DictConfig:
    """Compose ``conf/<name>.yaml`` outside a Hydra run (tests, notebooks, scripts). With
    ``output_dir``, the run folder, cache and logs go there (no Hydra run folder exists)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(name, overrides=list(overrides))
    with open_dict(cfg):
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
        if output_dir is not None:
            cfg.paths.cache_dir = str(Path(output_dir) / "cache")
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(output_dir)
    return cfg


def config_choices(name: str, overrides: Sequence[str] = ()) -> dict[str, str]:
    """Which option of each config group ``conf/<name>.yaml`` with ``overrides`` chooses
    (``{"model": "joint", "encoder": "minilm", ...}``)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(name, overrides=list(overrides), return_hydra_config=True)
    return {str(k): str(v) for k, v in cfg.hydra.runtime.choices.items()}


def config_mechanisms(cfg: Mapping[str, Any]) -> list[str]:
    """The mechanisms a (composed or saved) config trains: ``mechanism.mechanisms``; a run folder
    of an earlier version names one ``mechanism.name``, or all of ``data.mechanism_files`` for
    its joint model."""
    mechanism = cfg.get("mechanism") or {}
    if mechanism.get("mechanisms"):
        return list(mechanism["mechanisms"])
    if str((cfg.get("model") or {}).get("_target_", "")).endswith(".JointEmpathyModule"):
        return [m for m in MECHANISMS if m in (cfg.get("data") or {}).get("mechanism_files", {})]
    return [mechanism["name"]]


def mechanisms_label(mechanisms: Sequence[str]) -> str:
    """A model's name in run names and results tables: its mechanism, or ``joint`` for several."""
    return mechanisms[0] if len(mechanisms) == 1 else JOINT


def build_datamodule(
    cfg: DictConfig,
    data_overrides: Mapping[str, Any] | None = None,
    *,
    mechanisms: Sequence[str] | None = None,
    source: str = "data",
) -> EpitomeDataModule:
    """The data module of ``cfg.data`` for ``mechanisms`` (default: the config's), built by
    calling the project's class directly (never ``instantiate``): ``data_overrides`` (a
    checkpoint's data settings) and, for a config loaded from a file (``source`` names it), the
    whole data config must be plain values (:mod:`empathy.allowlist`)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    cls = allowlist.datamodule_class(str(data.pop("_target_", DATAMODULE)))
    if data_overrides is not None:  # a checkpoint's data settings: keys it predates get their old values
        allowlist.check_plain(data_overrides, f"{source}: data_config")
        data.update({k: v for k, v in LEGACY_DATA.items() if k not in data_overrides})
        data.update(data_overrides)
    encoder = OmegaConf.to_container(cfg.encoder, resolve=True)
    allowlist.check_plain(data, source)
    allowlist.check_plain(encoder, f"{source}: encoder")
    data["data_dir"] = hydra.utils.to_absolute_path(data["data_dir"])
    data["cache_dir"] = hydra.utils.to_absolute_path(data["cache_dir"])
    if data.get("split_file"):
        data["split_file"] = hydra.utils.to_absolute_path(data["split_file"])
    return cls(
        **data,
        mechanisms=list(mechanisms or config_mechanisms(cfg)),
        encoder=encoder,
        seed=cfg.get("seed", 12),
    )


def class_weights(cfg: DictConfig, datamodule: EpitomeDataModule) -> dict[str, list[float]] | list[float] | None:
    weights = cfg.loss.get("class_weights")
    if weights is None:
        return None
    if weights == "inverse_frequency":
        return datamodule.inverse_frequency_weights()
    if isinstance(weights, str):
        raise ValueError(f"loss.class_weights: expected null, inverse_frequency or 3 numbers, got {weights!r}")
    weights = [float(w) for w in weights]
    if len(weights) != 3:
        raise ValueError(f"loss.class_weights: expected 3 numbers (levels 0, 1, 2), got {weights}")
    return weights


def build_module(cfg: DictConfig, datamodule: EpitomeDataModule):
    """The LightningModule of ``cfg.model`` (the project's own config) for the data module's
    mechanisms, with the data settings that define its split stored in its checkpoints."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return hydra.utils.instantiate(
        cfg.model,
        encoder=OmegaConf.to_container(cfg.encoder, resolve=True),
        mechanisms=list(datamodule.mechanisms),
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        rationale_policy=cfg.data.rationale_policy,
        max_len=cfg.data.max_len,
        class_weights=class_weights(cfg, datamodule),
        data_config={k: data.get(k) for k in DATA_KEYS},
        _recursive_=False,
    )


def run_id() -> str | None:
    """The cluster job's identity, when there is one (SLURM array task or job)."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def sweep_name() -> str | None:
    """The multirun folder's name inside a Hydra multirun job (the W&B group of its runs), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return Path(hydra_cfg.sweep.dir).name


def sweep_overrides() -> list[str]:
    """Inside a Hydra multirun job: its own overrides (those of the sweep's values), else []."""
    from hydra.core.hydra_config import HydraConfig

    if sweep_name() is None:
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def build_loggers(
    cfg: DictConfig,
    output_dir: Path,
    *,
    name: str | None = None,
    tags: Sequence[str] | None = None,
    job_type: str | None = None,
) -> list[pl.loggers.Logger]:
    """The configured loggers. A W&B run is named ``name`` (default: mechanism-encoder-seed, and
    in a sweep the job's overrides too, so that jobs that differ in any value have distinct
    names), grouped by ``group`` or the multirun folder, tagged, and given the SLURM job id when
    there is one, so that parallel and requeued jobs never share a run."""
    loggers = []
    for logger_cfg in (cfg.get("logger") or {}).values():
        if not logger_cfg or "_target_" not in logger_cfg:
            continue
        extra: dict[str, Any] = {}
        if logger_cfg._target_.endswith("WandbLogger"):
            job = run_id()
            label = mechanisms_label(config_mechanisms(cfg)) if "mechanism" in cfg else None
            own = [o for o in sweep_overrides() if o.partition("=")[0].lstrip("+~") not in ("seed", "hydra.run.dir")]
            name = name or "-".join([f"{label}-{cfg.encoder.name}-seed{cfg.seed}", *own])
            default_tags = [label, cfg.encoder.name] if label else [cfg.encoder.name]
            extra = {
                "name": name + (f"-{job}" if job else ""),
                "group": cfg.get("group") or sweep_name(),
                "tags": [*(tags if tags is not None else default_tags), *cfg.get("tags", [])],
                "config": OmegaConf.to_container(cfg, resolve=True),
            }
            if job_type:
                extra["job_type"] = job_type
            if job:
                extra["id"] = f"{job}-{output_dir.name}"
        loggers.append(
            hydra.utils.instantiate(
                {**OmegaConf.to_container(logger_cfg, resolve=True), **extra, "_recursive_": False, "_convert_": "all"}
            )
        )
    return loggers


def build_callbacks(cfg: DictConfig, *, with_logger: bool = True) -> list[pl.Callback]:
    """The configured callbacks (the project's own configs), less those the run cannot take: a
    progress bar when ``trainer.enable_progress_bar`` is false, a learning-rate monitor without
    a logger."""
    callbacks = [hydra.utils.instantiate(cb) for cb in (cfg.get("callbacks") or {}).values() if cb and "_target_" in cb]
    bar = (cfg.get("trainer") or {}).get("enable_progress_bar", True)
    return [
        cb
        for cb in callbacks
        if not (isinstance(cb, pl.callbacks.ProgressBar) and not bar)
        and not (isinstance(cb, pl.callbacks.LearningRateMonitor) and not with_logger)
    ]


def training_precision(precision: str | int, accelerator: str | None) -> str:
    """``trainer.precision``, with ``auto`` resolved for this machine: ``bf16-mixed`` where bf16
    is fast (a GPU that supports it, a CPU with native bf16: :func:`empathy.hardware.bf16_is_fast`),
    else ``32-true``."""
    if str(precision) != "auto":
        return str(precision)
    from empathy.hardware import bf16_is_fast

    device = (
        "cuda"
        if accelerator in ("gpu", "cuda") or (accelerator in (None, "auto") and torch.cuda.is_available())
        else "cpu"
    )
    return "bf16-mixed" if bf16_is_fast(device) else "32-true"


def build_trainer(cfg: DictConfig, **kwargs: Any) -> pl.Trainer:
    """The Lightning Trainer of ``cfg.trainer`` (``precision: auto`` resolved, :func:`training_precision`)."""
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = training_precision(
        trainer_cfg.get("precision", "32-true"), trainer_cfg.get("accelerator")
    )
    return hydra.utils.instantiate(trainer_cfg, **kwargs)


@contextmanager
def loggers_off(trainer: pl.Trainer) -> Iterator[None]:
    """The trainer's loggers set aside for the block (an evaluation that should log nothing)."""
    loggers = trainer.loggers
    trainer.loggers = []
    try:
        yield
    finally:
        trainer.loggers = loggers


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        out[key] = float(value)
    return out


def log_confusion(loggers, module, prefix: str) -> None:
    """Confusion-matrix images for W&B (rows: gold level, columns: predicted), one per mechanism
    under ``<prefix>/<M>``."""
    wandb_loggers = [lg for lg in loggers if type(lg).__name__ == "WandbLogger"]
    if not wandb_loggers:
        return
    for key, confusion in getattr(module, "last_confusion", {}).items():
        if key == prefix or key.startswith(f"{prefix}/"):
            _log_confusion_image(wandb_loggers, confusion, key)


def _log_confusion_image(wandb_loggers, confusion, key: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2, 3))
    ax.imshow(confusion.numpy(), cmap="Blues")
    dark = float(confusion.max()) * 0.6
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            color = "white" if float(confusion[i, j]) > dark else "black"
            ax.text(j, i, int(confusion[i, j]), ha="center", va="center", color=color)
    ax.set_xticks(range(confusion.shape[1]))
    ax.set_yticks(range(confusion.shape[0]))
    ax.set_xlabel("predicted level")
    ax.set_ylabel("gold level")
    ax.set_title(key)
    fig.tight_layout()
    for lg in wandb_loggers:
        lg.log_image(key=f"{key}/confusion_matrix", images=[fig])
    plt.close(fig)
