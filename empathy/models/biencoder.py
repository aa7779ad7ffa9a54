"""The EPITOME bi-encoder as a plain ``nn.Module`` (no Lightning, no Hydra).

A seeker encoder (frozen by default) and a response encoder (fine-tuned) read the two posts
separately; the response's token states attend over the seeker's (response-to-seeker attention,
added residually); for each mechanism it scores (one, or ER, IP and EX at once), an empathy head
on the response's first token (or the mean of its tokens, ``pooling``) predicts the level
(0 / 1 / 2) and a per-token head marks the response tokens that justify it (rationales).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from empathy.encoders import load_encoder

NUM_LEVELS = 3
IGNORE_INDEX = -100
# The transformer layer index in an encoder's parameter names (BERT / RoBERTa ``encoder.layer.3.``,
# DistilBERT ``transformer.layer.3.``, others ``layers.3.``).
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers)\.(\d+)\.")
# What the level head reads: the response's first token state (the paper's RoBERTa <s>, BERT's
# [CLS]) or the mean of its real tokens' states (how sentence encoders such as all-MiniLM-L6-v2
# were trained to summarise a text).
POOLINGS = ("cls", "mean")


def pool(states: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """[batch, tokens, hidden] -> [batch, hidden]: the first token's state (``cls``) or the mean
    over the tokens that ``attention_mask`` marks (``mean``; padding left out)."""
    if pooling == "cls":
        return states[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")


def freeze_bottom_layers(encoder: nn.Module, layers: int) -> None:
    """Freeze an encoder's embeddings and its first ``layers`` transformer layers (0: nothing).

    Nothing below the first trained layer needs a gradient, so autograd skips their backward pass
    (input and weight gradients alike; ``scripts/bench_step.py`` times the step). Their dropout
    still runs, as in the rest of the encoder."""
    if layers < 0:
        raise ValueError(f"freeze_response_layers must be >= 0, not {layers}")
    if layers == 0:
        return
    depths = {int(m.group(1)) for n, _ in encoder.named_parameters() if (m := LAYER_INDEX.search(n))}
    if not depths or layers > len(depths):
        raise ValueError(f"freeze_response_layers={layers}, but the response encoder has {len(depths)} numbered layers")
    embeddings = getattr(encoder, "embeddings", None)
    if embeddings is None:
        raise ValueError(f"freeze_response_layers: {type(encoder).__name__} has no `embeddings` module to freeze")
    embeddings.requires_grad_(False)
    for name, param in encoder.named_parameters():
        if (m := LAYER_INDEX.search(name)) and int(m.group(1)) < layers:
            param.requires_grad_(False)


@dataclass
class BiEncoderOutput:
    level_logits: Tensor  # [batch, 3]
    rationale_logits: Tensor  # [batch, response_tokens, 2]


def make_level_head(hidden: int, dropout: float, num_levels: int = NUM_LEVELS) -> nn.Sequential:
    """The empathy head: an MLP on the response's pooled state (:func:`pool`) -> level logits."""
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_levels),
    )


def make_rationale_head(hidden: int, dropout: float) -> nn.Sequential:
    """The rationale head: per response token state -> (not rationale, rationale) logits."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, 2))


class MechanismHeads(nn.Module):
    """One mechanism's level and rationale heads."""

    def __init__(self, hidden: int, dropout: float, num_levels: int = NUM_LEVELS) -> None:
        super().__init__()
        self.level_head = make_level_head(hidden, dropout, num_levels)
        self.rationale_head = make_rationale_head(hidden, dropout)

    def forward(self, states: Tensor, pooled: Tensor) -> BiEncoderOutput:
        """``states``: the response's token states; ``pooled``: what the level head reads (:func:`pool`)."""
        return BiEncoderOutput(level_logits=self.level_head(pooled), rationale_logits=self.rationale_head(states))


