"""Empathy prediction on new conversations: :class:`EmpathyPredictor` (Python API),
:func:`predict_file` (CSV / JSONL / Parquet in and out) and :func:`export_model`.

    python -m empathy.predict input=pairs.csv output=scored.csv models.ER=er.ckpt models.IP=exported/IP
"""

from empathy.predict.files import PredictSummary, predict_file
from empathy.predict.predictor import (
    MECHANISMS,
    EmpathyPredictor,
    LoadedModel,
    MechanismPredictions,
    RationaleSpan,
    export_model,
    load_model,
)

__all__ = [
    "MECHANISMS",
    "EmpathyPredictor",
    "LoadedModel",
    "MechanismPredictions",
    "PredictSummary",
    "RationaleSpan",
    "export_model",
    "load_model",
    "predict_file",
]
