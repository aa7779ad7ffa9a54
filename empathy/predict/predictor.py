"""Empathy prediction on new (seeker post, response post) pairs.

A model is a training checkpoint (``.ckpt``, loaded with ``weights_only=True``) or an exported
folder (:func:`export_model`: safetensors, tokenizer files and a ``config.json``; no pickle, no
Hydra run folder needed). :class:`EmpathyPredictor` holds one model per mechanism (ER / IP / EX),
or a joint model (``model=joint``, given as ``joint``) that scores all three with one response
pass and one seeker pass per batch, or a mix (each mechanism from exactly one model), and scores
pairs in batches:

- rows are sorted by token length within a window of ``sort_window`` batches and each batch is
  padded to its own longest post (dynamic padding); results are put back in input order;
- each post is tokenized once per distinct tokenizer (and ``max_len``), not once per model;
- the seeker post is encoded once for all the mechanisms whose frozen seeker encoders are the same
  weights (a SHA-256 of the seeker encoder's state dict) and tokenizer; models whose seeker
  encoders differ get their own seeker pass;
- ``torch.inference_mode`` and, where supported, bf16 autocast (``precision``).

The batching depends only on the input order, ``batch_size`` and ``sort_window``, so the same
input gives bit-identical outputs on the same machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from empathy import JOINT, MECHANISMS, allowlist
from empathy.decoding import RationaleDecoding, rationale_probs
from empathy.levels import adjusted, level_offsets
from empathy.models.biencoder import NUM_LEVELS, BiEncoder, EnsembleNet, build_net
from empathy.models.checkpoint import read_checkpoint
from empathy.models.encoders import load_encoder, load_tokenizer

EXPORT_FORMAT = "empathy-export"
EXPORT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SEEKER_WEIGHTS_FILE = "seeker.safetensors"
ENCODER_CONFIG_DIR = "encoder"
TOKENIZER_DIR = "tokenizer"
SEEKER_PREFIX = "seeker_encoder."
PRECISIONS = ("auto", "32", "bf16", "16")
# What a model may be given as: a mechanism (a single-mechanism model) or the joint model.
MODEL_KEYS = (*MECHANISMS, JOINT)


# ---------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RationaleSpan:
    """A run of predicted rationale tokens as characters ``[start, end)`` of the response."""

    start: int
    end: int
    text: str


@dataclass
class MechanismPredictions:
    """One mechanism's predictions for n pairs, in input order."""

    mechanism: str
    levels: np.ndarray  # [n] int64, argmax of the level logits (plus the model's level offsets)
    probs: np.ndarray  # [n, 3] float32, softmax of the same
    rationales: list[list[RationaleSpan]]  # per pair, in response order

    def rationale_texts(self, separator: str = "|") -> list[str]:
        """Each pair's rationale spans joined like the dataset's ``rationales`` column."""
        return [separator.join(span.text for span in spans) for spans in self.rationales]


# ---------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------


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
    """A bi-encoder for one mechanism (or a joint one, ``mechanism == "joint"``) with what is
    needed to feed it."""

    mechanism: str
    net: BiEncoder
    tokenizer: Any
    max_len: int
    rationale_policy: str
    encoder: dict  # the encoder config it was trained with (name, path, tokenizer, config)
    source: str  # the checkpoint file or export folder
    net_config: dict = field(default_factory=dict)
    data_config: dict = field(default_factory=dict)
    rationale_decoding: dict = field(default_factory=dict)  # threshold, fill_gaps, min_span [, per mechanism] (empty: argmax)
    level_offsets: dict | None = None  # per mechanism [level 1, level 2] added to the level logits (None: argmax)
    seeker_sha256: str | None = None  # None: no seeker encoder (use_attention=false)
    info: dict = field(default_factory=dict)  # metrics and provenance, when known

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """The mechanisms it scores: its own, or those of a joint model's heads."""
        return tuple(getattr(self.net, "mechanisms", None) or (self.mechanism,))

    @property
    def token_key(self) -> tuple[str, int]:
        """Models with the same key tokenize a post identically."""
        return (tokenizer_sha256(self.tokenizer), int(self.max_len))


