"""The one way a trained model is loaded: a training checkpoint
(:func:`~empathy.models.checkpoint.load_checkpoint`), an exported folder
(:func:`~empathy.models.export.load_exported`) or a list of them (an ensemble) becomes a
:class:`~empathy.models.checkpoint.LoadedModel`, which ``empathy.evaluate`` (through the
LightningModule) and the predictor both use."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from empathy.models.checkpoint import LoadedModel, check_mechanisms, load_checkpoint
from empathy.models.ensemble import EnsembleNet
from empathy.models.export import load_exported


def load_model(
    path: str | Path | Sequence[str | Path],
    mechanisms: Sequence[str] | None = None,
    map_location: str | torch.device = "cpu",
) -> LoadedModel:
    """A checkpoint file or an export folder; a list of them is their ensemble (an
    :class:`~empathy.models.ensemble.EnsembleNet`: the mean of their probabilities, one seeker
    pass, the first one's settings), which must be of one kind (mechanisms, tokenizer, max_len,
    seeker encoder, labelling policy and data settings). With ``mechanisms`` (or one mechanism's
    name), the model must score exactly those."""
    if not isinstance(path, (str, Path)):
        paths = list(path)
        if not paths:
            raise ValueError("no model given (an empty list)")
        if len(paths) > 1:
            return _ensemble([load_model(p, mechanisms, map_location) for p in paths])
        path = paths[0]
    path = Path(path)
    if path.is_dir():
        return check_mechanisms(load_exported(path, map_location), mechanisms)
    if path.is_file():
        return check_mechanisms(load_checkpoint(path, map_location), mechanisms)
    raise FileNotFoundError(f"model {path} does not exist (expected a .ckpt file or an exported folder)")


def _ensemble(models: Sequence[LoadedModel]) -> LoadedModel:
    first = models[0]
    for model in models[1:]:
        for what, get in (
            ("mechanisms", lambda m: m.mechanisms),
            ("tokenizer and max_len", lambda m: m.token_key),
            ("seeker encoder", lambda m: m.seeker_sha256),
            ("rationale policy", lambda m: m.rationale_policy),
            ("data settings (its split)", lambda m: m.hparams.get("data_config")),
        ):
            if get(model) != get(first):
                raise ValueError(
                    f"ensemble: {model.source}'s {what} differs from {first.source}'s: an ensemble's models must be "
                    "of one kind"
                )
    return dataclasses.replace(
        first,
        net=EnsembleNet([m.net for m in models]).eval(),
        source=" + ".join(m.source for m in models),
        info={**first.info, "ensemble": [m.source for m in models]},
    )
