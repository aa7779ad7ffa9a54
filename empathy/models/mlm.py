"""Masked-LM continued pre-training of an encoder (domain-adaptive pre-training, DAPT).

``load_masked_lm`` turns an encoder config (``conf/encoder/*.yaml``) into a Hugging Face
``...ForMaskedLM`` model; :class:`MaskedLMModule` trains it with Lightning and measures the
held-out MLM loss over whole batches of masked tokens; :func:`save_encoder_folder` writes a
folder that ``encoder=local encoder.path=<folder>`` (``AutoModel.from_pretrained``) loads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from empathy import allowlist
from empathy.encoders import resolve_path
from empathy.models.module import _plain

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def load_masked_lm(cfg: Mapping[str, Any]):
    """The encoder with a masked-LM head: pretrained weights from ``path`` (a head missing from the
    checkpoint, as in the packaged sentence-transformers MiniLM, is initialised fresh and said so),
    or random weights from ``config`` (the ``tiny`` encoder)."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    name, path, config = cfg.get("name"), cfg.get("path"), cfg.get("config")
    if path:
        try:
            model, info = AutoModelForMaskedLM.from_pretrained(resolve_path(path), output_loading_info=True)
        except OSError as err:
            raise OSError(
                f"could not load encoder {name!r} from {path!r} as a masked LM: give a local folder "
                f"(encoder=local encoder.path=...) or a hub name on a machine with hub access ({err})"
            ) from err
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            log.info(
                "encoder %s: the checkpoint at %s has no masked-LM head (%d tensors missing: %s); it is "
                "initialised fresh (the output projection stays tied to the word embeddings)",
                name,
                path,
                len(missing),
                ", ".join(missing),
            )
        return model
    if config:
        kwargs = dict(config)
        model_type = kwargs.pop("model_type")
        return AutoModelForMaskedLM.from_config(AutoConfig.for_model(model_type, **kwargs))
    raise ValueError(f"encoder {name!r} needs a path or a config")


def save_encoder_folder(model, tokenizer, folder: str | Path) -> Path:
    """Write the whole masked-LM model (safetensors), its config and the tokenizer to ``folder``.
    ``AutoModel.from_pretrained(folder)`` loads the encoder part (the MLM head is left out);
    ``AutoModelForMaskedLM.from_pretrained(folder)`` continues pre-training."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def mlm_head(model) -> torch.nn.Module | None:
    """The model's masked-LM head as one module applied to hidden states (BERT's ``cls``, RoBERTa's
    ``lm_head``), or None when the head is spread over several modules (DistilBERT)."""
    heads = [m for name, m in model.named_children() if name != model.base_model_prefix]
    return heads[0] if len(heads) == 1 else None


def head_parameters(model) -> list[torch.nn.Parameter]:
    """The head's own parameters: the output projection tied to the word embeddings is left out
    (``named_parameters`` names a shared tensor once, under the encoder)."""
    prefix = model.base_model_prefix + "."
    return [p for name, p in model.named_parameters() if not name.startswith(prefix)]


class MaskedLMModule(pl.LightningModule):
    """Training steps on MLM batches; ``heldout/mlm_loss`` (mean cross-entropy per masked token
    over the whole held-out set) and ``heldout/perplexity`` (its exponential) on validation.

    The vocabulary projection is computed at the masked positions only (15 % of the tokens), which
    gives the same loss as the full ``...ForMaskedLM`` forward at a fraction of its cost. While
    ``head_warmup_lr`` is set, only the head trains (at that lr) and the encoder runs without
    gradients: ``empathy.pretrain``'s head warm-up, which fits a freshly initialised head before
    the "before" perplexity is measured."""

    def __init__(
        self,
        encoder: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {"encoder": _plain(encoder), "optimizer": _plain(optimizer), "scheduler": _plain(scheduler)}
        )
        # from_pretrained returns eval mode and Lightning keeps submodule modes: train with dropout.
        self.model = load_masked_lm(self.hparams.encoder).train()
        self.head = mlm_head(self.model)
        self.head_warmup_lr: float | None = None  # set: a head-only phase (see empathy.pretrain)
        self._heldout = torch.zeros(2, dtype=torch.float64)  # summed loss, masked tokens

    def forward(self, batch: Mapping[str, torch.Tensor]):
        return self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            token_type_ids=batch.get("token_type_ids"),
            labels=batch.get("labels"),
        )

    def masked_loss(
        self, batch: Mapping[str, torch.Tensor], reduction: str = "mean"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy over the masked tokens and their number."""
        labels = batch["labels"]
        masked = labels != IGNORE_INDEX
        if self.head is None:  # no single head module: the full forward
            logits = self({**batch, "labels": None}).logits[masked]
        else:
            with torch.no_grad() if self.head_warmup_lr is not None else nullcontext():
                hidden = self.model.base_model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch.get("attention_mask"),
                    token_type_ids=batch.get("token_type_ids"),
                ).last_hidden_state
            logits = self.head(hidden[masked])
        return F.cross_entropy(logits.float(), labels[masked], reduction=reduction), masked.sum()

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self.masked_loss(batch)
        self.log("train/mlm_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        loss, tokens = self.masked_loss(batch, reduction="sum")
        self._heldout += torch.stack([loss.detach().double().cpu(), tokens.double().cpu()])

    def on_validation_epoch_start(self) -> None:
        self._heldout = torch.zeros(2, dtype=torch.float64)

    def on_validation_epoch_end(self) -> None:
        sums = self._heldout.to(self.device)
        if self.trainer.world_size > 1:  # every process scored its share of the held-out batches
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        total, tokens = sums.tolist()
        loss = total / max(tokens, 1.0)
        self.log("heldout/mlm_loss", loss)
        self.log("heldout/perplexity", math.exp(min(loss, 50.0)))
        self.log("heldout/masked_tokens", tokens)

    def configure_optimizers(self) -> dict[str, Any]:
        if self.head_warmup_lr is not None:
            if self.head is None:
                raise ValueError(
                    f"head_warmup needs a model with one masked-LM head module; "
                    f"{type(self.model).__name__} has several: set head_warmup.steps=0"
                )
            return {"optimizer": torch.optim.AdamW(head_parameters(self.model), lr=self.head_warmup_lr)}
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = allowlist.build_optimizer(self.hparams.optimizer, params)
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        total = (
            self.trainer.max_steps
            if self.trainer.max_steps and self.trainer.max_steps > 0
            else self.trainer.estimated_stepping_batches
        )
        if not math.isfinite(total) or total <= 0:
            raise ValueError("pre-training needs a finite number of steps: set trainer.max_steps")
        scheduler = allowlist.build_scheduler(self.hparams.scheduler, optimizer, int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def save_encoder(self, folder: str | Path, tokenizer) -> Path:
        return save_encoder_folder(self.model, tokenizer, folder)