def _net_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("net."):]: v for k, v in state_dict.items() if k.startswith("net.")}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedModel:
    """A training checkpoint (:func:`~empathy.models.checkpoint.read_checkpoint`: no pickle code
    runs, and its hyper-parameters can name no class to build)."""
    path = Path(path)
    checkpoint = read_checkpoint(path, map_location)
    hp = checkpoint["hyper_parameters"]
    net = build_net(hp["encoder"], hp["net"])
    net.load_state_dict(_net_state(checkpoint["state_dict"]))
    net.eval()
    return LoadedModel(
        mechanism=hp["mechanism"],
        net=net,
        tokenizer=load_tokenizer(hp["encoder"]),
        max_len=int(hp.get("max_len", 64)),
        rationale_policy=hp.get("rationale_policy", "strict"),
        encoder=dict(hp["encoder"]),
        source=str(path),
        net_config=dict(hp["net"]),
        data_config=dict(hp.get("data_config") or {}),
        rationale_decoding=dict(hp.get("rationale_decoding") or {}),
        level_offsets=hp.get("level_offsets"),
        seeker_sha256=None if net.seeker_encoder is None else state_dict_sha256(net.seeker_encoder),
        info={"epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step")},
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
    net = build_net(_architecture_only(config["encoder"], folder / ENCODER_CONFIG_DIR), config["net"])
    state = load_file(folder / WEIGHTS_FILE, device=str(device))
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
            raise ValueError(f"{config_path}: seeker.source must be 'stored' or 'pretrained', not {seeker.get('source')!r}")
        seeker_sha = state_dict_sha256(net.seeker_encoder)
        if seeker.get("sha256") and seeker_sha != seeker["sha256"]:
            where = f"the pretrained encoder {seeker.get('pretrained_path')!r}" if seeker.get("source") == "pretrained" else folder / seeker["file"]
            raise ValueError(
                f"{folder}: the seeker encoder weights from {where} are not the ones the model was "
                f"exported with (sha256 {seeker_sha[:12]} != {seeker['sha256'][:12]}); re-export "
                "with seeker=store"
            )
        if net.freeze_seeker:
            net.seeker_encoder.requires_grad_(False)
    net.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER_DIR, use_fast=True)
    return LoadedModel(
        mechanism=config["mechanism"],
        net=net,
        tokenizer=tokenizer,
        max_len=int(config["max_len"]),
        rationale_policy=config.get("rationale_policy", "strict"),
        encoder=dict(config["encoder"]),
        source=str(folder),
        net_config=dict(config["net"]),
        data_config=dict(config.get("data_config") or {}),
        rationale_decoding=dict(config.get("rationale_decoding") or {}),
        level_offsets=config.get("level_offsets"),
        seeker_sha256=seeker_sha,
        info={k: config.get(k) for k in ("metrics", "source_checkpoint", "epoch", "global_step")},
    )


def load_model(path: str | Path | Sequence[str | Path], mechanism: str | None = None,
               map_location: str | torch.device = "cpu") -> LoadedModel:
    """A checkpoint file or an export folder; with ``mechanism``, check that it is that mechanism's
    (``"joint"``: a joint model). A list of them: their ensemble (:func:`load_ensemble`)."""
    if not isinstance(path, (str, Path)):
        return load_ensemble(list(path), mechanism, map_location)
    path = Path(path)
    if path.is_dir():
        model = load_exported(path, map_location)
    elif path.is_file():
        model = load_checkpoint(path, map_location)
    else:
        what = f"the {mechanism} model" if mechanism else "model"
        raise FileNotFoundError(f"{what} {path} does not exist (expected a .ckpt file or an exported folder)")
    if mechanism is not None and model.mechanism != mechanism:
        raise ValueError(f"{path} is a {model.mechanism} model, but it was given as the {mechanism} model")
    return model