class BiEncoder(nn.Module):
    """The bi-encoder with one pair of heads per mechanism (one or several) on one response
    encoder, one seeker pass and one response-to-seeker attention.

    ``forward`` returns ``{mechanism: BiEncoderOutput}``. Parameter names: ``response_encoder.*``,
    ``seeker_encoder.*``, ``attention.*`` and ``heads.<M>.level_head.*`` /
    ``heads.<M>.rationale_head.*``.
    """

    def __init__(
        self,
        encoder: Mapping[str, Any],
        *,
        mechanisms: Sequence[str],
        attention_heads: int = 1,
        use_attention: bool = True,
        freeze_seeker: bool = True,
        freeze_response_layers: int = 0,
        encoder_dropout: float | None = None,
        encoder_attention_dropout: float | None = None,
        pooling: str = "cls",
        dropout: float = 0.1,
        num_levels: int = NUM_LEVELS,
    ) -> None:
        super().__init__()
        if not mechanisms or len(set(mechanisms)) != len(mechanisms):
            raise ValueError(f"the bi-encoder needs one or more distinct mechanisms, got {list(mechanisms or [])}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        self.mechanisms = tuple(mechanisms)
        self.pooling = pooling
        # The response encoder's own dropout (None: its pretrained config's). The seeker encoder's
        # does not matter while it is frozen (always in eval mode); fine-tuned, it keeps its own.
        self.response_encoder = load_encoder(
            encoder, dropout={"hidden": encoder_dropout, "attention": encoder_attention_dropout}
        )
        freeze_bottom_layers(self.response_encoder, int(freeze_response_layers))
        self.use_attention = use_attention
        self.freeze_seeker = freeze_seeker
        hidden = self.response_encoder.config.hidden_size
        if use_attention:
            self.seeker_encoder = load_encoder(encoder)
            if freeze_seeker:
                self.seeker_encoder.requires_grad_(False)
            self.attention = nn.MultiheadAttention(hidden, attention_heads, dropout=dropout, batch_first=True)
        else:
            self.seeker_encoder = None
            self.attention = None
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({m: MechanismHeads(hidden, dropout, num_levels) for m in self.mechanisms})
        # from_pretrained returns encoders in eval mode, and Lightning keeps each submodule's mode:
        # without this the response encoder would fine-tune with its dropout switched off.
        self.train()

    @property
    def hidden_size(self) -> int:
        return self.response_encoder.config.hidden_size

    def train(self, mode: bool = True) -> BiEncoder:
        super().train(mode)
        # A frozen seeker encoder is a fixed feature extractor: no dropout, so its outputs are
        # deterministic and can be cached.
        if self.seeker_encoder is not None and self.freeze_seeker:
            self.seeker_encoder.eval()
        return self

    def encode_seeker(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Seeker token states [batch, seeker_tokens, hidden]."""
        if self.seeker_encoder is None:
            raise RuntimeError("this model has no seeker encoder (use_attention=false)")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_seeker):
            return self.seeker_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(
        self,
        response_input_ids: Tensor,
        response_attention_mask: Tensor,
        seeker_input_ids: Tensor | None = None,
        seeker_attention_mask: Tensor | None = None,
        seeker_states: Tensor | None = None,
    ) -> dict[str, BiEncoderOutput]:
        states = self.response_states(
            response_input_ids, response_attention_mask, seeker_input_ids, seeker_attention_mask, seeker_states
        )
        pooled = pool(states, response_attention_mask, self.pooling)
        return {m: head(states, pooled) for m, head in self.heads.items()}

    def response_states(
        self,
        response_input_ids: Tensor,
        response_attention_mask: Tensor,
        seeker_input_ids: Tensor | None = None,
        seeker_attention_mask: Tensor | None = None,
        seeker_states: Tensor | None = None,
    ) -> Tensor:
        """Response token states [batch, response_tokens, hidden] after the response-to-seeker
        attention (what the heads read)."""
        states = self.response_encoder(
            input_ids=response_input_ids, attention_mask=response_attention_mask
        ).last_hidden_state
        if self.use_attention:
            seeker_states = seeker_states_of(self, seeker_input_ids, seeker_attention_mask, seeker_states)
            seeker_states = seeker_states.to(states.dtype)
            attended, _ = self.attention(
                states,
                seeker_states,
                seeker_states,
                key_padding_mask=~seeker_attention_mask.bool(),
                need_weights=False,
            )
            states = states + self.dropout(attended)
        return states


def seeker_states_of(
    net: nn.Module, seeker_input_ids: Tensor | None, seeker_attention_mask: Tensor | None, seeker_states: Tensor | None
) -> Tensor:
    """The seeker states given, else the seeker post encoded by ``net.encode_seeker``."""
    if seeker_states is not None:
        return seeker_states
    if seeker_input_ids is None or seeker_attention_mask is None:
        raise ValueError("the bi-encoder needs the seeker post (or its encoded states)")
    return net.encode_seeker(seeker_input_ids, seeker_attention_mask)


def build_net(encoder: Mapping[str, Any], net: Mapping[str, Any]) -> BiEncoder:
    """The network a ``net`` config (with its ``mechanisms``) describes."""
    return BiEncoder(encoder, **net)


def multitask_loss(
    output: BiEncoderOutput,
    level: Tensor,
    rationale: Tensor,
    rationale_mask: Tensor,
    *,
    lambda_EI: float = 1.0,
    lambda_RE: float = 0.5,
    class_weights: Tensor | None = None,
    focal_gamma: float = 0.0,
) -> dict[str, Tensor]:
    """lambda_EI * CE(level) + lambda_RE * CE(rationale tokens), the latter over real response
    tokens only (``rationale_mask``: special and padding tokens are ignored).

    ``focal_gamma`` > 0 turns the level loss into the focal loss (Lin et al. 2017): each row's
    (class-weighted) cross-entropy is scaled by (1 - p_true)^gamma, so confidently right rows
    count less; normalised like the weighted mean cross-entropy. 0 is plain cross-entropy."""
    weight = None if class_weights is None else class_weights.to(output.level_logits.device)
    logits = output.level_logits.float()
    if focal_gamma:
        ce = F.cross_entropy(logits, level, weight=weight, reduction="none", ignore_index=IGNORE_INDEX)
        labelled = level != IGNORE_INDEX
        p_true = torch.exp(-F.cross_entropy(logits, level, reduction="none", ignore_index=IGNORE_INDEX))
        row_weight = labelled.float() if weight is None else weight[level.clamp(min=0)] * labelled
        level_loss = ((1 - p_true) ** focal_gamma * ce).sum() / row_weight.sum().clamp(min=1e-12)
    else:
        level_loss = F.cross_entropy(logits, level, weight=weight, ignore_index=IGNORE_INDEX)
    targets = rationale.masked_fill(~rationale_mask.bool(), IGNORE_INDEX)
    if bool((targets != IGNORE_INDEX).any()):
        rationale_loss = F.cross_entropy(
            output.rationale_logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX
        )
    else:
        rationale_loss = output.rationale_logits.sum() * 0.0
    return {
        "loss": lambda_EI * level_loss + lambda_RE * rationale_loss,
        "level_loss": level_loss,
        "rationale_loss": rationale_loss,
    }
