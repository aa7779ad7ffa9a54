"""The levers of the ablation study: focal level loss, layer-wise learning-rate decay, frozen
response-encoder layers, rationale decoding settings and the dev decoding grid, cross-validation
runs through the entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from empathy.data.synthetic import write_synthetic_epitome
from empathy.models.biencoder import BiEncoder, BiEncoderOutput, multitask_loss
from empathy.models.module import layerwise_param_groups
from empathy.train import train
from tests.test_biencoder import TINY
from tests.test_train import train_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def _output(level_logits: torch.Tensor) -> BiEncoderOutput:
    return BiEncoderOutput(level_logits=level_logits, rationale_logits=torch.zeros(level_logits.shape[0], 3, 2))


def test_focal_gamma_zero_is_cross_entropy_and_gamma_down_weights_easy_rows():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 1.0]])
    level = torch.tensor([0, 1, 2])
    weights = torch.tensor([0.5, 2.0, 1.0])
    zeros = torch.zeros(3, 3, dtype=torch.long)
    mask = torch.ones(3, 3)
    plain = multitask_loss(_output(logits), level, zeros, mask, class_weights=weights, focal_gamma=0.0)
    assert plain["level_loss"] == pytest.approx(F.cross_entropy(logits, level, weight=weights).item())
    focal = multitask_loss(_output(logits), level, zeros, mask, class_weights=weights, focal_gamma=2.0)
    p = torch.softmax(logits, -1)[torch.arange(3), level]
    ce = F.cross_entropy(logits, level, weight=weights, reduction="none")
    expected = ((1 - p) ** 2 * ce).sum() / weights[level].sum()
    assert focal["level_loss"] == pytest.approx(expected.item())
    assert focal["level_loss"] < plain["level_loss"]
    # unlabelled rows (-100, the joint model's missing labels) count in neither
    masked = multitask_loss(_output(logits), torch.tensor([0, -100, 2]), zeros, mask, focal_gamma=2.0)
    keep = torch.tensor([0, 2])
    ce2 = F.cross_entropy(logits[keep], level[keep], reduction="none")
    assert masked["level_loss"] == pytest.approx((((1 - p[keep]) ** 2) * ce2).mean().item())


def test_layerwise_lr_decay_groups():
    net = BiEncoder(TINY, mechanisms=("ER",))  # 2 layers
    assert len(layerwise_param_groups(net, 1e-3, 1.0)) == 1
    groups = layerwise_param_groups(net, 1e-3, 0.5)
    lrs = sorted((g["lr"] for g in groups), reverse=True)
    assert lrs == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4])  # heads, layer 1, layer 0, embeddings
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(trainable)  # every trainable parameter once, frozen seeker none
    by_id = {id(p): g["lr"] for g in groups for p in g["params"]}
    enc = net.response_encoder
    assert by_id[id(enc.embeddings.word_embeddings.weight)] == pytest.approx(1.25e-4)
    assert by_id[id(enc.encoder.layer[1].output.dense.weight)] == pytest.approx(5e-4)
    assert by_id[id(net.heads["ER"].level_head[1].weight)] == pytest.approx(1e-3)


def _step(net: BiEncoder, optimizer: torch.optim.Optimizer) -> None:
    ids = torch.randint(5, 100, (4, 7))
    outputs = net(ids, torch.ones_like(ids), ids[:, :5], torch.ones(4, 5, dtype=torch.long))
    outputs = outputs.values()
    sum(o.level_logits.sum() + o.rationale_logits.sum() for o in outputs).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("joint", [False, True])
def test_frozen_response_layers_keep_their_weights_and_get_no_gradient(joint):
    torch.manual_seed(0)
    mechanisms = ("ER", "IP", "EX") if joint else ("ER",)
    net = BiEncoder(TINY, freeze_response_layers=1, mechanisms=mechanisms)  # 2 layers
    enc = net.response_encoder
    frozen = [*enc.embeddings.parameters(), *enc.encoder.layer[0].parameters()]
    trained = [*enc.encoder.layer[1].parameters(), *net.attention.parameters()]
    assert not any(p.requires_grad for p in frozen) and all(p.requires_grad for p in trained)
    # the optimiser gets only what trains, as the module gives it (layer-wise groups included)
    params = [p for g in layerwise_param_groups(net, 1e-2, 0.8) for p in g["params"]]
    assert {id(p) for p in params} == {id(p) for p in net.parameters() if p.requires_grad}
    assert not {id(p) for p in frozen} & {id(p) for p in params}
    before = [p.detach().clone() for p in (*frozen, *trained)]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    _step(net, optimizer)
    assert all(p.grad is None for p in frozen)
    after = [p.detach() for p in (*frozen, *trained)]
    assert all(torch.equal(b, a) for b, a in zip(before[: len(frozen)], after[: len(frozen)], strict=True))
    assert not all(torch.equal(b, a) for b, a in zip(before[len(frozen) :], after[len(frozen) :], strict=True))
    # dropout still runs in the frozen layers while training (their outputs vary from call to call)
    net.train()
    ids = torch.randint(5, 100, (2, 6))
    assert not torch.equal(enc(input_ids=ids).last_hidden_state, enc(input_ids=ids).last_hidden_state)


def test_freezing_zero_layers_trains_everything_and_too_many_is_an_error():
    net = BiEncoder(TINY, mechanisms=("ER",), freeze_response_layers=0)
    assert all(p.requires_grad for p in net.response_encoder.parameters())
    every = BiEncoder(
        TINY, mechanisms=("ER",), freeze_response_layers=2
    )  # the whole encoder: only attention and heads train
    assert not any(p.requires_grad for p in every.response_encoder.parameters())
    assert all(p.requires_grad for p in every.heads["ER"].level_head.parameters())
    with pytest.raises(ValueError, match="freeze_response_layers=3, but the response encoder has 2 numbered layers"):
        BiEncoder(TINY, mechanisms=("ER",), freeze_response_layers=3)
    with pytest.raises(ValueError, match="must be >= 0"):
        BiEncoder(TINY, mechanisms=("ER",), freeze_response_layers=-1)


def test_encoder_dropout_replaces_the_response_encoders_own_and_leaves_the_seekers():
    ids = torch.randint(5, 100, (2, 6))
    default = BiEncoder(TINY, mechanisms=("ER",))
    hidden, attention = (
        default.response_encoder.config.hidden_dropout_prob,
        default.response_encoder.config.attention_probs_dropout_prob,
    )
    assert hidden > 0 and attention > 0
    default.train()
    assert not torch.equal(
        default.response_encoder(input_ids=ids).last_hidden_state,
        default.response_encoder(input_ids=ids).last_hidden_state,
    )
    off = BiEncoder(TINY, mechanisms=("ER", "IP", "EX"), encoder_dropout=0, encoder_attention_dropout=0)
    assert off.response_encoder.config.hidden_dropout_prob == 0.0
    assert off.response_encoder.config.attention_probs_dropout_prob == 0.0
    assert off.seeker_encoder.config.hidden_dropout_prob == hidden  # frozen: always in eval mode anyway
    off.train()  # no dropout left in the encoder: training-mode outputs repeat exactly
    assert torch.equal(
        off.response_encoder(input_ids=ids).last_hidden_state, off.response_encoder(input_ids=ids).last_hidden_state
    )
    only_attention = BiEncoder(TINY, mechanisms=("ER",), encoder_attention_dropout=0.0)
    assert only_attention.response_encoder.config.hidden_dropout_prob == hidden
    assert only_attention.response_encoder.config.attention_probs_dropout_prob == 0.0


def test_pooling_reads_the_first_token_or_the_mean_of_the_real_tokens():
    from empathy.models.biencoder import pool

    states = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]], [[2.0, 4.0], [4.0, 0.0], [0.0, 2.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])  # the first row's last token is padding
    assert torch.equal(pool(states, mask, "cls"), torch.tensor([[1.0, 0.0], [2.0, 4.0]]))
    assert torch.equal(pool(states, mask, "mean"), torch.tensor([[2.0, 1.0], [2.0, 2.0]]))
    with pytest.raises(ValueError, match="pooling must be one of \\('cls', 'mean'\\), not 'max'"):
        BiEncoder(TINY, mechanisms=("ER",), pooling="max")


def test_mean_pooled_level_logits_ignore_response_padding_and_differ_from_cls():
    torch.manual_seed(0)
    seeker = torch.randint(5, 100, (2, 5))
    response = torch.randint(5, 100, (2, 4))
    padded = torch.cat([response, torch.zeros(2, 3, dtype=torch.long)], 1)
    padded_mask = torch.cat([torch.ones(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)], 1)
    mean = BiEncoder(TINY, mechanisms=("ER", "IP"), pooling="mean").eval()
    cls = BiEncoder(TINY, mechanisms=("ER", "IP"), pooling="cls").eval()
    cls.load_state_dict(mean.state_dict())  # the same weights: only what the level heads read differs
    with torch.no_grad():
        a = mean(response, torch.ones_like(response), seeker, torch.ones_like(seeker))
        b = mean(padded, padded_mask, seeker, torch.ones_like(seeker))
        c = cls(response, torch.ones_like(response), seeker, torch.ones_like(seeker))
    for m in ("ER", "IP"):
        torch.testing.assert_close(a[m].level_logits, b[m].level_logits, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(a[m].level_logits, c[m].level_logits)
        assert torch.equal(a[m].rationale_logits, c[m].rationale_logits)


def test_encoder_dropout_errors_name_the_setting():
    from types import SimpleNamespace

    from empathy.encoders import set_dropout

    with pytest.raises(ValueError, match=r"the hidden dropout of encoder 'tiny' must be in \[0, 1\), not 1.5"):
        BiEncoder(TINY, mechanisms=("ER",), encoder_dropout=1.5)
    config = SimpleNamespace(model_type="toy", dropout=0.1)  # DistilBERT-like names
    set_dropout(config, {"hidden": 0.0, "attention": None}, "toy")
    assert config.dropout == 0.0
    with pytest.raises(ValueError, match="encoder 'toy' \\(toy\\) has no attention dropout setting"):
        set_dropout(config, {"attention": 0.0}, "toy")
    with pytest.raises(ValueError, match="unknown dropout 'heads'"):
        set_dropout(config, {"heads": 0.0}, "toy")


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    return write_synthetic_epitome(tmp_path_factory.mktemp("epitome"), n_rows=80, seed=0)


def test_levers_train_through_the_entry_point_with_a_cv_fold(synthetic_dir, tmp_path):
    cfg = train_cfg(
        synthetic_dir,
        tmp_path / "run",
        "model=biencoder",
        "mechanism=EX",
        "trainer.max_epochs=1",
        "test=false",
        "loss.focal_gamma=2",
        "model.layerwise_lr_decay=0.8",
        "grid=decoding",
        "model.net.encoder_dropout=0",
        "model.net.encoder_attention_dropout=0.05",
        "model.rationale_decoding.threshold=0.3",
        "model.rationale_decoding.fill_gaps=1",
        "data.cv_folds=3",
        "data.cv_fold=1",
    )
    result = train(cfg, Path(cfg.paths.output_dir))
    metrics = result["metrics"]
    grid = {k for k in metrics if k.startswith("dev/EX/rationale_iou_f1@")}
    assert len(grid) == 63 and "dev/EX/rationale_iou_f1@t0.3g1" in grid and "dev/EX/rationale_iou_f1@t0.05g32" in grid
    assert not any(k.startswith("test/") for k in metrics)  # cross-validation never touches test
    split = (tmp_path / "run" / "split.csv").read_text().splitlines()
    assert sum(line.endswith(",dev") for line in split) > 10  # a fold of train+dev, not the 5 % dev
    hparams = torch.load(next((tmp_path / "run" / "checkpoints").glob("best*.ckpt")), weights_only=True)[
        "hyper_parameters"
    ]
    assert hparams["rationale_decoding"] == {"threshold": 0.3, "fill_gaps": 1, "min_span": 1}
    assert hparams["data_config"]["cv_folds"] == 3 and hparams["loss"]["focal_gamma"] == 2
    assert hparams["net"]["encoder_dropout"] == 0 and hparams["net"]["encoder_attention_dropout"] == 0.05
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"] == pytest.approx(metrics)


def test_joint_model_scores_the_decoding_grid_per_mechanism(synthetic_dir, tmp_path):
    cfg = train_cfg(
        synthetic_dir,
        tmp_path / "run",
        "model=joint",
        "trainer.max_epochs=1",
        "test=false",
        "grid=decoding",
        "loss.focal_gamma=1",
        "data.cv_folds=3",
        "data.cv_fold=0",
        "model.net.freeze_response_layers=1",
        "model.net.pooling=mean",
    )
    metrics = train(cfg, Path(cfg.paths.output_dir))["metrics"]
    for m in ("ER", "IP", "EX"):
        assert len([k for k in metrics if k.startswith(f"dev/{m}/rationale_iou_f1@")]) == 63
    # the frozen layer is the checkpoint's too, and the model it loads into freezes it again
    ckpt = next((tmp_path / "run" / "checkpoints").glob("best*.ckpt"))
    net = torch.load(ckpt, weights_only=True)["hyper_parameters"]["net"]
    assert net["freeze_response_layers"] == 1 and net["pooling"] == "mean"
    from empathy.models.module import EmpathyModule

    loaded = EmpathyModule.from_checkpoint(str(ckpt))
    assert not any(p.requires_grad for p in loaded.net.response_encoder.encoder.layer[0].parameters())
    assert loaded.net.pooling == "mean"


@pytest.mark.slow  # torch.compile of the tiny encoder takes about a minute on 2 cores
def test_compiled_response_encoder_matches_eager_and_trains_through_the_entry_point(synthetic_dir, tmp_path):
    from empathy.models.module import compile_response_encoder

    torch.manual_seed(0)
    eager = BiEncoder(TINY, mechanisms=("ER",)).eval()
    compiled = BiEncoder(TINY, mechanisms=("ER",)).eval()
    compiled.load_state_dict(eager.state_dict())
    compile_response_encoder(compiled)
    assert not any("_orig_mod" in key for key in compiled.state_dict())  # checkpoint keys unchanged
    level, mask = torch.tensor([0, 1, 2]), torch.ones(3, 11)
    rationale = torch.randint(0, 2, (3, 11))
    grads = []
    for net, ids in ((eager, 11), (compiled, 11), (compiled, 7)):  # a new width: no recompilation error
        torch.manual_seed(1)
        response, seeker = torch.randint(5, 100, (3, ids)), torch.randint(5, 100, (3, 9))
        out = net(response, torch.ones_like(response), seeker, torch.ones_like(seeker))
        loss = multitask_loss(out["ER"], level, rationale[:, :ids], mask[:, :ids])["loss"]
        loss.backward()
        grads.append((loss.item(), net.response_encoder.embeddings.word_embeddings.weight.grad.clone()))
        net.zero_grad()
    assert grads[1][0] == pytest.approx(grads[0][0], rel=1e-5)
    assert torch.allclose(grads[1][1], grads[0][1], atol=1e-6)

    cfg = train_cfg(
        synthetic_dir, tmp_path / "run", "trainer.max_epochs=1", "model=biencoder", "mechanism=ER", "model.compile=true"
    )
    metrics = train(cfg, Path(cfg.paths.output_dir))["metrics"]
    assert 0.0 <= metrics["test/ER/macro_f1"] <= 1.0
    ckpt = torch.load(next((tmp_path / "run" / "checkpoints").glob("*.ckpt")), weights_only=True)
    assert ckpt["hyper_parameters"]["compile"] is True
    assert not any("_orig_mod" in key for key in ckpt["state_dict"])


def test_level_offsets_move_the_argmax_and_the_grid_scores_each_pair():
    from empathy.decisions import decisions
    from empathy.levels import level_offsets
    from empathy.study.grids import LevelOffsetGrid, macro_f1, offset_tag, offsets_from_tag

    def decide(logits, offsets):
        return decisions(["ER"], None, {"ER": offsets}).get("ER").levels(logits)

    logits = torch.tensor([[2.0, 1.5, 0.0], [0.0, 1.0, 0.8], [1.0, 0.0, 0.9], [0.0, 0.2, 3.0]])
    gold = torch.tensor([1, 2, 2, 2])
    assert decide(logits, None).tolist() == [0, 1, 0, 2]
    assert decide(logits, (1.0, 0.0)).tolist() == [1, 1, 0, 2]
    assert decide(logits, (0.0, 0.5)).tolist() == [0, 2, 2, 2]
    grid = LevelOffsetGrid()
    grid.update(logits[:2], gold[:2])
    grid.update(logits[2:], gold[2:])
    scores = grid.compute()
    assert len(scores) == 13 * 13
    # by hand: (0, 0.5) predicts [0, 2, 2, 2] against [1, 2, 2, 2]: F1 level 0 = 0, level 1 = 0, level 2 = 1
    assert scores["macro_f1@o0_0.5"] == pytest.approx(1 / 3)
    # (0, 0): [0, 1, 0, 2]: level 0 0/(2+0)=0, level 1 0, level 2 2*1/(1+3)=0.5
    assert scores["macro_f1@o0_0"] == pytest.approx(0.5 / 3)
    assert macro_f1(torch.zeros(3, 3)) == 0  # no rows: every level absent
    assert offset_tag((-1.0, -1.5)) == "o-1_-1.5" and offsets_from_tag("o-1_-1.5") == (-1.0, -1.5)
    assert level_offsets({"ER": [-1, -1.5], "IP": None}, "ER") == (-1.0, -1.5)
    assert level_offsets({"ER": [-1, -1.5], "IP": None}, "IP") is None
    assert level_offsets({"ER": [-1, -1.5]}, "joint") is None
    assert level_offsets([0.5, 0], "EX") == (0.5, 0.0) and level_offsets(None, "ER") is None
    with pytest.raises(ValueError, match=r"model.level_offsets.ER must hold 2 numbers .* got \[1\]"):
        level_offsets({"ER": [1]}, "ER")
    with pytest.raises(ValueError, match=r"unknown mechanism\(s\) \['XX'\]"):
        level_offsets({"XX": [1, 2]}, "ER")
    with pytest.raises(ValueError, match="not a level offset tag"):
        offsets_from_tag("t0.3g2")
