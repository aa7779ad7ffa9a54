"""Recompute the metrics of a saved checkpoint on a split of its own data.

    python -m empathy.evaluate ckpt_path=<run>/checkpoints/best-epoch03.ckpt [split=dev|test|train]
    python -m empathy.evaluate ckpt_path=... mechanism=IP encoder=minilm   # also checks the checkpoint
    python -m empathy.evaluate ckpt_path=<joint run>/checkpoints/best-epoch03.ckpt  # model=joint: <split>/<M>/... per mechanism
    python -m empathy.evaluate ckpt_path=... 'rationale_decoding={threshold:0.2,fill_gaps:4,IP:{fill_gaps:8}}'  # another decoding
    python -m empathy.evaluate ckpt_path=... split=dev decoding_grid=true  # + the strict IOU-F1 of every grid decoding
    python -m empathy.evaluate ckpt_path=... split=dev decoding_grid=extended  # ... of the extended grid (min_span, fallback)
    python -m empathy.evaluate ckpt_path=... split=dev level_offset_grid=true  # + the macro-F1 of every pair of level offsets
    python -m empathy.evaluate 'ckpt_path=[a.ckpt,b.ckpt,c.ckpt]'  # an ensemble: the mean of their probabilities

Writes ``eval_<split>.json`` into the run folder and prints the metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from empathy import CONFIG_DIR, JOINT, runner
from empathy.data.joint import JointEpitomeDataModule
from empathy.io import write_json_atomic
from empathy.models.module import EmpathyModule


def check_matches(cfg: DictConfig, hparams: dict[str, Any], ckpt_path: str) -> None:
    """Fail clearly when the checkpoint is of another mechanism or encoder than asked for."""
    asked_mechanism = cfg.get("mechanism")
    if asked_mechanism is not None and asked_mechanism.name != hparams["mechanism"]:
        raise ValueError(
            f"{ckpt_path} is a {hparams['mechanism']} model, but mechanism={asked_mechanism.name} was asked for"
        )
    asked_encoder = cfg.get("encoder")
    if asked_encoder is not None:
        saved = hparams["encoder"]
        if (asked_encoder.name, asked_encoder.get("path")) != (saved.get("name"), saved.get("path")):
            raise ValueError(
                f"{ckpt_path} was trained with encoder {saved.get('name')} ({saved.get('path')}), "
                f"but encoder={asked_encoder.name} ({asked_encoder.get('path')}) was asked for"
            )


def checkpoint_datamodule(cfg: DictConfig, module: EmpathyModule):
    """The data a checkpoint was trained on (its mechanism, tokenizer, max_len, labelling and split
    settings), read from ``cfg.paths`` (the data and cache folders of this machine). A joint
    model's checkpoint gets the joint data (every mechanism of its ``data.mechanism_files``)."""
    hparams = module.hparams
    with open_dict(cfg):
        if hparams["mechanism"] == JOINT:
            cfg.mechanism = {"name": JOINT, "file": None}
            cfg.data._target_ = f"{JointEpitomeDataModule.__module__}.{JointEpitomeDataModule.__name__}"
        else:
            cfg.mechanism = {"name": hparams["mechanism"], "file": _mechanism_file(hparams["mechanism"])}
        cfg.encoder = hparams["encoder"]
    datamodule = runner.build_datamodule(cfg, data_overrides=dict(hparams["data_config"]), source="checkpoint")
    datamodule.setup()
    return datamodule


def evaluate(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    runner.quiet_libraries()
    paths = list(cfg.ckpt_path) if OmegaConf.is_list(cfg.ckpt_path) or isinstance(cfg.ckpt_path, list) else [cfg.ckpt_path]
    if not paths:
        raise ValueError("ckpt_path is an empty list")
    paths = [hydra.utils.to_absolute_path(str(p)) for p in paths]
    ckpt_path = paths[0] if len(paths) == 1 else paths
    module = EmpathyModule.from_checkpoints(paths)
    hparams = module.hparams
    check_matches(cfg, hparams, paths[0])
    if cfg.split not in ("train", "dev", "test"):
        raise ValueError(f"split must be train, dev or test, not {cfg.split!r}")
    if cfg.get("rationale_decoding") is not None:
        module.set_rationale_decoding(cfg.rationale_decoding)
    if cfg.get("level_offsets") is not None:
        module.set_level_offsets(cfg.level_offsets)
    datamodule = checkpoint_datamodule(cfg, module)
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    loader = datamodule.split_dataloader(cfg.split)
    grid = cfg.get("decoding_grid")
    if grid not in (None, False, True, "extended"):
        raise ValueError(f"decoding_grid must be false, true or extended, not {grid!r}")
    if cfg.get("level_offset_grid"):
        module.enable_level_grid()
    if grid or cfg.get("level_offset_grid"):  # the grids are scored in validation: validate instead of test
        if grid:
            module.enable_decoding_grid(extended=grid == "extended")
        results, stage = trainer.validate(module, dataloaders=loader, weights_only=True)[0], "dev/"
    else:
        results, stage = trainer.test(module, dataloaders=loader, weights_only=True)[0], "test/"
    metrics = {key.replace(stage, f"{cfg.split}/", 1): value for key, value in runner.scalar_metrics(results).items()}
    payload = {"checkpoint": ckpt_path, "split": cfg.split, "rationale_decoding": dict(hparams["rationale_decoding"]),
               "level_offsets": hparams.get("level_offsets"), "metrics": metrics}
    write_json_atomic(output_dir / f"eval_{cfg.split}.json", payload)
    print(json.dumps(payload, indent=2))
    return metrics


def _mechanism_file(name: str) -> str:
    return OmegaConf.load(Path(CONFIG_DIR) / "mechanism" / f"{name}.yaml").file


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
