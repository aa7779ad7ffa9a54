"""LightningModule around the bi-encoder: optimiser, steps, metrics over whole splits."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.optim.lr_scheduler import LambdaLR

from empathy import JOINT, allowlist
from empathy.decoding import (
    EXTENDED_GRID,
    DecodingGrid,
    RationaleDecoding,
    decoding_config,
    rationale_probs,
)
from empathy.io import atomic_output, file_lock
from empathy.levels import LevelOffsetGrid, decide, level_offsets
from empathy.metrics import RationaleMetrics, level_metrics
from empathy.models.biencoder import (
    LAYER_INDEX,
    BiEncoderOutput,
    EnsembleNet,
    build_net,
    multitask_loss,
)
from empathy.models.checkpoint import read_checkpoint

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


def new_grid(extended: bool = False) -> DecodingGrid:
    """The decoding grid scored in validation: the default one, or :data:`EXTENDED_GRID`."""
    return DecodingGrid(**EXTENDED_GRID) if extended else DecodingGrid()


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


class EmpathyModule(pl.LightningModule):
    def __init__(
        self,
        encoder: Mapping[str, Any],
        mechanism: str,
        net: Mapping[str, Any],
        loss: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        cache_seeker: bool = True,
        rationale_policy: str = "strict",
        max_len: int = 64,
        class_weights: list[float] | None = None,
        data_config: Mapping[str, Any] | None = None,
        layerwise_lr_decay: float = 1.0,
        rationale_decoding: Mapping[str, Any] | None = None,
        decoding_grid: bool = False,
        level_offsets: Mapping[str, Any] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < layerwise_lr_decay <= 1:
            raise ValueError(f"layerwise_lr_decay must be in (0, 1], not {layerwise_lr_decay}")
        if rationale_policy not in ("strict", "paper"):
            raise ValueError(f"rationale_policy must be 'strict' or 'paper', not {rationale_policy!r}")
        self.save_hyperparameters(
            {
                "encoder": _plain(encoder),
                "mechanism": mechanism,
                "net": _plain(net),
                "loss": _plain(loss),
                "optimizer": _plain(optimizer),
                "scheduler": _plain(scheduler),
                "cache_seeker": cache_seeker,
                "rationale_policy": rationale_policy,
                "max_len": max_len,
                "class_weights": None if class_weights is None else [float(w) for w in class_weights],
                "data_config": _plain(data_config) or {},
                "layerwise_lr_decay": float(layerwise_lr_decay),
                "rationale_decoding": decoding_config(_plain(rationale_decoding), (mechanism,)),
                "decoding_grid": bool(decoding_grid),
                "level_offsets": _plain(level_offsets),
                "compile": bool(compile),
            }
        )
        # Dev-set scores of several rationale decodings at once (choosing one by cross-validation).
        self.val_decoding_grid = DecodingGrid() if decoding_grid else None
        # Dev-set macro-F1 of every pair of level offsets (choosing them by cross-validation).
        self.val_level_grid: LevelOffsetGrid | None = None
        self.net = build_net(self.hparams.encoder, self.hparams.net)
        self._load_decodings()
        weights = self.hparams.class_weights
        self.register_buffer(
            "class_weights", None if weights is None else torch.tensor(weights, dtype=torch.float32), persistent=False
        )
        self.val_level = level_metrics()
        self.test_level = level_metrics()
        self.val_rationale = RationaleMetrics()
        self.test_rationale = RationaleMetrics()
        self._seeker_cache: dict[int, Tensor] | None = None

    @classmethod
    def from_checkpoint(cls, path: str, map_location: str | torch.device = "cpu") -> EmpathyModule:
        """Load a checkpoint safely (:func:`~empathy.models.checkpoint.read_checkpoint`: no pickle
        code runs, and its hyper-parameters can name no class to build)."""
        checkpoint = read_checkpoint(path, map_location)
        if cls is EmpathyModule and checkpoint["hyper_parameters"].get("mechanism") == JOINT:
            from empathy.models.joint import JointEmpathyModule  # a joint model's checkpoint

            cls = JointEmpathyModule
        module = cls(**checkpoint["hyper_parameters"])
        module.load_state_dict(checkpoint["state_dict"])
        return module

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str], map_location: str | torch.device = "cpu") -> EmpathyModule:
        """One checkpoint (:meth:`from_checkpoint`), or several of one kind as an ensemble: the
        first's module (its settings, decodings, level offsets and metrics) with an
        :class:`~empathy.models.biencoder.EnsembleNet` of every checkpoint's network. The
        checkpoints must share the mechanism, encoder, max_len and data settings (their split)."""
        paths = [str(p) for p in paths]
        module = cls.from_checkpoint(paths[0], map_location)
        if len(paths) == 1:
            return module
        members = [module.net]
        for path in paths[1:]:
            other = cls.from_checkpoint(path, map_location)
            for key in ("mechanism", "encoder", "max_len", "data_config", "rationale_policy"):
                if other.hparams.get(key) != module.hparams.get(key):
                    raise ValueError(f"{path}: its {key} ({other.hparams.get(key)}) differs from {paths[0]}'s "
                                     f"({module.hparams.get(key)}): an ensemble's checkpoints must be of one kind")
            members.append(other.net)
        module.net = EnsembleNet(members)
        module.hparams["ensemble"] = paths
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
        again: 30 s of each joint run on the 2-core CPU. A file under that key is only written
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
    def forward(self, batch: Mapping[str, Tensor]) -> BiEncoderOutput:
        return self.net(
            response_input_ids=batch["response_input_ids"],
            response_attention_mask=batch["response_attention_mask"],
            seeker_input_ids=batch["seeker_input_ids"],
            seeker_attention_mask=batch["seeker_attention_mask"],
            seeker_states=self._cached_seeker_states(batch),
        )

    def _loss(self, output: BiEncoderOutput, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return multitask_loss(
            output,
            batch["level"],
            batch[f"rationale_{self.hparams.rationale_policy}"],
            batch["rationale_mask"],
            lambda_EI=self.hparams.loss["lambda_EI"],
            lambda_RE=self.hparams.loss["lambda_RE"],
            class_weights=self.class_weights,
            focal_gamma=float(self.hparams.loss.get("focal_gamma", 0.0)),
        )

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        output = self(batch)
        losses = self._loss(output, batch)
        size = batch["level"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self.log("train/level_loss", losses["level_loss"], batch_size=size)
        self.log("train/rationale_loss", losses["rationale_loss"], batch_size=size)
        return losses["loss"]

    def enable_decoding_grid(self, extended: bool = False) -> None:
        """Score the decoding grid on every validation from now on (a trained model's dev grid:
        ``python -m empathy.evaluate split=dev decoding_grid=true``); ``extended``: the grid of
        :data:`~empathy.decoding.EXTENDED_GRID` instead (``decoding_grid=extended``)."""
        self.hparams["decoding_grid"] = True
        self.val_decoding_grid = new_grid(extended)

    def enable_level_grid(self) -> None:
        """Score every pair of level offsets (:class:`~empathy.levels.LevelOffsetGrid`) on every
        validation from now on (``python -m empathy.evaluate split=dev level_offset_grid=true``)."""
        self.val_level_grid = LevelOffsetGrid()

    def set_level_offsets(self, config: Mapping[str, Any] | None) -> None:
        """Decide levels with ``config`` (``model.level_offsets``) from now on (``python -m
        empathy.evaluate level_offsets=...``): a mechanism it does not name keeps the model's
        offsets; stored in hparams."""
        config, saved = _plain(config), self.hparams.get("level_offsets")
        if isinstance(config, Mapping) and isinstance(saved, Mapping):
            config = {**saved, **config}
        self.hparams["level_offsets"] = config
        self._load_decodings()

    def set_rationale_decoding(self, config: Mapping[str, Any] | None) -> None:
        """Decode rationales with ``config`` from now on (a trained model evaluated with another
        decoding: ``python -m empathy.evaluate rationale_decoding=...``); stored in hparams."""
        self.hparams["rationale_decoding"] = decoding_config(_plain(config), (self.hparams.mechanism,))
        self._load_decodings()

    def _load_decodings(self) -> None:
        """``self.decoding`` from ``hparams.rationale_decoding`` and ``self.offsets`` from
        ``hparams.level_offsets`` (the model's mechanism's settings)."""
        self.decoding = RationaleDecoding.from_config(self.hparams.rationale_decoding, self.hparams.mechanism)
        self.offsets = level_offsets(self.hparams.get("level_offsets"), self.hparams.mechanism)

    def predictions(self, output: BiEncoderOutput, mask: Tensor, mechanism: str | None = None) -> tuple[Tensor, Tensor]:
        """Predicted levels [batch] and rationale tokens [batch, tokens] (0 outside ``mask``),
        with ``mechanism``'s level offsets and rationale decoding (a joint model's head) or the
        model's own."""
        level = decide(output.level_logits, self.mechanism_offsets[mechanism] if mechanism is not None else self.offsets)
        decoding = self.decodings[mechanism] if mechanism is not None else self.decoding
        rationale = decoding.decode(rationale_probs(output.rationale_logits), mask, level)
        return level, rationale

    def _eval_step(self, batch: Mapping[str, Tensor], stage: str) -> None:
        output = self(batch)
        losses = self._loss(output, batch)
        mask = batch["rationale_mask"].bool()
        level, rationale = self.predictions(output, mask)
        paper_preds = rationale if self.hparams.rationale_policy == "paper" else to_paper_predictions(rationale, level, mask)
        level_metric = self.val_level if stage == "val" else self.test_level
        rationale_metric = self.val_rationale if stage == "val" else self.test_rationale
        level_metric.update(level, batch["level"])
        rationale_metric.update(
            preds=rationale,
            preds_paper=paper_preds,
            target_paper=batch["rationale_paper"],
            target_strict=batch["rationale_strict"],
            mask=mask,
            level=batch["level"],
        )
        self.log(f"{STAGE_PREFIX[stage]}/loss", losses["loss"], batch_size=level.shape[0], sync_dist=True)
        if stage == "val" and self.val_level_grid is not None:
            self.val_level_grid.update(output.level_logits, batch["level"])
        if stage == "val" and self.val_decoding_grid is not None:
            self.val_decoding_grid.update(
                rationale_probs(output.rationale_logits), batch["rationale_strict"], mask, batch["level"], level
            )

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_split_metrics(self, prefix: str, level_metric, rationale_metric, grid=None, prog_bar: bool = False,
                           level_grid=None) -> dict:
        """Log one model's (or one joint head's) metrics under ``prefix``, reset them, and return
        the level metrics (macro-F1, confusion)."""
        values = level_metric.compute()
        self.log(f"{prefix}/acc", values["acc"])
        self.log(f"{prefix}/macro_f1", values["macro_f1"], prog_bar=prog_bar)
        for cls, f1 in enumerate(values["f1_per_class"]):
            self.log(f"{prefix}/f1_level{cls}", f1)
        rationale = rationale_metric.compute()
        for name, value in rationale.items():
            self.log(f"{prefix}/{name}", value)
        # The unsuffixed rationale metrics are the strict ones (rows with gold level > 0).
        self.log(f"{prefix}/rationale_token_f1", rationale["rationale_token_f1_strict"])
        self.log(f"{prefix}/rationale_iou_f1", rationale["rationale_iou_f1_strict"])
        if grid is not None:
            for name, value in grid.compute().items():
                self.log(f"{prefix}/{name}", value)
            grid.reset()
        if level_grid is not None:
            for name, value in level_grid.compute().items():
                self.log(f"{prefix}/{name}", value)
            level_grid.reset()
        level_metric.reset()
        rationale_metric.reset()
        return values

    def _eval_epoch_end(self, stage: str) -> None:
        prefix = STAGE_PREFIX[stage]
        values = self._log_split_metrics(
            prefix,
            self.val_level if stage == "val" else self.test_level,
            self.val_rationale if stage == "val" else self.test_rationale,
            self.val_decoding_grid if stage == "val" else None,
            prog_bar=True,
            level_grid=self.val_level_grid if stage == "val" else None,
        )
        self.last_confusion = {prefix: values["confusion"].detach().cpu()}

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

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
