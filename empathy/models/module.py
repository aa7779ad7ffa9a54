"""LightningModule around the bi-encoder: optimiser, steps, decisions, metrics over whole splits."""

from __future__ import annotations

import hashlib
import inspect
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torch.optim.lr_scheduler import LambdaLR

from empathy import MECHANISMS, allowlist
from empathy.data.merge import IGNORE_INDEX, level_column, rationale_column
from empathy.decisions import decisions
from empathy.decoding import decoding_config
from empathy.io import atomic_output, file_lock
from empathy.metrics import RationaleMetrics, level_metrics
from empathy.models.biencoder import LAYER_INDEX, BiEncoderOutput, build_net, multitask_loss
from empathy.models.loading import load_model

STAGE_PREFIX = {"val": "dev", "test": "test"}
# The seeker cache's files (EmpathyModule.build_seeker_cache) live in <data cache_dir>/seeker_states.
SEEKER_STATES = "seeker_states"


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0 (the paper: no warm-up)."""
    warmup = int(round(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return LambdaLR(optimizer, factor)


# The keywords of multitask_loss a loss config may set (lambda_EI, lambda_RE and any later one);
# class_weights is per mechanism.
LOSS_KEYWORDS = tuple(
    name
    for name, p in inspect.signature(multitask_loss).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "class_weights"
)


def _rows(output: BiEncoderOutput, keep: Tensor) -> BiEncoderOutput:
    return BiEncoderOutput(level_logits=output.level_logits[keep], rationale_logits=output.rationale_logits[keep])


def _weights_per_mechanism(weights: Any, mechanisms: Sequence[str]) -> dict[str, list[float]] | None:
    """Class weights as ``{mechanism: [w0, w1, w2]}`` from a mapping or one list for all."""
    if weights is None:
        return None
    if isinstance(weights, Mapping):
        missing = [m for m in mechanisms if m not in weights]
        if missing:
            raise ValueError(f"class_weights has no weights for {missing}")
        return {m: [float(w) for w in weights[m]] for m in mechanisms}
    return {m: [float(w) for w in weights] for m in mechanisms}


def _plain(value: Any) -> Any:
    """Configs are stored in checkpoints as plain containers (loadable with weights_only=True)."""
    if isinstance(value, DictConfig) or OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def to_paper_predictions(preds: Tensor, pred_level: Tensor, mask: Tensor) -> Tensor:
    """Rationale predictions under the paper's labelling: a response predicted at level 0 has
    every real token as rationale, as its gold labels would."""
    return torch.where((pred_level == 0).unsqueeze(1), mask.to(preds.dtype), preds)


def layerwise_param_groups(net: torch.nn.Module, lr: float, decay: float = 1.0) -> list[dict[str, Any]]:
    """Trainable parameters in optimiser groups with layer-wise learning-rate decay (LLRD): the
    response encoder's layer i of L gets ``lr * decay ** (L - i)``, its embeddings
    ``lr * decay ** (L + 1)``, everything else (attention, heads) ``lr``. decay 1: one group."""
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    if decay == 1.0:
        return [{"params": [p for _, p in named]}]
    depths = [int(m.group(1)) for n, _ in named if (m := LAYER_INDEX.search(n)) and n.startswith("response_encoder.")]
    layers = max(depths) + 1 if depths else 0
    groups: dict[int, list[torch.nn.Parameter]] = {}
    for name, param in named:
        if not name.startswith("response_encoder."):
            below = 0
        elif m := LAYER_INDEX.search(name):
            below = layers - int(m.group(1))
        else:  # embeddings (and anything before the first layer)
            below = layers + 1
        groups.setdefault(below, []).append(param)
    return [{"params": ps, "lr": lr * decay**below} for below, ps in sorted(groups.items())]


def compile_response_encoder(net: torch.nn.Module) -> None:
    """torch.compile ``net.response_encoder`` in place (its state_dict keys are unchanged), with
    dynamic shapes, once. Inductor's random numbers fall back to eager's, so that dropout draws
    the same masks from the same seed as an uncompiled run."""
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    if getattr(net.response_encoder, "_compiled_call_impl", None) is None:
        net.response_encoder.compile(dynamic=True)


@dataclass
class HeadRows:
    """One mechanism's share of an evaluation batch (its labelled rows): what the metrics, and
    any callback that scores more (``empathy.study.grids``), read from ``validation_step``'s
    output."""

    level_logits: Tensor  # [rows, 3], the head's own
    rationale_logits: Tensor  # [rows, tokens, 2]
    level: Tensor  # [rows] gold
    predicted_level: Tensor  # [rows], with the model's level offsets
    rationale: Tensor  # [rows, tokens] decided rationale tokens
    rationale_strict: Tensor  # [rows, tokens] gold, strict labelling
    rationale_paper: Tensor  # [rows, tokens] gold, the paper's labelling
    mask: Tensor  # [rows, tokens] real response tokens


class EmpathyModule(pl.LightningModule):
    """The bi-encoder (:class:`~empathy.models.biencoder.BiEncoder`) trained on one mechanism or
    several at once (``mechanisms``; the default model scores ER, IP and EX).

    - Loss: the sum over mechanisms of :func:`~empathy.models.biencoder.multitask_loss` on the
      rows labelled for that mechanism (level -100: unlabelled, counted neither in its level nor
      in its rationale loss), each with its own class weights (``class_weights``:
      ``{mechanism: [w0, w1, w2]}``, one list for all, or None).
    - Decisions: each mechanism's level offsets and rationale decoding (:mod:`empathy.decisions`).
    - Metrics: per mechanism ``{dev,test}/<M>/acc``, ``/macro_f1``, ``/f1_level<c>`` and the
      rationale metrics under both labellings (``/rationale_iou_f1_paper`` ...; the unsuffixed
      ones are the strict ones), and ``{dev,test}/macro_f1``, the mean over the mechanisms (the
      checkpoint monitor and what ``empathy.train`` returns).
    """

    def __init__(
        self,
        encoder: Mapping[str, Any],
        net: Mapping[str, Any],
        loss: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        mechanisms: Sequence[str] | None = None,
        cache_seeker: bool = True,
        rationale_policy: str = "strict",
        max_len: int = 64,
        class_weights: Mapping[str, Sequence[float]] | Sequence[float] | None = None,
        data_config: Mapping[str, Any] | None = None,
        layerwise_lr_decay: float = 1.0,
        rationale_decoding: Mapping[str, Any] | None = None,
        level_offsets: Mapping[str, Any] | None = None,
        compile: bool = False,
        trained_net: nn.Module | None = None,
    ) -> None:
        """``trained_net``: a network already built and loaded (a checkpoint's, or an
        ensemble: :meth:`from_checkpoints`) instead of a fresh one from ``encoder`` and ``net``."""
        super().__init__()
        if not 0 < layerwise_lr_decay <= 1:
            raise ValueError(f"layerwise_lr_decay must be in (0, 1], not {layerwise_lr_decay}")
        if rationale_policy not in ("strict", "paper"):
            raise ValueError(f"rationale_policy must be 'strict' or 'paper', not {rationale_policy!r}")
        net = dict(_plain(net))
        saved = tuple(net.get("mechanisms") or ())
        mechanisms = tuple(mechanisms or saved or MECHANISMS)
        if saved and saved != mechanisms:
            raise ValueError(f"mechanisms {list(mechanisms)} differ from net.mechanisms {list(saved)}")
        net["mechanisms"] = list(mechanisms)
        self.save_hyperparameters(
            {
                "encoder": _plain(encoder),
                "mechanisms": list(mechanisms),
                "net": net,
                "loss": _plain(loss),
                "optimizer": _plain(optimizer),
                "scheduler": _plain(scheduler),
                "cache_seeker": cache_seeker,
                "rationale_policy": rationale_policy,
                "max_len": max_len,
                "class_weights": _weights_per_mechanism(_plain(class_weights), mechanisms),
                "data_config": _plain(data_config) or {},
                "layerwise_lr_decay": float(layerwise_lr_decay),
                "rationale_decoding": decoding_config(_plain(rationale_decoding), mechanisms),
                "level_offsets": _plain(level_offsets),
                "compile": bool(compile),
            }
        )
        self.net = trained_net if trained_net is not None else build_net(self.hparams.encoder, net)
        self.decisions = decisions(mechanisms, self.hparams.rationale_decoding, self.hparams.level_offsets)
        weights = self.hparams.class_weights
        for m in mechanisms:
            w = None if weights is None else torch.tensor(weights[m], dtype=torch.float32)
            self.register_buffer(f"class_weights_{m}", w, persistent=False)
        self.split_metrics = nn.ModuleDict()
        for stage in STAGE_PREFIX:
            for m in mechanisms:
                self.split_metrics[f"{stage}_{m}_level"] = level_metrics()
                self.split_metrics[f"{stage}_{m}_rationale"] = RationaleMetrics()
        self.last_confusion: dict[str, Tensor] = {}
        self._seeker_cache: dict[int, Tensor] | None = None

    @property
    def mechanisms(self) -> tuple[str, ...]:
        return tuple(self.hparams.mechanisms)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> EmpathyModule:
        """A training checkpoint (:func:`~empathy.models.loading.load_model`)."""
        return cls.from_checkpoints([path], map_location)

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], map_location: str | torch.device = "cpu") -> EmpathyModule:
        """One checkpoint, or several of one kind as an ensemble (the first's settings, an
        :class:`~empathy.models.ensemble.EnsembleNet` of every network): see
        :func:`~empathy.models.loading.load_model`."""
        for path in paths:  # an export holds no training settings (optimiser, data) to evaluate with
            if Path(path).is_dir():
                raise ValueError(f"{path} is an exported folder: evaluation needs training checkpoints (.ckpt)")
        loaded = load_model([str(p) for p in paths], map_location=map_location)
        settings = {k: v for k, v in loaded.hparams.items() if k in inspect.signature(cls).parameters}
        module = cls(**settings, trained_net=loaded.net)
        if len(paths) > 1:
            module.hparams["ensemble"] = [str(p) for p in paths]
        return module

    # ---------------------------------------------------------------- seeker cache
    @property
    def caches_seeker(self) -> bool:
        net = self.net
        return bool(self.hparams.cache_seeker and net.use_attention and net.freeze_seeker)

    @torch.no_grad()
    def build_seeker_cache(self, loader, store: str | os.PathLike | None = None) -> None:
        """Encode every seeker post once, in a fixed order and batching, so that cached states are
        the same in every run (and after a resume) whatever the training batches are.

        With ``store`` (a folder: the data cache's ``seeker_states/``), the states are also saved
        there under a key of everything they depend on: the seeker encoder's weights, the posts'
        ids and token ids, the device type and the precision. A later run with the same key
        (another seed, a resumed run, an evaluation) loads them instead of encoding the posts
        again. A file under that key is only written
        whole (temporary file, then rename), and built by one process at a time (:func:`file_lock`
        on ``<key>.lock``): jobs that start together (a pool's first jobs, DDP ranks) encode the
        posts once, and the others load the file."""
        batches = list(loader)
        context = self.trainer.precision_plugin.forward_context() if self._trainer is not None else torch.no_grad()
        if store is None:
            self._encode_seekers(batches, context)
            return
        path = Path(store) / f"{self._seeker_cache_key(batches, context)}.pt"
        with file_lock(path.with_suffix(".lock")):
            if path.is_file():
                self._seeker_cache = torch.load(path, map_location=self.device, weights_only=True)
                return
            self._encode_seekers(batches, context)
            with atomic_output(path) as tmp:
                torch.save(self._seeker_cache, tmp)

    def _encode_seekers(self, batches: list, context: Any) -> None:
        was_training = self.net.training
        self.net.eval()
        cache: dict[int, Tensor] = {}
        with context:
            for batch in batches:
                ids = batch["seeker_input_ids"].to(self.device)
                mask = batch["seeker_attention_mask"].to(self.device)
                states = self.net.encode_seeker(ids, mask)
                for row, seeker_id in enumerate(batch["seeker_id"].tolist()):
                    cache[seeker_id] = states[row, : int(mask[row].sum())].clone()
        self._seeker_cache = cache
        self.net.train(was_training)

    def _seeker_cache_key(self, batches: list, context: object) -> str:
        digest = hashlib.sha256()
        digest.update(f"{self.device.type}|{type(context).__name__}|{getattr(context, 'fast_dtype', None)}".encode())
        for name, tensor in self.net.seeker_encoder.state_dict().items():
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        for batch in batches:
            for key in ("seeker_id", "seeker_input_ids", "seeker_attention_mask"):
                digest.update(batch[key].cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:32]

    def _ensure_seeker_cache(self) -> None:
        if not self.caches_seeker or self._seeker_cache is not None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "seeker_dataloader"):
            cache_dir = getattr(datamodule, "cache_dir", None)
            store = Path(cache_dir) / SEEKER_STATES if cache_dir else None
            self.build_seeker_cache(datamodule.seeker_dataloader(), store=store)

    def configure_model(self) -> None:
        """``compile``: torch.compile the response encoder (its forward and backward are most of a
        training step), with dynamic shapes since batches are padded to their longest response.
        Done by the Trainer's fit / validate / test only: loading a checkpoint for prediction does
        not compile. The parameters and the checkpoint's keys are unchanged."""
        if self.hparams.get("compile"):
            compile_response_encoder(self.net)

    def on_fit_start(self) -> None:
        self._ensure_seeker_cache()

    def on_validation_start(self) -> None:
        self._ensure_seeker_cache()

    def on_test_start(self) -> None:
        self._ensure_seeker_cache()

    def on_predict_start(self) -> None:
        self._ensure_seeker_cache()

    def _cached_seeker_states(self, batch: Mapping[str, Tensor]) -> Tensor | None:
        if self._seeker_cache is None:
            return None
        ids = batch["seeker_id"].tolist()
        if any(i not in self._seeker_cache for i in ids):
            return None
        return pad_sequence([self._seeker_cache[i] for i in ids], batch_first=True)

    # ---------------------------------------------------------------- steps
    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, BiEncoderOutput]:
        return self.net(
            response_input_ids=batch["response_input_ids"],
            response_attention_mask=batch["response_attention_mask"],
            seeker_input_ids=batch["seeker_input_ids"],
            seeker_attention_mask=batch["seeker_attention_mask"],
            seeker_states=self._cached_seeker_states(batch),
        )

    def _loss(self, outputs: Mapping[str, BiEncoderOutput], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``loss`` (the sum over mechanisms), ``level_loss``, ``rationale_loss`` (sums) and the
        same per mechanism as ``<M>/loss`` ...; a mechanism without a labelled row in the batch
        adds nothing."""
        keywords = {k: v for k, v in self.hparams.loss.items() if k in LOSS_KEYWORDS}
        policy = self.hparams.rationale_policy
        out: dict[str, Tensor] = {}
        for m in self.mechanisms:
            level = batch[level_column(m)]
            keep = level != IGNORE_INDEX
            if not bool(keep.any()):
                continue
            losses = multitask_loss(
                _rows(outputs[m], keep),
                level[keep],
                batch[rationale_column(m, policy)][keep],
                batch["rationale_mask"][keep],
                class_weights=getattr(self, f"class_weights_{m}"),
                **keywords,
            )
            for name, value in losses.items():
                out[f"{m}/{name}"] = value
                out[name] = out[name] + value if name in out else value
        if "loss" not in out:  # no labelled row at all: a zero that keeps the graph
            zero = sum(o.level_logits.sum() for o in outputs.values()) * 0.0
            out.update(loss=zero, level_loss=zero, rationale_loss=zero)
        return out

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        losses = self._loss(self(batch), batch)
        size = batch["response_input_ids"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        for name, value in losses.items():
            if name != "loss":
                self.log(f"train/{name}", value, batch_size=size)
        return losses["loss"]

    def head_rows(self, outputs: Mapping[str, BiEncoderOutput], batch: Mapping[str, Tensor]) -> dict[str, HeadRows]:
        """Each mechanism's labelled rows of a batch with the model's decisions on them."""
        rows = {}
        for m in self.mechanisms:
            gold = batch[level_column(m)]
            keep = gold != IGNORE_INDEX
            if not bool(keep.any()):
                continue
            output = _rows(outputs[m], keep)
            mask = batch["rationale_mask"][keep].bool()
            decision = self.decisions[m]
            level = decision.levels(output.level_logits)
            rows[m] = HeadRows(
                level_logits=output.level_logits,
                rationale_logits=output.rationale_logits,
                level=gold[keep],
                predicted_level=level,
                rationale=decision.rationale(output.rationale_logits, mask, level),
                rationale_strict=batch[rationale_column(m, "strict")][keep],
                rationale_paper=batch[rationale_column(m, "paper")][keep],
                mask=mask,
            )
        return rows

    def _eval_step(self, batch: Mapping[str, Tensor], stage: str) -> dict[str, HeadRows]:
        outputs = self(batch)
        rows = self.head_rows(outputs, batch)
        for m, r in rows.items():
            paper_preds = (
                r.rationale
                if self.hparams.rationale_policy == "paper"
                else to_paper_predictions(r.rationale, r.predicted_level, r.mask)
            )
            self.split_metrics[f"{stage}_{m}_level"].update(r.predicted_level, r.level)
            self.split_metrics[f"{stage}_{m}_rationale"].update(
                preds=r.rationale,
                preds_paper=paper_preds,
                target_paper=r.rationale_paper,
                target_strict=r.rationale_strict,
                mask=r.mask,
                level=r.level,
            )
        size = batch["response_input_ids"].shape[0]
        self.log(f"{STAGE_PREFIX[stage]}/loss", self._loss(outputs, batch)["loss"], batch_size=size, sync_dist=True)
        return rows

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, HeadRows]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, HeadRows]:
        return self._eval_step(batch, "test")

    def _log_mechanism(self, prefix: str, stage: str, mechanism: str) -> Tensor:
        """Log one mechanism's metrics of the split under ``prefix`` (``dev/ER``), reset them,
        and return its macro-F1."""
        level_metric = self.split_metrics[f"{stage}_{mechanism}_level"]
        rationale_metric = self.split_metrics[f"{stage}_{mechanism}_rationale"]
        values = level_metric.compute()
        self.log(f"{prefix}/acc", values["acc"])
        self.log(f"{prefix}/macro_f1", values["macro_f1"])
        for cls, f1 in enumerate(values["f1_per_class"]):
            self.log(f"{prefix}/f1_level{cls}", f1)
        rationale = rationale_metric.compute()
        for name, value in rationale.items():
            self.log(f"{prefix}/{name}", value)
        # The unsuffixed rationale metrics are the strict ones (rows with gold level > 0).
        self.log(f"{prefix}/rationale_token_f1", rationale["rationale_token_f1_strict"])
        self.log(f"{prefix}/rationale_iou_f1", rationale["rationale_iou_f1_strict"])
        self.last_confusion[prefix] = values["confusion"].detach().cpu()
        level_metric.reset()
        rationale_metric.reset()
        return values["macro_f1"]

    def _eval_epoch_end(self, stage: str) -> None:
        prefix = STAGE_PREFIX[stage]
        self.last_confusion = {}
        macro_f1 = [self._log_mechanism(f"{prefix}/{m}", stage, m) for m in self.mechanisms]
        self.log(f"{prefix}/macro_f1", torch.stack(macro_f1).mean(), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def set_level_offsets(self, config: Mapping[str, Any] | None) -> None:
        """Decide levels with ``config`` (``model.level_offsets``) from now on (``python -m
        empathy.evaluate level_offsets=...``): a mechanism it does not name keeps the model's
        offsets; stored in hparams."""
        config, saved = _plain(config), self.hparams.get("level_offsets")
        if isinstance(config, Mapping) and isinstance(saved, Mapping):
            config = {**saved, **config}
        self.hparams["level_offsets"] = config
        self.decisions = decisions(self.mechanisms, self.hparams.rationale_decoding, config)

    def set_rationale_decoding(self, config: Mapping[str, Any] | None) -> None:
        """Decode rationales with ``config`` from now on (a trained model evaluated with another
        decoding: ``python -m empathy.evaluate rationale_decoding=...``); stored in hparams."""
        self.hparams["rationale_decoding"] = decoding_config(_plain(config), self.mechanisms)
        self.decisions = decisions(self.mechanisms, self.hparams.rationale_decoding, self.hparams.level_offsets)

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        params = layerwise_param_groups(self.net, self.hparams.optimizer["lr"], self.hparams.layerwise_lr_decay)
        settings = dict(self.hparams.optimizer)
        if settings.get("fused") and self._trainer is not None and "mixed" in str(self.trainer.precision):
            # Lightning cannot clip the gradients of a fused optimiser under mixed precision.
            settings["fused"] = False
        optimizer = allowlist.build_optimizer(settings, params)
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        total = int(self.trainer.estimated_stepping_batches)
        if not math.isfinite(total) or total <= 0:
            total = 1
        scheduler = allowlist.build_scheduler(self.hparams.scheduler, optimizer, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
