"""Reading a training checkpoint safely: ``torch.load(weights_only=True)`` (no pickle code runs)
and hyper-parameters checked to be plain values (:func:`empathy.allowlist.check_plain`), so that
nothing a checkpoint holds can name a class or function to build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from empathy import JOINT, MECHANISMS, allowlist


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's contents (``hyper_parameters``, ``state_dict``, ``epoch`` ...). Raises
    :class:`~empathy.allowlist.UnsafeConfigError` when its hyper-parameters hold anything but
    plain values and an allowlisted optimiser and schedule."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    if (
        not isinstance(checkpoint, dict)
        or "hyper_parameters" not in checkpoint
        or "state_dict" not in checkpoint
    ):
        raise ValueError(
            f"{path} is not an empathy training checkpoint (no hyper_parameters / state_dict)"
        )
    hparams = checkpoint["hyper_parameters"]
    allowlist.check_plain(hparams, f"{path}: hyper_parameters", callables=allowlist.CALLABLE_KEYS)
    mechanism = hparams.get("mechanism")
    if mechanism not in (*MECHANISMS, JOINT):
        raise ValueError(
            f"{path}: hyper_parameters.mechanism is {mechanism!r}; expected one of {', '.join((*MECHANISMS, JOINT))}"
        )
    return checkpoint
