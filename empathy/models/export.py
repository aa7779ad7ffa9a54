"""The export format: a self-contained folder for prediction (safetensors, tokenizer files and a
``config.json``; no optimiser state, no pickle, no Hydra run folder needed).

    export_model("runs/<run>/checkpoints/best-epoch05.ckpt", "models/joint")
    load_exported("models/joint")      # or empathy.models.loading.load_model, which dispatches

A folder of an earlier version (a single-mechanism model) loads as the model of its mechanism
(:func:`empathy.models.checkpoint.upgrade`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from empathy import allowlist
from empathy.encoders import load_encoder
from empathy.models.biencoder import build_net
from empathy.models.checkpoint import LoadedModel, check_mechanisms, load_checkpoint, state_dict_sha256, upgrade

EXPORT_FORMAT = "empathy-export"
EXPORT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SEEKER_WEIGHTS_FILE = "seeker.safetensors"
ENCODER_CONFIG_DIR = "encoder"
TOKENIZER_DIR = "tokenizer"
SEEKER_PREFIX = "seeker_encoder."
# The model settings an export's config.json carries (what prediction needs).
SETTINGS = (
    "mechanisms",
    "encoder",
    "max_len",
    "rationale_policy",
    "net",
    "data_config",
    "rationale_decoding",
    "level_offsets",
)


def _architecture_only(encoder: Mapping[str, Any], folder: Path) -> dict:
    """An encoder config that builds the saved architecture with random weights (no download)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder).to_dict()
    config.pop("architectures", None)
    config.pop("transformers_version", None)
    config.pop("_name_or_path", None)
    return {"name": encoder.get("name"), "path": None, "config": config}


