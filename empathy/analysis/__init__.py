"""Analyses of scored pairs (the predictor's output table)."""

from empathy.analysis.over_time import (
    AnalysisError,
    OverTimeResult,
    analyse_over_time,
    read_predictions,
    write_outputs,
)

__all__ = ["AnalysisError", "OverTimeResult", "analyse_over_time", "read_predictions", "write_outputs"]
