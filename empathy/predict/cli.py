"""Score a file of (seeker post, response post) pairs with one model per mechanism.

    python -m empathy.predict input=pairs.csv output=scored.csv \
        models.ER=runs/er/checkpoints/best-epoch03.ckpt models.IP=exported/IP models.EX=exported/EX
    python -m empathy.predict input=pairs.csv output=scored.csv models.joint=exported/joint   # model=joint: ER, IP, EX
    python -m empathy.predict input=pairs.parquet output=scored.jsonl output_format=jsonl on_bad_row=mark
    empathy-predict input=... output=... models.ER=...      # the console script

Every key is in conf/predict.yaml. Prints a summary and writes it as predict_summary.json into
the Hydra run folder.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from empathy import CONFIG_DIR, runner
from empathy.errors import user_errors
from empathy.io import write_json_atomic
from empathy.predict.files import PredictSummary, predict_file
from empathy.predict.predictor import MODEL_KEYS, EmpathyPredictor


def predict_from_config(cfg: DictConfig) -> PredictSummary:
    runner.quiet_libraries()
    models = dict(cfg.models or {})
    unknown = [m for m in models if m not in MODEL_KEYS]
    if unknown:
        raise ValueError(
            f"models.{unknown[0]}: unknown mechanism; expected models.ER, models.IP and/or models.EX, or models.joint"
        )
    # a list of models for one key is their ensemble (empathy.predict.predictor.load_ensemble)
    paths = {
        m: [hydra.utils.to_absolute_path(str(x)) for x in p]
        if OmegaConf.is_list(p)
        else hydra.utils.to_absolute_path(str(p))
        for m, p in models.items()
        if p
    }
    if not paths:
        raise ValueError(
            "no model given: set models.ER=..., models.IP=... and/or models.EX=..., or models.joint=... for a joint "
            "model (a .ckpt or an exported folder)"
        )
    input_path = Path(hydra.utils.to_absolute_path(cfg.input))
    output_path = Path(hydra.utils.to_absolute_path(cfg.output))
    # Fail on the cheap checks before loading any model.
    if not input_path.is_file():
        raise FileNotFoundError(f"input={cfg.input}: no such file ({input_path})")
    if output_path.exists() and not cfg.overwrite:
        raise FileExistsError(f"output={cfg.output} exists ({output_path}); pass overwrite=true to replace it")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    predictor = EmpathyPredictor.from_pretrained(
        paths,
        device=cfg.device,
        precision=str(cfg.precision),
        batch_size=cfg.batch_size,
        sort_window=cfg.sort_window,
        share_seeker=cfg.share_seeker,
    )
    return predict_file(
        predictor,
        input_path,
        output_path,
        seeker_column=cfg.columns.seeker,
        response_column=cfg.columns.response,
        output_format=cfg.output_format,
        overwrite=cfg.overwrite,
        on_bad_row=cfg.on_bad_row,
        max_chars=cfg.max_chars,
        chunk_rows=cfg.chunk_rows,
        progress=cfg.progress,
        csv_formulas=cfg.csv_formulas,
    )


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    with user_errors():
        summary = predict_from_config(cfg)
        print(summary.message())
        write_json_atomic(Path(HydraConfig.get().runtime.output_dir) / "predict_summary.json", summary.to_dict())


if __name__ == "__main__":
    main()
