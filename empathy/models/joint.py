"""The joint model (``model=joint``): ER, IP and EX scored by one LightningModule.

One response encoder, one seeker pass and one response-to-seeker attention feed one pair of
heads per mechanism (:class:`empathy.models.biencoder.JointBiEncoder`). The data comes from
:class:`empathy.data.joint.JointEpitomeDataModule`: every pair once, with ``level_M`` (-100
where mechanism ``M`` lacks the pair) and ``rationale_{strict,paper}_M`` per mechanism.

- Loss: the sum over mechanisms of ``multitask_loss`` on the rows labelled for that mechanism
  (rows whose level is -100 count neither in its level loss nor in its rationale loss), each
  with its own inverse-frequency class weights.
- Metrics: per mechanism ``{dev,test}/<M>/acc``, ``/macro_f1``, ``/f1_level<c>``, the rationale
  metrics under both labellings (``/rationale_token_f1_paper`` ...) and the unsuffixed strict
  ones, as a single model logs them without the ``<M>/``; plus ``{dev,test}/macro_f1``, the mean
  over the mechanisms (the checkpoint monitor and the value the train entry point returns).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from empathy import JOINT, MECHANISMS
from empathy.data.joint import IGNORE_INDEX, level_column, rationale_column
from empathy.decoding import DecodingGrid, RationaleDecoding, rationale_probs
from empathy.levels import LevelOffsetGrid, level_offsets
from empathy.metrics import RationaleMetrics, level_metrics
from empathy.models.biencoder import BiEncoderOutput, multitask_loss
from empathy.models.module import STAGE_PREFIX, EmpathyModule, new_grid, to_paper_predictions

# The keywords of multitask_loss a loss config may set (lambda_EI, lambda_RE and any later one);
# class_weights is per mechanism here.
LOSS_KEYWORDS = tuple(
    name
    for name, p in inspect.signature(multitask_loss).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "class_weights"
)


def _rows(output: BiEncoderOutput, keep: Tensor) -> BiEncoderOutput:
    return BiEncoderOutput(level_logits=output.level_logits[keep], rationale_logits=output.rationale_logits[keep])


class JointEmpathyModule(EmpathyModule):
    """:class:`EmpathyModule` for all mechanisms at once (see the module docstring).

    Takes EmpathyModule's arguments plus ``mechanisms``; ``mechanism`` is always ``"joint"``
    (whatever is passed: the ``mechanism=`` config group does not apply). ``class_weights`` is
    ``{mechanism: [w0, w1, w2]}``, one list for all mechanisms, or None. The mechanisms are
    stored in ``net.mechanisms`` (the checkpoint's ``hyper_parameters``), which builds a
    :class:`~empathy.models.biencoder.JointBiEncoder`.
    """

    def __init__(
        self,
        encoder: Mapping[str, Any],
        net: Mapping[str, Any],
        *,
        mechanism: str = JOINT,
        mechanisms: Sequence[str] | None = None,
        class_weights: Mapping[str, Sequence[float]] | Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        net = dict(net)
        saved = tuple(net.get("mechanisms") or ())
        mechanisms = tuple(mechanisms or saved or MECHANISMS)
        if saved and saved != mechanisms:
            raise ValueError(f"mechanisms {list(mechanisms)} differ from net.mechanisms {list(saved)}")
        net["mechanisms"] = list(mechanisms)
        super().__init__(encoder=encoder, mechanism=JOINT, net=net, class_weights=None, **kwargs)
        weights = self._weights_per_mechanism(class_weights, mechanisms)
        self.hparams["class_weights"] = weights
        for m in mechanisms:
            w = None if weights is None else torch.tensor(weights[m], dtype=torch.float32)
            self.register_buffer(f"class_weights_{m}", w, persistent=False)
        # the single model's grid scores one mechanism: one grid per mechanism here
        self.val_decoding_grid = None
        self.joint_grids = nn.ModuleDict({m: DecodingGrid() for m in mechanisms}) if self.hparams.decoding_grid else None
        self.joint_level_grids: nn.ModuleDict | None = None
        self.joint_metrics = nn.ModuleDict()
        for stage in STAGE_PREFIX:
            for m in mechanisms:
                self.joint_metrics[f"{stage}_{m}_level"] = level_metrics()
                self.joint_metrics[f"{stage}_{m}_rationale"] = RationaleMetrics()

    @staticmethod
    def _weights_per_mechanism(weights, mechanisms: Sequence[str]) -> dict[str, list[float]] | None:
        if weights is None:
            return None
        if isinstance(weights, Mapping):
            missing = [m for m in mechanisms if m not in weights]
            if missing:
                raise ValueError(f"class_weights has no weights for {missing}")
            return {m: [float(w) for w in weights[m]] for m in mechanisms}
        return {m: [float(w) for w in weights] for m in mechanisms}

    @property
    def mechanisms(self) -> tuple[str, ...]:
        return self.net.mechanisms

    def enable_decoding_grid(self, extended: bool = False) -> None:
        self.hparams["decoding_grid"] = True
        self.joint_grids = nn.ModuleDict({m: new_grid(extended) for m in self.mechanisms})

    def enable_level_grid(self) -> None:
        self.joint_level_grids = nn.ModuleDict({m: LevelOffsetGrid() for m in self.mechanisms})

    def _load_decodings(self) -> None:
        """Plus a decoding and level offsets per head (``rationale_decoding`` and
        ``level_offsets`` may hold values per mechanism)."""
        super()._load_decodings()
        self.decodings = {m: RationaleDecoding.from_config(self.hparams.rationale_decoding, m) for m in self.mechanisms}
        self.mechanism_offsets = {m: level_offsets(self.hparams.get("level_offsets"), m) for m in self.mechanisms}

    # ---------------------------------------------------------------- loss
    def _joint_loss(self, outputs: Mapping[str, BiEncoderOutput], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
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
        losses = self._joint_loss(self(batch), batch)
        size = batch["response_input_ids"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        for name, value in losses.items():
            if name != "loss":
                self.log(f"train/{name}", value, batch_size=size)
        return losses["loss"]

    # ---------------------------------------------------------------- evaluation
    def _eval_step(self, batch: Mapping[str, Tensor], stage: str) -> None:
        outputs = self(batch)
        losses = self._joint_loss(outputs, batch)
        for m in self.mechanisms:
            gold = batch[level_column(m)]
            keep = gold != IGNORE_INDEX
            if not bool(keep.any()):
                continue
            gold = gold[keep]
            mask = batch["rationale_mask"][keep].bool()
            level, rationale = self.predictions(_rows(outputs[m], keep), mask, m)
            if stage == "val" and self.joint_level_grids is not None:
                self.joint_level_grids[m].update(outputs[m].level_logits[keep], gold)
            paper_preds = (
                rationale if self.hparams.rationale_policy == "paper" else to_paper_predictions(rationale, level, mask)
            )
            if stage == "val" and self.joint_grids is not None:
                self.joint_grids[m].update(
                    rationale_probs(outputs[m].rationale_logits[keep]),
                    batch[rationale_column(m, "strict")][keep], mask, gold, level,
                )
            self.joint_metrics[f"{stage}_{m}_level"].update(level, gold)
            self.joint_metrics[f"{stage}_{m}_rationale"].update(
                preds=rationale,
                preds_paper=paper_preds,
                target_paper=batch[rationale_column(m, "paper")][keep],
                target_strict=batch[rationale_column(m, "strict")][keep],
                mask=mask,
                level=gold,
            )
        size = batch["response_input_ids"].shape[0]
        self.log(f"{STAGE_PREFIX[stage]}/loss", losses["loss"], batch_size=size, sync_dist=True)

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, stage: str) -> None:
        prefix = STAGE_PREFIX[stage]
        macro_f1 = []
        self.last_confusion = {}
        for m in self.mechanisms:
            values = self._log_split_metrics(
                f"{prefix}/{m}",
                self.joint_metrics[f"{stage}_{m}_level"],
                self.joint_metrics[f"{stage}_{m}_rationale"],
                self.joint_grids[m] if stage == "val" and self.joint_grids is not None else None,
                level_grid=self.joint_level_grids[m] if stage == "val" and self.joint_level_grids is not None else None,
            )
            self.last_confusion[f"{prefix}/{m}"] = values["confusion"].detach().cpu()
            macro_f1.append(values["macro_f1"])
        self.log(f"{prefix}/macro_f1", torch.stack(macro_f1).mean(), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
