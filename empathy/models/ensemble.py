"""Trained bi-encoders of one kind (seeds of one configuration, say) scored as one network."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from empathy.models.biencoder import BiEncoder, BiEncoderOutput, seeker_states_of


def mean_log_probs(logits: Sequence[Tensor]) -> Tensor:
    """The log of the members' mean softmax over the last dimension: logits whose softmax is the
    mean of the members' probabilities."""
    stacked = torch.stack([x.float().log_softmax(-1) for x in logits])
    return torch.logsumexp(stacked, dim=0) - math.log(len(logits))


class EnsembleNet(nn.Module):
    """Bi-encoders of the same mechanisms as one network: the seeker post is encoded once (the
    members' seeker encoders must be frozen and the same weights, as the pretrained encoder is),
    each member reads the response and attends over it, and the outputs are
    :func:`mean_log_probs` of the members' level and rationale logits: their softmax is the
    members' mean probability, so every decision downstream reads them as one model's logits. A
    response pass per member: n members cost about n times one model to predict."""

    def __init__(self, members: Sequence[BiEncoder]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        for k, member in enumerate(members[1:], start=1):
            if member.mechanisms != first.mechanisms:
                raise ValueError(
                    f"ensemble member {k} scores {list(member.mechanisms)}, member 0 {list(first.mechanisms)}"
                )
            if member.use_attention != first.use_attention:
                raise ValueError(
                    f"ensemble member {k} has use_attention={member.use_attention}, member 0 {first.use_attention}"
                )
        if first.use_attention:
            reference = first.seeker_encoder.state_dict()
            for k, member in enumerate(members[1:], start=1):
                if not member.freeze_seeker or not first.freeze_seeker:
                    raise ValueError("an ensemble shares one seeker pass: its members' seeker encoders must be frozen")
                other = member.seeker_encoder.state_dict()
                if other.keys() != reference.keys() or any(not torch.equal(other[n], t) for n, t in reference.items()):
                    raise ValueError(
                        f"ensemble member {k}'s seeker encoder differs from member 0's: one seeker pass cannot serve "
                        "both"
                    )
        self.members = nn.ModuleList(members)

    @property
    def mechanisms(self) -> tuple[str, ...]:
        return self.members[0].mechanisms

    @property
    def use_attention(self) -> bool:
        return self.members[0].use_attention

    @property
    def freeze_seeker(self) -> bool:
        return self.members[0].freeze_seeker

    @property
    def seeker_encoder(self) -> nn.Module | None:
        return self.members[0].seeker_encoder

    @property
    def hidden_size(self) -> int:
        return self.members[0].hidden_size

    def train(self, mode: bool = True) -> EnsembleNet:
        super().train(mode)
        for member in self.members:
            member.train(mode)
        return self

    def encode_seeker(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.members[0].encode_seeker(input_ids, attention_mask)

    def forward(
        self,
        response_input_ids: Tensor,
        response_attention_mask: Tensor,
        seeker_input_ids: Tensor | None = None,
        seeker_attention_mask: Tensor | None = None,
        seeker_states: Tensor | None = None,
    ) -> dict[str, BiEncoderOutput]:
        if self.use_attention:
            seeker_states = seeker_states_of(self, seeker_input_ids, seeker_attention_mask, seeker_states)
        outputs = [
            member(
                response_input_ids,
                response_attention_mask,
                seeker_attention_mask=seeker_attention_mask,
                seeker_states=seeker_states,
            )
            for member in self.members
        ]
        return {
            m: BiEncoderOutput(
                level_logits=mean_log_probs([o[m].level_logits for o in outputs]),
                rationale_logits=mean_log_probs([o[m].rationale_logits for o in outputs]),
            )
            for m in self.mechanisms
        }