def load_exported(folder: str | Path, map_location: str | torch.device = "cpu") -> LoadedModel:
    """A folder written by :func:`export_model`."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not an exported empathy model (no {CONFIG_FILE})")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    allowlist.check_plain(config, str(config_path))
    if config.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{config_path}: format {config.get('format')!r}, expected {EXPORT_FORMAT!r}")
    if int(config.get("format_version", 0)) > EXPORT_VERSION:
        raise ValueError(
            f"{config_path}: format_version {config['format_version']} is newer than this code "
            f"reads ({EXPORT_VERSION}); update the empathy package"
        )
    device = torch.device(map_location)
    hparams, state = upgrade(config, load_file(folder / WEIGHTS_FILE, device=str(device)), str(config_path), prefix="")
    net = build_net(_architecture_only(hparams["encoder"], folder / ENCODER_CONFIG_DIR), hparams["net"])
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(SEEKER_PREFIX)]
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS_FILE}: missing weights {missing[:5]}, unexpected {unexpected[:5]}")
    seeker = config.get("seeker") or {}
    seeker_sha = None
    if net.seeker_encoder is not None:
        if seeker.get("source") == "stored":
            net.seeker_encoder.load_state_dict(load_file(folder / seeker["file"], device=str(device)))
        elif seeker.get("source") == "pretrained":
            net.seeker_encoder.load_state_dict(load_encoder(config["encoder"]).state_dict())
        else:
            raise ValueError(
                f"{config_path}: seeker.source must be 'stored' or 'pretrained', not {seeker.get('source')!r}"
            )
        seeker_sha = state_dict_sha256(net.seeker_encoder)
        if seeker.get("sha256") and seeker_sha != seeker["sha256"]:
            where = (
                f"the pretrained encoder {seeker.get('pretrained_path')!r}"
                if seeker.get("source") == "pretrained"
                else folder / seeker["file"]
            )
            raise ValueError(
                f"{folder}: the seeker encoder weights from {where} are not the ones the model was "
                f"exported with (sha256 {seeker_sha[:12]} != {seeker['sha256'][:12]}); re-export "
                "with seeker=store"
            )
        if net.freeze_seeker:
            net.seeker_encoder.requires_grad_(False)
    net.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER_DIR, use_fast=True)
    settings = {k: hparams[k] for k in SETTINGS if k in hparams}
    info = {k: config.get(k) for k in ("metrics", "source_checkpoint", "epoch", "global_step")}
    return LoadedModel(settings, net, str(folder), seeker_sha256=seeker_sha, info=info, tokenizer_override=tokenizer)


def _find_metrics(ckpt_path: Path) -> tuple[dict | None, Path | None]:
    """The run's metrics.json: next to the checkpoint or in the run folder above ``checkpoints/``."""
    for candidate in (ckpt_path.parent / "metrics.json", ckpt_path.parent.parent / "metrics.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text(encoding="utf-8")), candidate
            except (OSError, ValueError):
                return None, None
    return None, None


def _contiguous(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def export_model(
    ckpt_path: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    seeker: str = "auto",
    mechanisms: Sequence[str] | None = None,
) -> Path:
    """Write a self-contained folder for prediction from a training checkpoint.

    ``out/``: ``config.json`` (mechanisms, encoder, max_len, labelling policy, net settings,
    decodings and level offsets, the run's metrics when its ``metrics.json`` is found),
    ``model.safetensors`` (response encoder, attention, heads), ``encoder/config.json`` (the
    encoder architecture), ``tokenizer/`` and, unless referenced, ``seeker.safetensors``.
    ``seeker="auto"`` references the pretrained encoder by its name/path (``config.json`` ->
    ``seeker.source = "pretrained"``) when the frozen seeker encoder's weights equal it, and
    stores it otherwise; ``seeker="store"`` always stores it. The seeker weights' SHA-256 is
    recorded and checked at load time.

    Written into a temporary folder next to ``out`` and renamed into place; an existing ``out`` is
    refused unless ``overwrite``. With ``mechanisms``, a checkpoint of other mechanisms is refused.
    """
    from safetensors.torch import save_file

    if seeker not in ("auto", "store"):
        raise ValueError(f"seeker must be 'auto' or 'store', not {seeker!r}")
    ckpt_path, out = Path(ckpt_path), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=true to replace it")
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path} (expected a training .ckpt file)")
    model = check_mechanisms(load_checkpoint(ckpt_path), mechanisms)
    net = model.net
    seeker_info: dict[str, Any] | None = None
    if net.seeker_encoder is not None:
        seeker_info = {"sha256": model.seeker_sha256, "source": "stored", "file": SEEKER_WEIGHTS_FILE}
        pretrained = model.encoder.get("path")
        if seeker == "auto" and pretrained:
            reference = state_dict_sha256(load_encoder(model.encoder))
            if reference == model.seeker_sha256:
                seeker_info = {"sha256": model.seeker_sha256, "source": "pretrained", "pretrained_path": pretrained}
    metrics, metrics_file = _find_metrics(ckpt_path)
    config = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        **{k: model.hparams.get(k) for k in SETTINGS},
        "seeker": seeker_info,
        "source_checkpoint": str(ckpt_path.resolve()),
        "epoch": model.info.get("epoch"),
        "global_step": model.info.get("global_step"),
        "metrics": None if metrics is None else metrics.get("metrics", metrics),
        "metrics_file": None if metrics_file is None else str(metrics_file.resolve()),
        # The run's metrics are those of its best checkpoint: say whether this is that one.
        "metrics_checkpoint": None if metrics is None else metrics.get("best_checkpoint"),
        "versions": {"torch": torch.__version__, "transformers": _transformers_version()},
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        state = net.state_dict()
        save_file(
            _contiguous({k: v for k, v in state.items() if not k.startswith(SEEKER_PREFIX)}),
            tmp / WEIGHTS_FILE,
            metadata={"format": "pt"},
        )
        if seeker_info is not None and seeker_info["source"] == "stored":
            save_file(
                _contiguous(net.seeker_encoder.state_dict()), tmp / SEEKER_WEIGHTS_FILE, metadata={"format": "pt"}
            )
        net.response_encoder.config.save_pretrained(tmp / ENCODER_CONFIG_DIR)
        model.tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        # mkdtemp makes a private folder and safetensors private files: give the export the
        # permissions any file the user writes gets (their umask).
        os.chmod(tmp, 0o777 & ~_umask())
        for path in tmp.rglob("*"):
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())
        if out.exists():  # overwrite: move the old folder aside, then swap
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.rename(out, old / out.name)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
