"""Empathy prediction on new conversations: :class:`EmpathyPredictor` (Python API) and
:func:`predict_file` (CSV / JSONL / Parquet in and out); models load with :func:`load_model`
and export with :func:`export_model`.

    python -m empathy.predict input=pairs.csv output=scored.csv models.joint=models/joint
"""

from empathy.models.checkpoint import LoadedModel
from empathy.models.export import export_model
from empathy.models.loading import load_model
from empathy.predict.files import PredictSummary, predict_file
from empathy.predict.predictor import (
    MECHANISMS,
    EmpathyPredictor,
    MechanismPredictions,
    RationaleSpan,
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
