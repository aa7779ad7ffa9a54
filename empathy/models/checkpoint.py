"""A trained model as the code holds it (:class:`LoadedModel`), and how a training checkpoint
becomes one (:func:`load_checkpoint`). :func:`empathy.models.loading.load_model` is the one entry
point (a checkpoint, an export folder or an ensemble).

Reading is safe: ``torch.load(weights_only=True)`` (no pickle code runs) and hyper-parameters
checked to be plain values (:func:`empathy.allowlist.check_plain`), so that nothing a file holds
can name a class or function to build. Files written before one model served every mechanism
(a single-mechanism model: ``mechanism: IP`` and heads ``level_head.*``) are read as the model of
that one mechanism (:func:`upgrade`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from empathy import JOINT, MECHANISMS, allowlist
from empathy.decisions import Decision, decisions
from empathy.models.biencoder import BiEncoder, build_net
from empathy.models.ensemble import EnsembleNet

# Hyper-parameters that earlier versions saved and that no longer configure a model: the dev-set
# decoding grid is a study callback now (empathy.study.grids).
RETIRED_KEYS = ("decoding_grid",)
HEAD_PREFIXES = ("level_head.", "rationale_head.")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's contents (``hyper_parameters``, ``state_dict``, ``epoch`` ...). Raises
    :class:`~empathy.allowlist.UnsafeConfigError` when its hyper-parameters hold anything but
    plain values and an allowlisted optimiser and schedule."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    if not isinstance(checkpoint, dict) or "hyper_parameters" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not an empathy training checkpoint (no hyper_parameters / state_dict)")
    allowlist.check_plain(
        checkpoint["hyper_parameters"], f"{path}: hyper_parameters", callables=allowlist.CALLABLE_KEYS
    )
    return checkpoint


def upgrade(
    hparams: Mapping[str, Any], weights: Mapping[str, torch.Tensor], source: str, prefix: str = "net."
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A model's settings and weights as this version names them: ``mechanisms`` (also in
    ``net.mechanisms``) instead of a single ``mechanism``, the heads of a single-mechanism model
    renamed ``<prefix>level_head.*`` -> ``<prefix>heads.<M>.level_head.*``, its class weights as
    ``{M: [...]}``, and :data:`RETIRED_KEYS` dropped. Raises ValueError naming ``source`` when the
    mechanisms are not EPITOME's."""
    hp = {k: v for k, v in hparams.items() if k not in RETIRED_KEYS}
    label = hp.pop("mechanism", None)
    net = dict(hp.get("net") or {})
    mechanisms = list(net.get("mechanisms") or hp.get("mechanisms") or ([label] if label not in (None, JOINT) else []))
    if not mechanisms or any(m not in MECHANISMS for m in mechanisms):
        raise ValueError(
            f"{source}: the model's mechanisms are {mechanisms or label!r}; expected some of {', '.join(MECHANISMS)}"
        )
    weights = dict(weights)
    if not net.get("mechanisms"):  # a single-mechanism model of an earlier version
        (m,) = mechanisms
        weights = {_head_name(k, prefix, m): v for k, v in weights.items()}
        if isinstance(hp.get("class_weights"), (list, tuple)):
            hp["class_weights"] = {m: list(hp["class_weights"])}
    net["mechanisms"] = mechanisms
    hp["net"], hp["mechanisms"] = net, mechanisms
    return hp, weights


def _head_name(key: str, prefix: str, mechanism: str) -> str:
    for head in HEAD_PREFIXES:
        if key.startswith(prefix + head):
            return f"{prefix}heads.{mechanism}.{key[len(prefix) :]}"
    return key


def state_dict_sha256(module: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict (weights identity)."""
    state = module.state_dict() if isinstance(module, nn.Module) else module
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def tokenizer_sha256(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer (offsets are needed)")
    return hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()


@dataclass
class LoadedModel:
    """A trained network (a bi-encoder, or an ensemble of them) with its settings (the
    checkpoint's hyper-parameters as :func:`upgrade` names them) and what feeds it."""

    hparams: dict[str, Any]
    net: BiEncoder | EnsembleNet
    source: str  # the checkpoint file or export folder (members joined with " + ")
    seeker_sha256: str | None = None  # None: no seeker encoder (use_attention=false)
    info: dict = field(default_factory=dict)  # epoch, metrics and provenance, when known
    tokenizer_override: Any = None  # an export's own tokenizer files

    @property
    def mechanisms(self) -> tuple[str, ...]:
        return tuple(self.net.mechanisms)

    @property
    def encoder(self) -> dict:
        return dict(self.hparams["encoder"])

    @property
    def max_len(self) -> int:
        return int(self.hparams.get("max_len", 64))

    @property
    def rationale_policy(self) -> str:
        return self.hparams.get("rationale_policy", "strict")

    @property
    def decisions(self) -> dict[str, Decision]:
        """Each mechanism's level offsets and rationale decoding."""
        return decisions(self.mechanisms, self.hparams.get("rationale_decoding"), self.hparams.get("level_offsets"))

    @property
    def tokenizer(self) -> Any:
        if self.tokenizer_override is None:
            from empathy.encoders import load_tokenizer

            self.tokenizer_override = load_tokenizer(self.encoder)
        return self.tokenizer_override

    @property
    def token_key(self) -> tuple[str, int]:
        """Models with the same key tokenize a post identically."""
        return (tokenizer_sha256(self.tokenizer), self.max_len)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedModel:
    """A training checkpoint (:func:`read_checkpoint`, :func:`upgrade`)."""
    checkpoint = read_checkpoint(path, map_location)
    hparams, state = upgrade(checkpoint["hyper_parameters"], checkpoint["state_dict"], str(path))
    net = build_net(hparams["encoder"], hparams["net"])
    net.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})
    net.eval()
    return LoadedModel(
        hparams,
        net,
        str(path),
        seeker_sha256=None if net.seeker_encoder is None else state_dict_sha256(net.seeker_encoder),
        info={"epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step")},
    )


def check_mechanisms(model: LoadedModel, mechanisms: Sequence[str] | str | None) -> LoadedModel:
    """``model``, when it scores exactly ``mechanisms`` (or the one mechanism named); else a
    ValueError naming its source."""
    if isinstance(mechanisms, str):
        mechanisms = (mechanisms,)
    if mechanisms is not None and tuple(mechanisms) != model.mechanisms:
        raise ValueError(
            f"{model.source} scores {', '.join(model.mechanisms)}, but it was given as the model of "
            f"{', '.join(mechanisms)}"
        )
    return model


def random_heads_model(
    encoder: Mapping[str, Any], mechanisms: Sequence[str], max_len: int = 64, seed: int = 1
) -> LoadedModel:
    """A bi-encoder on ``encoder`` (its pretrained weights) with randomly initialised attention and
    heads, for benchmarks: the speed of a model does not depend on its weights. Seeker encoders
    built with the same ``encoder`` are the same weights, as after training (frozen)."""
    net = build_net(encoder, {"mechanisms": list(mechanisms)})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (net.heads, net.attention):
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    hparams = {
        "encoder": dict(encoder),
        "mechanisms": list(mechanisms),
        "net": {"mechanisms": list(mechanisms)},
        "max_len": max_len,
        "rationale_policy": "strict",
    }
    seeker = None if net.seeker_encoder is None else state_dict_sha256(net.seeker_encoder)
    return LoadedModel(hparams, net.eval(), f"{encoder.get('name')}, random heads", seeker_sha256=seeker)
