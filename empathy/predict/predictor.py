"""Empathy prediction on new (seeker post, response post) pairs.

A model is a training checkpoint (``.ckpt``) or an exported folder
(:func:`~empathy.models.export.export_model`), loaded by
:func:`empathy.models.loading.load_model` (a list of them: their ensemble). A model scores the
mechanisms it was trained on: all three (given as ``joint``) with one response pass and one
seeker pass per batch, or one (given as that mechanism: ``ER``, ``IP`` or ``EX``).
:class:`EmpathyPredictor` holds any mix of them (each mechanism from exactly one model), and
scores pairs in batches:

- rows are sorted by token length within a window of ``sort_window`` batches and each batch is
  padded to its own longest post (dynamic padding); results are put back in input order;
- each post is tokenized once per distinct tokenizer (and ``max_len``), not once per model;
- the seeker post is encoded once for all the mechanisms whose frozen seeker encoders are the same
  weights (a SHA-256 of the seeker encoder's state dict) and tokenizer; models whose seeker
  encoders differ get their own seeker pass;
- ``torch.inference_mode`` and, where supported, bf16 autocast (``precision``).

The batching depends only on the input order, ``batch_size`` and ``sort_window``, so the same
input gives bit-identical outputs on the same machine.

What a prediction means: a mechanism's level is the argmax of its level logits plus the model's
level offsets (:mod:`empathy.decisions`), its probabilities are the softmax of those same offset
logits (so that the level is always the most probable one), and its rationale is the response
spans that justify that level: none when the predicted level is 0, as in the gold data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from empathy import JOINT, MECHANISMS
from empathy.models.biencoder import NUM_LEVELS
from empathy.models.checkpoint import LoadedModel
from empathy.models.loading import load_model

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
    levels: np.ndarray  # [n] int64, argmax of the level logits plus the model's level offsets
    probs: np.ndarray  # [n, 3] float32, softmax of the same offset logits
    rationales: list[list[RationaleSpan]]  # per pair, in response order (none at level 0)

    def rationale_texts(self, separator: str = "|") -> list[str]:
        """Each pair's rationale spans joined like the dataset's ``rationales`` column."""
        return [separator.join(span.text for span in spans) for spans in self.rationales]


# ---------------------------------------------------------------------------------------
# batching helpers (pure)
# ---------------------------------------------------------------------------------------


def length_sorted_batches(lengths: Sequence[Sequence[int]] | Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of ``batch_size``, rows sorted by length (stable: ties keep input
    order). ``lengths`` holds an int or a tuple (compared in order) per row."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


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
    """The autocast dtype for ``precision`` (None: fp32). ``auto``: bf16 where it is fast (a GPU
    that supports it, a CPU with native bf16: :func:`empathy.hardware.bf16_is_fast`), else fp32
    (on CPUs without native bf16, bf16 autocast is several times slower)."""
    precision = str(precision).lower().removesuffix("-mixed").removesuffix("-true")
    if precision in ("32", "fp32", "float32"):
        return None
    if precision == "auto":
        from empathy.hardware import bf16_is_fast

        return torch.bfloat16 if bf16_is_fast(device.type) else None
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
            if name != JOINT and model.mechanisms != (name,):
                raise ValueError(
                    f"{model.source} scores {', '.join(model.mechanisms)}, but it was given as the {name} model"
                )
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
    def from_pretrained(cls, paths: Mapping[str, str | Path | Sequence[str | Path]], **kwargs: Any) -> EmpathyPredictor:
        """Load each model (a .ckpt, an export folder, or a list of them: an ensemble) and check
        that it scores what it is given as: ``ER`` / ``IP`` / ``EX`` that mechanism alone,
        ``joint`` any mechanisms. Keyword arguments: ``device``, ``precision``, ``batch_size``,
        ``sort_window``, ``share_seeker``."""
        unknown = [m for m in paths if m not in MODEL_KEYS]
        if unknown:
            raise ValueError(f"unknown mechanism(s) {unknown}: expected some of {', '.join(MODEL_KEYS)}")
        models = {m: load_model(p, mechanisms=None if m == JOINT else (m,)) for m, p in paths.items() if p}
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
        enc = group.tokenizer(list(responses), return_offsets_mapping=True, return_special_tokens_mask=True, **kwargs)
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
            tensors.append(
                {
                    "r_ids": r_ids.to(device),
                    "r_mask": r_mask.to(device),
                    "s_ids": None if s_ids is None else s_ids.to(device),
                    "s_mask": None if s_mask is None else s_mask.to(device),
                }
            )
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
                outputs.update(out)  # every mechanism the model scores, from its one response pass
                self.counts["response_passes"] += 1
        index = np.asarray(rows, dtype=np.int64) + offset
        for m, out in outputs.items():
            model = self.models[self._model_of[m]]
            decision = model.decisions[m]
            logits = decision.level_logits(out.level_logits.float())
            level = logits.argmax(-1)
            levels[m][index] = level.cpu().numpy()
            probs[m][index] = torch.softmax(logits, dim=-1).cpu().numpy()
            enc = encoded[self._token_group_of[self._model_of[m]]]
            real = np.zeros(tuple(out.rationale_logits.shape[:2]), dtype=bool)
            for k, i in enumerate(rows):
                real[k, : len(enc.response_real[i])] = enc.response_real[i]
            mask = torch.from_numpy(real).to(out.rationale_logits.device)
            token = decision.rationale(out.rationale_logits, mask, level).cpu().numpy()
            # a rationale justifies a level above 0 (gold level-0 rows have none)
            token[level.cpu().numpy() == 0] = 0
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
