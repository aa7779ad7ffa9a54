"""Export a training checkpoint as a self-contained folder for prediction.

    python -m empathy.export ckpt_path=outputs/train/runs/<run>/checkpoints/best-epoch03.ckpt out=models/ER
    python -m empathy.export ckpt_path=... out=models/ER overwrite=true seeker=store
    python -m empathy.export ckpt_path=<joint run>/checkpoints/best-epoch03.ckpt out=models/joint   # model=joint

The folder (safetensors, tokenizer files, config.json; no optimizer state, no pickle) loads with
``EmpathyPredictor.from_pretrained({"ER": "models/ER"})`` or ``python -m empathy.predict
models.ER=models/ER ...`` (a joint model: ``{"joint": "models/joint"}``,
``models.joint=models/joint``); see :func:`empathy.models.export.export_model` for its layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from empathy import CONFIG_DIR, runner
from empathy.errors import user_errors
from empathy.models.export import CONFIG_FILE, export_model


def export(cfg: DictConfig) -> Path:
    runner.quiet_libraries()
    out = export_model(
        hydra.utils.to_absolute_path(cfg.ckpt_path),
        hydra.utils.to_absolute_path(cfg.out),
        overwrite=cfg.overwrite,
        seeker=cfg.seeker,
        mechanisms=list(cfg.mechanisms) if cfg.get("mechanisms") else None,
    )
    config = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
    seeker = config.get("seeker") or {}
    how = {"stored": f"stored in {seeker.get('file')}", "pretrained": f"referenced: {seeker.get('pretrained_path')}"}
    print(
        f"exported the model of {', '.join(config['mechanisms'])} to {out} (seeker encoder "
        f"{how.get(seeker.get('source'), 'none')})"
    )
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    with user_errors():
        export(cfg)


if __name__ == "__main__":
    main()
