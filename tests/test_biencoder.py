"""The bi-encoder module and its loss, on the tiny random encoder."""

from __future__ import annotations

import pytest
import torch

from empathy.models.biencoder import BiEncoder, BiEncoderOutput, multitask_loss

TINY = {
    "name": "tiny",
    "path": None,
    "config": {
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "vocab_size": 100,
    },
}


def test_loss_ignores_masked_tokens():
    torch.manual_seed(0)
    output = BiEncoderOutput(level_logits=torch.randn(2, 3), rationale_logits=torch.randn(2, 5, 2))
    level = torch.tensor([0, 2])
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 1, 1, 1, 0]])
    labels = torch.tensor([[0, 1, 0, 0, 0], [0, 1, 1, 0, 0]])
    flipped = labels.clone()
    flipped[mask == 0] = 1 - flipped[mask == 0]  # change every label outside the mask
    a = multitask_loss(output, level, labels, mask)
    b = multitask_loss(output, level, flipped, mask)
    assert torch.equal(a["rationale_loss"], b["rationale_loss"])
    # and the rationale loss is the CE over the five real tokens only
    real = mask.bool()
    expected = torch.nn.functional.cross_entropy(output.rationale_logits[real], labels[real])
    assert a["rationale_loss"] == pytest.approx(expected.item())
    assert a["loss"] == pytest.approx((a["level_loss"] + 0.5 * a["rationale_loss"]).item())


def test_class_weights_change_the_level_loss():
    output = BiEncoderOutput(
        level_logits=torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]]), rationale_logits=torch.zeros(2, 3, 2)
    )
    level = torch.tensor([1, 2])
    mask = torch.ones(2, 3, dtype=torch.long)
    plain = multitask_loss(output, level, torch.zeros(2, 3, dtype=torch.long), mask)["level_loss"]
    weighted = multitask_loss(
        output, level, torch.zeros(2, 3, dtype=torch.long), mask, class_weights=torch.tensor([1.0, 10.0, 1.0])
    )["level_loss"]
    assert weighted > plain  # the misclassified level-1 row weighs more


def batch(seeker_len: int, response_len: int, pad_seeker: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    seeker = torch.randint(5, 100, (2, seeker_len), generator=g)
    response = torch.randint(5, 100, (2, response_len), generator=g)
    seeker_mask = torch.ones_like(seeker)
    if pad_seeker:
        seeker = torch.cat([seeker, torch.zeros(2, pad_seeker, dtype=torch.long)], 1)
        seeker_mask = torch.cat([seeker_mask, torch.zeros(2, pad_seeker, dtype=torch.long)], 1)
    return {
        "response_input_ids": response,
        "response_attention_mask": torch.ones_like(response),
        "seeker_input_ids": seeker,
        "seeker_attention_mask": seeker_mask,
    }


def test_seeker_padding_does_not_change_the_outputs():
    torch.manual_seed(0)
    model = BiEncoder(TINY, mechanisms=["ER"]).eval()
    with torch.no_grad():
        a = model(**batch(6, 4))["ER"]
        b = model(**batch(6, 4, pad_seeker=5))["ER"]
    torch.testing.assert_close(a.level_logits, b.level_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.rationale_logits, b.rationale_logits, rtol=1e-5, atol=1e-5)


def test_cached_seeker_states_give_the_same_outputs():
    torch.manual_seed(0)
    model = BiEncoder(TINY, mechanisms=["ER"]).eval()
    inputs = batch(6, 4)
    with torch.no_grad():
        direct = model(**inputs)["ER"]
        states = model.encode_seeker(inputs["seeker_input_ids"], inputs["seeker_attention_mask"])
        cached = model(**inputs, seeker_states=states)["ER"]
    assert torch.equal(direct.level_logits, cached.level_logits)


def test_frozen_seeker_stays_in_eval_mode_and_has_no_gradients():
    model = BiEncoder(TINY, mechanisms=["ER"]).train()
    assert not model.seeker_encoder.training and model.response_encoder.training
    assert not any(p.requires_grad for p in model.seeker_encoder.parameters())
    out = model(**batch(6, 4))["ER"]
    out.level_logits.sum().backward()
    assert all(p.grad is None for p in model.seeker_encoder.parameters())


def test_without_attention_there_is_no_seeker_encoder():
    model = BiEncoder(TINY, mechanisms=["ER"], use_attention=False)
    assert model.seeker_encoder is None and model.attention is None
    out = model(
        response_input_ids=torch.randint(5, 100, (2, 4)), response_attention_mask=torch.ones(2, 4, dtype=torch.long)
    )["ER"]
    assert out.level_logits.shape == (2, 3) and out.rationale_logits.shape == (2, 4, 2)


def test_a_pretrained_response_encoder_fine_tunes_with_dropout(tmp_path):
    # from_pretrained returns eval mode; Lightning keeps submodule modes, so the bi-encoder itself
    # must leave its response encoder in training mode (else it fine-tunes without dropout).
    from empathy.encoders import load_encoder

    load_encoder(TINY).save_pretrained(tmp_path)
    model = BiEncoder({"name": "tiny", "path": str(tmp_path)}, mechanisms=["ER"])
    assert model.training and model.response_encoder.training
    assert all(m.training for m in model.response_encoder.modules())
    assert not model.seeker_encoder.training


def test_one_pair_of_heads_per_mechanism_on_one_body():
    torch.manual_seed(0)
    model = BiEncoder(TINY, mechanisms=["ER", "IP", "EX"]).eval()
    with torch.no_grad():
        out = model(**batch(6, 4))
    assert list(out) == ["ER", "IP", "EX"]
    assert all(o.level_logits.shape == (2, 3) and o.rationale_logits.shape == (2, 4, 2) for o in out.values())
    assert not torch.equal(out["ER"].level_logits, out["IP"].level_logits)  # own heads
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names == {"response_encoder", "seeker_encoder", "attention", "heads"}
    with pytest.raises(ValueError, match="one or more distinct mechanisms"):
        BiEncoder(TINY, mechanisms=["ER", "ER"])