def load_ensemble(paths: Sequence[str | Path], mechanism: str | None = None,
                  map_location: str | torch.device = "cpu") -> LoadedModel:
    """Models of one kind (seeds of one configuration, say) as one: the first's settings
    (decodings, level offsets) with an :class:`~empathy.models.biencoder.EnsembleNet` of every
    network (the mean of their probabilities; one seeker pass, a response pass each). They must
    score the same mechanisms with the same tokenizer, max_len and seeker encoder."""
    if len(paths) == 1:
        return load_model(paths[0], mechanism, map_location)
    models = [load_model(p, mechanism, map_location) for p in paths]
    first = models[0]
    for model in models[1:]:
        for what, a, b in (("mechanism", model.mechanism, first.mechanism), ("mechanisms", model.mechanisms, first.mechanisms),
                           ("tokenizer and max_len", model.token_key, first.token_key),
                           ("seeker encoder", model.seeker_sha256, first.seeker_sha256),
                           ("rationale policy", model.rationale_policy, first.rationale_policy)):
            if a != b:
                raise ValueError(f"ensemble: {model.source}'s {what} differs from {first.source}'s")
    return dataclasses.replace(first, net=EnsembleNet([m.net for m in models]).eval(),
                               source=" + ".join(m.source for m in models),
                               info={**first.info, "ensemble": [m.source for m in models]})


# ---------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------


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
    mechanism: str | None = None,
) -> Path:
    """Write a self-contained folder for prediction from a training checkpoint.

    ``out/``: ``config.json`` (mechanism, or ``joint`` with ``mechanisms``, encoder, max_len, labelling policy, net settings, the
    run's metrics when its ``metrics.json`` is found), ``model.safetensors`` (response encoder,
    attention, heads), ``encoder/config.json`` (the encoder architecture), ``tokenizer/`` and,
    unless referenced, ``seeker.safetensors``. ``seeker="auto"`` references the pretrained encoder
    by its name/path (``config.json`` -> ``seeker.source = "pretrained"``) when the frozen seeker
    encoder's weights equal it, and stores it otherwise; ``seeker="store"`` always stores it. The
    seeker weights' SHA-256 is recorded and checked at load time.

    Written into a temporary folder next to ``out`` and renamed into place; an existing ``out`` is
    refused unless ``overwrite``. With ``mechanism``, a checkpoint of another mechanism is refused.
    """
    from safetensors.torch import save_file

    if seeker not in ("auto", "store"):
        raise ValueError(f"seeker must be 'auto' or 'store', not {seeker!r}")
    ckpt_path, out = Path(ckpt_path), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=true to replace it")
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path} (expected a training .ckpt file)")
    model = load_model(ckpt_path, mechanism=mechanism)
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
        "mechanism": model.mechanism,
        "mechanisms": list(model.mechanisms),
        "encoder": model.encoder,
        "max_len": model.max_len,
        "rationale_policy": model.rationale_policy,
        "net": model.net_config,
        "data_config": model.data_config,
        "rationale_decoding": model.rationale_decoding,
        "level_offsets": model.level_offsets,
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
        save_file(_contiguous({k: v for k, v in state.items() if not k.startswith(SEEKER_PREFIX)}),
                  tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        if seeker_info is not None and seeker_info["source"] == "stored":
            save_file(_contiguous(net.seeker_encoder.state_dict()), tmp / SEEKER_WEIGHTS_FILE, metadata={"format": "pt"})
        net.response_encoder.config.save_pretrained(tmp / ENCODER_CONFIG_DIR)
        model.tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o777 & ~_umask())
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


# ---------------------------------------------------------------------------------------
# batching helpers (pure)
# ---------------------------------------------------------------------------------------


def length_sorted_batches(lengths: Sequence[Sequence[int]] | Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of ``batch_size``, rows sorted by length (stable: ties keep input
    order). ``lengths`` holds an int or a tuple (compared in order) per row."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def token_runs(on: np.ndarray) -> list[list[tuple[int, int]]]:
    """Contiguous runs of True in each row of a [batch, tokens] bool array, as half-open token
    spans (what :func:`empathy.metrics.spans_from_labels` gives for one row)."""
    padded = np.zeros((on.shape[0], on.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = on
    edges = np.diff(padded, axis=1)
    runs: list[list[tuple[int, int]]] = [[] for _ in range(on.shape[0])]
    starts_r, starts_c = np.nonzero(edges == 1)
    _, ends_c = np.nonzero(edges == -1)
    for row, start, end in zip(starts_r.tolist(), starts_c.tolist(), ends_c.tolist(), strict=True):
        runs[row].append((start, end))
    return runs


def _pad(rows: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), value, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(precision: str | int, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (None: fp32). ``auto``: bf16 on a GPU that supports
    it, else fp32 (on CPUs without native bf16, bf16 autocast is several times slower)."""
    precision = str(precision).lower().removesuffix("-mixed").removesuffix("-true")
    if precision in ("32", "fp32", "float32"):
        return None
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if precision in ("bf16", "bfloat16"):
        return torch.bfloat16
    if precision in ("16", "fp16", "float16"):
        if device.type != "cuda":
            raise ValueError("precision=16 (fp16 autocast) needs a CUDA device; use 32 or bf16 on the CPU")
        return torch.float16
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


# ---------------------------------------------------------------------------------------
# the predictor
# ---------------------------------------------------------------------------------------


@dataclass
class _TokenGroup:
    """Models (by the name they were given as) that tokenize posts identically."""

    tokenizer: Any
    max_len: int
    mechanisms: list[str]


@dataclass
class _Encoded:
    seeker_ids: list[list[int]]
    response_ids: list[list[int]]
    response_offsets: list[list[tuple[int, int]]]
    response_real: list[list[int]]  # 1 for real response tokens, 0 for special ones


class EmpathyPredictor:
    """Scores (seeker post, response post) pairs with one model per mechanism, or a joint model
    (given as ``joint``) for all of its mechanisms; each mechanism comes from exactly one model.

    >>> predictor = EmpathyPredictor.from_pretrained({"ER": "er.ckpt", "IP": "exported/IP"})
    >>> out = predictor.predict(["I feel alone."], ["I'm so sorry. Do you want to talk?"])
    >>> out["ER"].levels[0], out["ER"].probs[0], out["ER"].rationales[0]
    >>> EmpathyPredictor.from_pretrained({"joint": "exported/joint"}).predict(...)  # ER, IP and EX
    """

    def __init__(
        self,
        models: Mapping[str, LoadedModel],
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        batch_size: int = 64,
        sort_window: int = 50,
        share_seeker: bool = True,
    ) -> None:
        if not models:
            raise ValueError(f"no model given: expected one or more of {', '.join(MODEL_KEYS)}")
        model_of: dict[str, str] = {}  # mechanism -> the name of the model that scores it
        for name, model in models.items():
            if name not in MODEL_KEYS:
                raise ValueError(f"unknown mechanism {name!r}: expected one of {', '.join(MODEL_KEYS)}")
            if model.mechanism != name:
                raise ValueError(f"{model.source} is a {model.mechanism} model, but it was given as the {name} model")
            for m in model.mechanisms:
                if m in model_of:
                    raise ValueError(f"{m} is scored by two models, the {model_of[m]} and the {name} model: give one")
                model_of[m] = name
        if batch_size < 1 or sort_window < 1:
            raise ValueError(f"batch_size and sort_window must be >= 1, got {batch_size} and {sort_window}")
        self.device = resolve_device(device)
        self.dtype = autocast_dtype(precision, self.device)
        self.batch_size = int(batch_size)
        self.sort_window = int(sort_window)
        self.models = {m: models[m] for m in MODEL_KEYS if m in models}
        self._model_of = {m: model_of[m] for m in MECHANISMS if m in model_of}
        for model in self.models.values():
            model.net.to(self.device).eval()

        groups: dict[tuple[str, int], _TokenGroup] = {}
        self._token_group_of: dict[str, int] = {}
        for m, model in self.models.items():
            key = model.token_key
            if key not in groups:
                groups[key] = _TokenGroup(model.tokenizer, model.max_len, [])
            groups[key].mechanisms.append(m)
            self._token_group_of[m] = list(groups).index(key)
        self._token_groups = list(groups.values())

        # Seeker groups: models whose seeker posts are tokenized alike and whose seeker encoders
        # have the same weights share one seeker pass.
        seeker_groups: dict[tuple, list[str]] = {}
        for m, model in self.models.items():
            if model.net.seeker_encoder is None:
                continue
            key = (self._token_group_of[m], model.seeker_sha256) if share_seeker else (m,)
            seeker_groups.setdefault(key, []).append(m)
        self.seeker_groups: list[tuple[str, ...]] = [tuple(ms) for ms in seeker_groups.values()]
        self.counts = {"seeker_passes": 0, "response_passes": 0, "batches": 0}

    @classmethod
    def from_pretrained(cls, paths: Mapping[str, str | Path], **kwargs: Any) -> EmpathyPredictor:
        """Load each mechanism's model (a .ckpt or an export folder) and check that it is that
        mechanism's; ``joint``: a joint model. Keyword arguments: ``device``, ``precision``,
        ``batch_size``, ``sort_window``, ``share_seeker``."""
        unknown = [m for m in paths if m not in MODEL_KEYS]
        if unknown:
            raise ValueError(f"unknown mechanism(s) {unknown}: expected some of {', '.join(MODEL_KEYS)}")
        models = {m: load_model(p, mechanism=m) for m, p in paths.items() if p}
        return cls(models, **kwargs)

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """The mechanisms scored (in ER, IP, EX order), whichever models score them."""
        return tuple(self._model_of)

    # ------------------------------------------------------------------ tokenization
    def _encode(self, group: _TokenGroup, seekers: Sequence[str], responses: Sequence[str]) -> _Encoded:
        kwargs = {
            "truncation": True,
            "max_length": group.max_len,
            "padding": False,
            "return_attention_mask": False,
            "return_token_type_ids": False,
        }
        need_seeker = any(self.models[m].net.seeker_encoder is not None for m in group.mechanisms)
        seeker_ids = group.tokenizer(list(seekers), **kwargs)["input_ids"] if need_seeker else []
        enc = group.tokenizer(
            list(responses), return_offsets_mapping=True, return_special_tokens_mask=True, **kwargs
        )
        real = [[1 - s for s in special] for special in enc["special_tokens_mask"]]
        return _Encoded(seeker_ids, enc["input_ids"], enc["offset_mapping"], real)

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        seeker_posts: Sequence[str],
        response_posts: Sequence[str],
        *,
        progress: Callable[[int], Any] | None = None,
    ) -> dict[str, MechanismPredictions]:
        """Levels, level probabilities and rationale spans for each pair, per mechanism.

        ``progress`` (optional) is called with the number of pairs done after each batch.
        """
        seekers, responses = list(seeker_posts), list(response_posts)
        if len(seekers) != len(responses):
            raise ValueError(f"{len(seekers)} seeker posts but {len(responses)} response posts")
        for name, posts in (("seeker_posts", seekers), ("response_posts", responses)):
            for i, post in enumerate(posts):
                if not isinstance(post, str) or not post.strip():
                    raise ValueError(f"{name}[{i}]: expected non-empty text, got {post!r:.60}")
        n = len(responses)
        levels = {m: np.zeros(n, dtype=np.int64) for m in self.mechanisms}
        probs = {m: np.zeros((n, NUM_LEVELS), dtype=np.float32) for m in self.mechanisms}
        rationales: dict[str, list[list[RationaleSpan]]] = {m: [[] for _ in range(n)] for m in self.mechanisms}
        window = self.batch_size * self.sort_window
        for w0 in range(0, n, window):
            w1 = min(n, w0 + window)
            encoded = [self._encode(g, seekers[w0:w1], responses[w0:w1]) for g in self._token_groups]
            first = encoded[0]
            lengths = [
                (len(first.response_ids[i]), len(first.seeker_ids[i]) if first.seeker_ids else 0)
                for i in range(w1 - w0)
            ]
            for rows in length_sorted_batches(lengths, self.batch_size):
                self._predict_batch(rows, w0, encoded, responses, levels, probs, rationales)
                if progress is not None:
                    progress(len(rows))
        return {m: MechanismPredictions(m, levels[m], probs[m], rationales[m]) for m in self.mechanisms}

    @torch.inference_mode()
    def _predict_batch(self, rows, offset, encoded, responses, levels, probs, rationales) -> None:
        device = self.device
        self.counts["batches"] += 1
        tensors = []
        for group, enc in zip(self._token_groups, encoded, strict=True):
            pad = group.tokenizer.pad_token_id or 0
            r_ids, r_mask = _pad([enc.response_ids[i] for i in rows], pad)
            s_ids, s_mask = _pad([enc.seeker_ids[i] for i in rows], pad) if enc.seeker_ids else (None, None)
            tensors.append({
                "r_ids": r_ids.to(device), "r_mask": r_mask.to(device),
                "s_ids": None if s_ids is None else s_ids.to(device),
                "s_mask": None if s_mask is None else s_mask.to(device),
            })
        with self._autocast():
            seeker_states: dict[str, torch.Tensor] = {}
            for group in self.seeker_groups:
                t = tensors[self._token_group_of[group[0]]]
                states = self.models[group[0]].net.encode_seeker(t["s_ids"], t["s_mask"])
                self.counts["seeker_passes"] += 1
                for m in group:
                    seeker_states[m] = states
            outputs = {}
            for name, model in self.models.items():
                t = tensors[self._token_group_of[name]]
                out = model.net(
                    response_input_ids=t["r_ids"],
                    response_attention_mask=t["r_mask"],
                    seeker_attention_mask=t["s_mask"],
                    seeker_states=seeker_states.get(name),
                )
                # a joint model gives every mechanism's output from its one response pass
                outputs.update(out if isinstance(out, dict) else {name: out})
                self.counts["response_passes"] += 1
        index = np.asarray(rows, dtype=np.int64) + offset
        for m, out in outputs.items():
            model = self.models[self._model_of[m]]
            logits = adjusted(out.level_logits.float(), level_offsets(model.level_offsets, m))
            level = logits.argmax(-1)
            levels[m][index] = level.cpu().numpy()
            probs[m][index] = torch.softmax(logits, dim=-1).cpu().numpy()
            enc = encoded[self._token_group_of[self._model_of[m]]]
            real = np.zeros(tuple(out.rationale_logits.shape[:2]), dtype=bool)
            for k, i in enumerate(rows):
                real[k, : len(enc.response_real[i])] = enc.response_real[i]
            decoding = RationaleDecoding.from_config(model.rationale_decoding, m)
            probs_r = rationale_probs(out.rationale_logits)
            token = decoding.decode(probs_r, torch.from_numpy(real).to(probs_r.device), level).cpu().numpy()
            for k, runs in enumerate(token_runs((token == 1) & real)):
                if not runs:
                    continue
                i = rows[k]
                offsets = enc.response_offsets[i]
                text = responses[offset + i]
                spans = []
                for start, end in runs:
                    a, b = offsets[start][0], offsets[end - 1][1]
                    spans.append(RationaleSpan(a, b, text[a:b]))
                rationales[m][offset + i] = spans
