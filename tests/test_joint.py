"""The joint model (model=joint): merged data, loss, training, evaluation, export, prediction and
results rows, on the tiny encoder and synthetic data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from omegaconf import open_dict

from empathy import MECHANISMS, runner
from empathy.data.merge import (
    IGNORE_INDEX,
    JointMergeError,
    level_column,
    merge_mechanisms,
    rationale_column,
)
from empathy.data.processing import FEATURES
from empathy.data.synthetic import FILES, write_synthetic_epitome
from empathy.decoding import RationaleDecoding
from empathy.encoders import load_tokenizer
from empathy.evaluate import evaluate
from empathy.levels import adjusted, level_offsets
from empathy.models.biencoder import BiEncoder, BiEncoderOutput, multitask_loss
from empathy.models.module import EmpathyModule
from empathy.predict import EmpathyPredictor, LoadedModel, export_model, load_model
from empathy.predict.cli import predict_from_config
from empathy.study import results
from empathy.study.grids import GridCallback
from empathy.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

CONFLICT_PAIR = ("s5", "r5")  # IP's file gives it two levels: dropped there, kept for ER and EX
NET = {"attention_heads": 1, "use_attention": True, "freeze_seeker": True, "dropout": 0.1}


@pytest.fixture(scope="module")
def joint_data(tmp_path_factory) -> tuple[Path, Path]:
    """Synthetic EPITOME files with a level conflict in IP, and one split file for all pairs."""
    folder = write_synthetic_epitome(tmp_path_factory.mktemp("epitome"), n_rows=60, seed=0)
    ip = folder / FILES["IP"]
    with ip.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    conflict = next(r for r in rows[1:] if (r[0], r[1]) == CONFLICT_PAIR)
    with ip.open("a", encoding="utf-8", newline="") as f:
        csv.writer(f).writerow([*conflict[:4], str((int(conflict[4]) + 1) % 3), conflict[5]])
    split_file = folder / "split.csv"
    with split_file.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sp_id", "rp_id", "split"])
        for k, r in enumerate(rows[1:]):
            writer.writerow([r[0], r[1], "test" if k % 5 == 0 else "dev" if k % 5 == 1 else "train"])
    return folder, split_file


def joint_cfg(data: tuple[Path, Path], out: Path, *extra: str):
    folder, split_file = data
    return runner.compose_config(
        "train",
        [
            "model=joint",
            "encoder=tiny",
            "logger=csv",
            "trainer.max_epochs=1",
            "trainer.precision=32-true",
            "trainer.accelerator=cpu",
            "++trainer.enable_progress_bar=false",
            "data.batch_size=8",
            f"data.split_file={split_file}",
            "model.optimizer.lr=1e-3",
            *extra,
        ],
        data_dir=folder,
        output_dir=out,
    )


# ------------------------------------------------------------------------------------- merging
def _row(sp: str, rp: str, level: int = 1, response: tuple[int, ...] = (101, 7, 102), seeker_id: int = 0) -> dict:
    n = len(response)
    return {
        "sp_id": sp,
        "rp_id": rp,
        "level": level,
        "seeker_post": f"post {sp}",
        "response_post": f"reply {rp}",
        "seeker_id": seeker_id,
        "seeker_input_ids": [101, 5, 102],
        "response_input_ids": list(response),
        "response_offsets": [[0, 0]] * n,
        "response_mask": [0, *([1] * (n - 2)), 0],
        "rationale_strict": [0, *([1] * (n - 2)), 0],
        "rationale_paper": [0, *([1] * (n - 2)), 0],
        "rationale_unaligned": 0,
    }


def _prepared(**splits: list[dict]) -> datasets.DatasetDict:
    return datasets.DatasetDict(
        {
            s: datasets.Dataset.from_dict({c: [r[c] for r in splits.get(s, [])] for c in FEATURES}, features=FEATURES)
            for s in ("train", "dev", "test")
        }
    )


def test_merge_joins_pairs_marks_missing_labels_and_renumbers_seekers():
    er = _prepared(train=[_row("s1", "r1", 2), _row("s1", "r2", 0)], test=[_row("s2", "r3", 1, seeker_id=1)])
    # IP lacks r2 and numbered its seeker posts otherwise.
    ip = _prepared(train=[_row("s1", "r1", 0, seeker_id=7)], test=[_row("s2", "r3", 2, seeker_id=3)])
    merged = merge_mechanisms({"ER": er, "IP": ip})
    train = merged["train"]
    assert train["rp_id"] == ["r1", "r2"] and merged["test"]["rp_id"] == ["r3"]
    assert train[level_column("ER")] == [2, 0] and train[level_column("IP")] == [0, IGNORE_INDEX]
    assert train[rationale_column("IP", "strict")][1] == [IGNORE_INDEX] * 3
    assert train[rationale_column("IP", "paper")][1] == [IGNORE_INDEX] * 3
    assert train[rationale_column("ER", "strict")][1] == [0, 1, 0]
    # One id per seeker post over all splits, whatever each mechanism called it.
    assert train["seeker_id"] == [0, 0] and merged["test"]["seeker_id"] == [1]


def test_merge_refuses_pairs_in_two_splits_and_unlabels_other_texts():
    er = _prepared(train=[_row("s1", "r1")])
    with pytest.raises(JointMergeError, match=r"\(sp_id=s1, rp_id=r1\) is in ER's train split but in IP's dev split"):
        merge_mechanisms({"ER": er, "IP": _prepared(dev=[_row("s1", "r1")])})
    other_text = _row("s1", "r1")
    other_text["response_post"] = "a different reply"
    mismatched = []
    merged = merge_mechanisms({"ER": er, "IP": _prepared(train=[other_text])}, mismatched)
    row = merged["train"][0]  # ER's text and labels kept; IP loses the pair (its labels fit another text)
    assert row["response_post"] == "reply r1" and row[level_column("IP")] == IGNORE_INDEX
    assert mismatched == [
        {
            "sp_id": "s1",
            "rp_id": "r1",
            "kept": "ER",
            "unlabelled": "IP",
            "reason": "response_post differs beyond whitespace",
        }
    ]
    other_tokens = merge_mechanisms({"ER": er, "IP": _prepared(train=[_row("s1", "r1", response=(101, 8, 102))])})
    assert other_tokens["train"][0][level_column("IP")] == IGNORE_INDEX


def test_merge_accepts_posts_that_differ_only_in_whitespace():
    # the real EPITOME files differ in runs of spaces for hundreds of pairs
    spaced = _row("s1", "r1")
    spaced["seeker_post"], spaced["response_post"] = "post  s1", "reply   r1 "
    merged = merge_mechanisms({"ER": _prepared(train=[_row("s1", "r1")]), "IP": _prepared(train=[spaced])})
    row = merged["train"][0]
    assert row["seeker_post"] == "post s1" and row["response_post"] == "reply r1"  # the first mechanism's text
    assert row[level_column("ER")] == 1 and row[level_column("IP")] == 1


def test_joint_datamodule_merges_the_three_files(joint_data, tmp_path):
    datamodule = runner.build_datamodule(joint_cfg(joint_data, tmp_path))
    datamodule.setup()
    assert datamodule.mechanisms == MECHANISMS
    rows = {(r["sp_id"], r["rp_id"]): r for s in ("train", "dev", "test") for r in datamodule.dataset(s)}
    assert len(rows) == 60
    conflict = rows[CONFLICT_PAIR]
    assert conflict[level_column("IP")] == IGNORE_INDEX and conflict[level_column("ER")] in (0, 1, 2)
    assert sum(r[level_column("IP")] == IGNORE_INDEX for r in rows.values()) == 1
    weights = datamodule.inverse_frequency_weights()
    assert set(weights) == set(MECHANISMS) and all(len(w) == 3 for w in weights.values())
    batch = next(iter(datamodule.val_dataloader()))
    for m in MECHANISMS:
        assert batch[rationale_column(m, "strict")].shape == batch["response_input_ids"].shape


# ------------------------------------------------------------------------------------- loss
def test_loss_is_the_sum_over_mechanisms_of_their_labelled_rows(tiny_encoder_cfg):
    torch.manual_seed(0)
    weights = {"ER": [1.0, 2.0, 3.0], "IP": [1.0, 1.0, 1.0], "EX": [0.5, 1.0, 4.0]}
    module = EmpathyModule(
        encoder=tiny_encoder_cfg,
        net=NET,
        loss={"lambda_EI": 1.0, "lambda_RE": 0.5, "class_weights": "inverse_frequency"},
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3},
        class_weights=weights,
    )
    batch_size, tokens = 4, 5
    outputs = {m: BiEncoderOutput(torch.randn(batch_size, 3), torch.randn(batch_size, tokens, 2)) for m in MECHANISMS}
    mask = torch.tensor([[0, 1, 1, 1, 0]] * batch_size)
    batch = {"rationale_mask": mask, "response_input_ids": torch.ones(batch_size, tokens, dtype=torch.long)}
    levels = {"ER": [0, 2, IGNORE_INDEX, 1], "IP": [IGNORE_INDEX] * 4, "EX": [1, IGNORE_INDEX, 0, 2]}
    for m in MECHANISMS:
        batch[level_column(m)] = torch.tensor(levels[m])
        labels = torch.randint(0, 2, (batch_size, tokens))
        labels[batch[level_column(m)] == IGNORE_INDEX] = IGNORE_INDEX
        batch[rationale_column(m, "strict")] = labels
    losses = module._loss(outputs, batch)
    expected = 0.0
    for m in ("ER", "EX"):
        keep = batch[level_column(m)] != IGNORE_INDEX
        single = multitask_loss(
            BiEncoderOutput(outputs[m].level_logits[keep], outputs[m].rationale_logits[keep]),
            batch[level_column(m)][keep],
            batch[rationale_column(m, "strict")][keep],
            mask[keep],
            lambda_EI=1.0,
            lambda_RE=0.5,
            class_weights=torch.tensor(weights[m]),
        )
        assert losses[f"{m}/loss"] == pytest.approx(float(single["loss"]))
        expected += float(single["loss"])
    assert "IP/loss" not in losses
    assert float(losses["loss"]) == pytest.approx(expected)
    # What unlabelled rows hold changes nothing.
    for m in MECHANISMS:
        ignored = batch[level_column(m)] == IGNORE_INDEX
        batch[rationale_column(m, "strict")][ignored] = 1
        outputs[m].level_logits[ignored] += 5.0
    assert float(module._loss(outputs, batch)["loss"]) == pytest.approx(expected)
    # A batch without any label: a zero loss that still backpropagates.
    for m in MECHANISMS:
        batch[level_column(m)] = torch.full((batch_size,), IGNORE_INDEX)
    logits = torch.randn(batch_size, 3, requires_grad=True)
    outputs = {m: BiEncoderOutput(logits, torch.randn(batch_size, tokens, 2)) for m in MECHANISMS}
    empty = module._loss(outputs, batch)["loss"]
    assert empty.requires_grad and float(empty.detach()) == 0.0


# ------------------------------------------------------------------------------------- train, evaluate
@pytest.fixture(scope="module")
def joint_run(joint_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("joint-run")
    cfg = joint_cfg(joint_data, out)
    return cfg, train(cfg, out)


def test_model_joint_trains_with_per_mechanism_metrics(joint_run):
    cfg, result = joint_run
    metrics = result["metrics"]
    assert result["mechanism"] == "joint"
    for split in ("dev", "test"):
        for m in MECHANISMS:
            for key in ("acc", "macro_f1", "rationale_token_f1", "rationale_iou_f1"):
                assert 0.0 <= metrics[f"{split}/{m}/{key}"] <= 1.0
            for policy in ("paper", "strict"):
                assert f"{split}/{m}/rationale_iou_f1_{policy}" in metrics
                assert f"{split}/{m}/rationale_token_f1_{policy}" in metrics
        mean = sum(metrics[f"{split}/{m}/macro_f1"] for m in MECHANISMS) / 3
        assert metrics[f"{split}/macro_f1"] == pytest.approx(mean, abs=1e-6)
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert saved["metrics"] == pytest.approx(metrics)
    checkpoint = torch.load(result["best_checkpoint"], weights_only=True)
    assert checkpoint["hyper_parameters"]["mechanisms"] == list(MECHANISMS)
    names = set(checkpoint["state_dict"])
    for m in MECHANISMS:
        assert f"net.heads.{m}.level_head.4.weight" in names and f"net.heads.{m}.rationale_head.1.weight" in names
    assert not any(n.startswith(("net.level_head.", "net.rationale_head.")) for n in names)


def test_evaluate_reproduces_a_joint_checkpoint(joint_run, joint_data, tmp_path):
    cfg, result = joint_run
    eval_cfg = runner.compose_config(
        "evaluate",
        [f"ckpt_path={result['best_checkpoint']}", "++trainer.enable_progress_bar=false"],
        data_dir=joint_data[0],
        output_dir=tmp_path,
    )
    with open_dict(eval_cfg):
        eval_cfg.paths.cache_dir = cfg.paths.cache_dir
    metrics = evaluate(eval_cfg, tmp_path)
    for key in ("macro_f1", *(f"{m}/{k}" for m in MECHANISMS for k in ("acc", "macro_f1", "rationale_iou_f1_paper"))):
        assert metrics[f"test/{key}"] == pytest.approx(result["metrics"][f"test/{key}"], abs=1e-6)


def test_a_decoding_per_mechanism_decodes_each_head_with_its_own(joint_run, joint_data, tmp_path):
    cfg, result = joint_run

    def evaluate_with(decoding: str, name: str) -> dict:
        eval_cfg = runner.compose_config(
            "evaluate",
            [
                f"ckpt_path={result['best_checkpoint']}",
                "++trainer.enable_progress_bar=false",
                f"rationale_decoding={decoding}",
            ],
            data_dir=joint_data[0],
            output_dir=tmp_path / name,
        )
        with open_dict(eval_cfg):
            eval_cfg.paths.cache_dir = cfg.paths.cache_dir
        return evaluate(eval_cfg, tmp_path / name)

    mixed = evaluate_with("{threshold:0.5,fill_gaps:0,IP:{threshold:0.05,fill_gaps:8}}", "mixed")
    argmax = evaluate_with("{threshold:0.5,fill_gaps:0}", "argmax")
    wide = evaluate_with("{threshold:0.05,fill_gaps:8}", "wide")
    keys = ("rationale_iou_f1_strict", "rationale_token_f1_strict", "rationale_iou_f1_paper", "macro_f1")
    for key in keys:
        assert mixed[f"test/IP/{key}"] == pytest.approx(wide[f"test/IP/{key}"], abs=1e-9)
        for m in ("ER", "EX"):
            assert mixed[f"test/{m}/{key}"] == pytest.approx(argmax[f"test/{m}/{key}"], abs=1e-9)
    # the two decodings differ on IP (else the check above proves nothing)
    assert wide["test/IP/rationale_token_f1_strict"] != argmax["test/IP/rationale_token_f1_strict"]
    saved = json.loads((tmp_path / "mixed" / "eval_test.json").read_text())["rationale_decoding"]
    assert saved == {
        "threshold": 0.5,
        "fill_gaps": 0,
        "min_span": 1,
        "IP": {"threshold": 0.05, "fill_gaps": 8, "min_span": 1},
    }

    # prediction decodes each mechanism with its own setting too
    pairs = [("I lost my job and I feel alone.", "I'm so sorry. That sounds really hard; you are not alone.")] * 3
    model = load_model(result["best_checkpoint"])
    model.hparams["rationale_decoding"] = {"threshold": 0.5, "fill_gaps": 0, "IP": {"threshold": 0.05, "fill_gaps": 8}}
    got = EmpathyPredictor({"joint": model}).predict(*zip(*pairs, strict=True))
    model.hparams["rationale_decoding"] = {"threshold": 0.05, "fill_gaps": 8}
    all_wide = EmpathyPredictor({"joint": model}).predict(*zip(*pairs, strict=True))
    model.hparams["rationale_decoding"] = {"threshold": 0.5, "fill_gaps": 0}
    all_argmax = EmpathyPredictor({"joint": model}).predict(*zip(*pairs, strict=True))
    assert got["IP"].rationales == all_wide["IP"].rationales
    assert got["ER"].rationales == all_argmax["ER"].rationales and got["EX"].rationales == all_argmax["EX"].rationales


def test_evaluate_scores_the_decoding_grid_of_a_trained_joint_model(joint_run, joint_data, tmp_path):
    cfg, result = joint_run
    eval_cfg = runner.compose_config(
        "evaluate",
        [
            f"ckpt_path={result['best_checkpoint']}",
            "split=dev",
            "grid=decoding",
            # one decoding of the 63 for every head (the joint defaults drop short spans,
            # which only the extended grid scores: the next test)
            "rationale_decoding={threshold:0.3,fill_gaps:8}",
            "++trainer.enable_progress_bar=false",
        ],
        data_dir=joint_data[0],
        output_dir=tmp_path,
    )
    with open_dict(eval_cfg):
        eval_cfg.paths.cache_dir = cfg.paths.cache_dir
    metrics = evaluate(eval_cfg, tmp_path)
    for m in MECHANISMS:
        grid = {k for k in metrics if k.startswith(f"dev/{m}/rationale_iou_f1@")}
        assert len(grid) == 63 and f"dev/{m}/rationale_iou_f1@t0.05g32" in grid
        # the evaluated decoding, scored by the grid, is the plain strict IOU-F1
        assert metrics[f"dev/{m}/rationale_iou_f1@t0.3g8"] == pytest.approx(
            metrics[f"dev/{m}/rationale_iou_f1"], abs=1e-9
        )
        assert metrics[f"dev/{m}/macro_f1"] == pytest.approx(result["metrics"][f"dev/{m}/macro_f1"], abs=1e-6)


def test_evaluate_scores_the_extended_grid_and_a_fallback_decoding_alike(joint_run, joint_data, tmp_path):
    cfg, result = joint_run
    eval_cfg = runner.compose_config(
        "evaluate",
        [
            f"ckpt_path={result['best_checkpoint']}",
            "split=dev",
            "grid=decoding_extended",
            "rationale_decoding={threshold:0.3,fill_gaps:8,min_span:2,fallback:true}",
            "++trainer.enable_progress_bar=false",
        ],
        data_dir=joint_data[0],
        output_dir=tmp_path,
    )
    with open_dict(eval_cfg):
        eval_cfg.paths.cache_dir = cfg.paths.cache_dir
    metrics = evaluate(eval_cfg, tmp_path)
    assert json.loads((tmp_path / "eval_dev.json").read_text())["rationale_decoding"]["fallback"] is True
    for m in MECHANISMS:
        grid = {k for k in metrics if k.startswith(f"dev/{m}/rationale_iou_f1@")}
        assert len(grid) == 200 and f"dev/{m}/rationale_iou_f1@t0.1g2m5f" in grid
        # the evaluated decoding (with the predicted levels for its fallback) is the grid's entry
        assert metrics[f"dev/{m}/rationale_iou_f1@t0.3g8m2f"] == pytest.approx(
            metrics[f"dev/{m}/rationale_iou_f1"], abs=1e-9
        )
    with open_dict(eval_cfg):
        eval_cfg.split = "test"  # the grids choose settings: never on test
    with pytest.raises(ValueError, match="the grids choose settings, which is done on dev"):
        evaluate(eval_cfg, tmp_path)
    assert not (tmp_path / "eval_test.json").exists()
    with pytest.raises(ValueError, match="grid must be one of decoding, decoding_extended, level_offsets"):
        GridCallback("all")


# ------------------------------------------------------------------------------------- export, predict
def test_export_and_predict_give_every_mechanism_with_one_response_pass(joint_run, joint_data, tmp_path):
    trained, result = joint_run
    folder = export_model(result["best_checkpoint"], tmp_path / "joint")
    config = json.loads((folder / "config.json").read_text())
    assert config["mechanisms"] == list(MECHANISMS)
    # each head's own decoding (the joint default's) travels with the export
    decodings = {m: RationaleDecoding.from_config(config["rationale_decoding"], m) for m in MECHANISMS}
    assert decodings == {m: RationaleDecoding.from_config(trained.model.rationale_decoding, m) for m in MECHANISMS}
    assert len(set(decodings.values())) == 3
    assert config["level_offsets"] == {"ER": [-1.0, -2.0], "IP": None, "EX": None}
    with (joint_data[0] / FILES["ER"]).open(encoding="utf-8", newline="") as f:
        pairs = [(r["seeker_post"], r["response_post"]) for r in csv.DictReader(f)][:20]
    source = tmp_path / "pairs.csv"
    with source.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "seeker_post", "response_post"])
        writer.writerows([k, s, r] for k, (s, r) in enumerate(pairs))
    output = tmp_path / "scored.csv"
    cfg = runner.compose_config(
        "predict",
        [
            f"input={source}",
            f"output={output}",
            f"models.joint={folder}",
            "progress=false",
            "batch_size=8",
            "precision=32",
        ],
    )
    predict_from_config(cfg)
    with output.open(encoding="utf-8", newline="") as f:
        scored = list(csv.DictReader(f))
    assert [r["id"] for r in scored] == [str(k) for k in range(20)]

    # What the trained module computes, one pair at a time.
    module = EmpathyModule.from_checkpoint(result["best_checkpoint"]).eval()
    tokenizer = load_tokenizer(module.hparams.encoder)
    with torch.no_grad():
        for row, (seeker, response) in zip(scored, pairs, strict=True):
            s = tokenizer(seeker, truncation=True, max_length=module.hparams.max_len, return_tensors="pt")
            r = tokenizer(response, truncation=True, max_length=module.hparams.max_len, return_tensors="pt")
            outputs = module.net(r["input_ids"], r["attention_mask"], s["input_ids"], s["attention_mask"])
            for m in MECHANISMS:  # with the default's level offsets (ER's), as the export carries them
                probs = torch.softmax(
                    adjusted(outputs[m].level_logits[0], level_offsets(config["level_offsets"], m)), -1
                )
                assert int(row[f"{m}_level"]) == int(probs.argmax())
                for c in range(3):
                    assert float(row[f"{m}_prob{c}"]) == pytest.approx(float(probs[c]), abs=1e-4)
                assert f"{m}_rationale" in row

    predictor = EmpathyPredictor.from_pretrained({"joint": folder}, batch_size=8)
    assert predictor.mechanisms == MECHANISMS
    again = predictor.predict([s for s, _ in pairs], [r for _, r in pairs])
    assert predictor.counts["response_passes"] == predictor.counts["seeker_passes"] == predictor.counts["batches"] == 3
    assert [str(v) for v in again["IP"].levels] == [r["IP_level"] for r in scored]
    from_ckpt = EmpathyPredictor.from_pretrained({"joint": result["best_checkpoint"]}, batch_size=8)
    assert (from_ckpt.predict([s for s, _ in pairs], [r for _, r in pairs])["EX"].levels == again["EX"].levels).all()
    joint = load_model(folder)
    single = LoadedModel(
        {**joint.hparams, "mechanisms": ["ER"]},
        BiEncoder(joint.encoder, mechanisms=["ER"], **NET).eval(),
        "a separate ER model",
        tokenizer_override=joint.tokenizer,
    )
    with pytest.raises(ValueError, match="ER is scored by two models, the ER and the joint model"):
        EmpathyPredictor({"ER": single, "joint": joint})


# ------------------------------------------------------------------------------------- results
def test_results_give_a_joint_run_one_row_per_mechanism(joint_run, tmp_path):
    cfg, result = joint_run
    separate = tmp_path / "separate"
    separate.mkdir()
    metrics = {f"test/{k}": 0.5 for k in ("acc", "macro_f1")}
    metrics.update({f"test/rationale_{k}_f1_{p}": 0.5 for k in ("token", "iou") for p in ("paper", "strict")})
    (separate / "metrics.json").write_text(json.dumps({"metrics": metrics, "fit_minutes": 1.0}))
    (separate / "resolved_config.yaml").write_text("seed: 1\nmechanism: {name: ER, file: er.csv}\n")

    written = results.aggregate([Path(cfg.paths.output_dir), separate], tmp_path / "table")
    rows = {(r["experiment"], r["mechanism"], r["policy"]): r for r in written["rows"]}
    assert {(e, m) for e, m, _ in rows} == {("default", "ER"), ("joint", "ER"), ("joint", "IP"), ("joint", "EX")}
    for m in MECHANISMS:
        strict = rows[("joint", m, "strict")]
        assert strict["macro_f1_mean"] == pytest.approx(result["metrics"][f"test/{m}/macro_f1"])
        assert strict["rationale_iou_f1_mean"] == pytest.approx(result["metrics"][f"test/{m}/rationale_iou_f1_strict"])
        assert rows[("joint", m, "paper")]["rationale_iou_f1_mean"] == pytest.approx(
            result["metrics"][f"test/{m}/rationale_iou_f1_paper"]
        )
    assert "| joint | strict |" in written["markdown"].read_text()


# ------------------------------------------------------------------------------------- level offsets
def test_level_offsets_decide_levels_in_evaluation_prediction_and_export(joint_run, joint_data, tmp_path):
    cfg, result = joint_run

    def evaluate_with(name: str, *extra: str) -> dict:
        eval_cfg = runner.compose_config(
            "evaluate",
            [f"ckpt_path={result['best_checkpoint']}", "split=dev", "++trainer.enable_progress_bar=false", *extra],
            data_dir=joint_data[0],
            output_dir=tmp_path / name,
        )
        with open_dict(eval_cfg):
            eval_cfg.paths.cache_dir = cfg.paths.cache_dir
        return evaluate(eval_cfg, tmp_path / name)

    grid = evaluate_with("grid", "grid=level_offsets")
    plain = evaluate_with("plain")
    for m, own in (("ER", "o-1_-2"), ("IP", "o0_0"), ("EX", "o0_0")):  # the joint default offsets ER's levels
        scored = {k for k in grid if k.startswith(f"dev/{m}/macro_f1@")}
        assert len(scored) == 169 and f"dev/{m}/macro_f1@o-3_3" in scored
        # the grid's pair of the model's own offsets is its plain evaluation
        assert grid[f"dev/{m}/macro_f1@{own}"] == pytest.approx(plain[f"dev/{m}/macro_f1"], abs=1e-6)
    # other offsets: the grid's pair is the evaluation with them, and they decide otherwise than the argmax
    moved = evaluate_with("moved", "level_offsets={ER:[2,3]}")
    assert grid["dev/ER/macro_f1@o2_3"] == pytest.approx(moved["dev/ER/macro_f1"], abs=1e-6)
    assert grid["dev/ER/macro_f1@o2_3"] != grid["dev/ER/macro_f1@o0_0"]  # else the check proves nothing
    # +50 on IP's level 1 predicts level 1 everywhere; the mechanisms it does not name keep theirs
    forced = evaluate_with("forced", "level_offsets={IP:[50,0]}")
    assert forced["dev/IP/f1_level0"] == 0 and forced["dev/IP/f1_level2"] == 0  # every IP row predicted level 1
    for m in ("ER", "EX"):
        assert forced[f"dev/{m}/macro_f1"] == pytest.approx(plain[f"dev/{m}/macro_f1"], abs=1e-9)
    assert json.loads((tmp_path / "forced" / "eval_dev.json").read_text())["level_offsets"] == {
        "ER": [-1.0, -2.0],
        "IP": [50, 0],
        "EX": None,
    }

    # prediction and the export decide with the model's offsets, and report the softmax of the same sums
    pairs = [("I lost my job and I feel alone.", "I'm so sorry. That sounds really hard; you are not alone.")] * 2
    model = load_model(result["best_checkpoint"])
    plain_pred = EmpathyPredictor({"joint": model}).predict(*zip(*pairs, strict=True))
    model.hparams["level_offsets"] = {**model.hparams["level_offsets"], "IP": [50.0, 0.0], "EX": [0.0, 50.0]}
    got = EmpathyPredictor({"joint": model}).predict(*zip(*pairs, strict=True))
    assert (got["IP"].levels == 1).all() and (got["EX"].levels == 2).all()
    assert (got["ER"].levels == plain_pred["ER"].levels).all()
    assert got["IP"].probs[:, 1].min() > 0.99 and (got["IP"].probs.argmax(-1) == got["IP"].levels).all()
    ckpt = torch.load(result["best_checkpoint"], weights_only=True)
    ckpt["hyper_parameters"]["level_offsets"] = {"ER": [-1.0, -2.0], "IP": [50.0, 0.0], "EX": None}
    torch.save(ckpt, tmp_path / "offsets.ckpt")
    folder = export_model(tmp_path / "offsets.ckpt", tmp_path / "export")
    assert json.loads((folder / "config.json").read_text())["level_offsets"] == {
        "ER": [-1.0, -2.0],
        "IP": [50.0, 0.0],
        "EX": None,
    }
    exported = EmpathyPredictor.from_pretrained({"joint": folder}).predict(*zip(*pairs, strict=True))
    assert (exported["IP"].levels == 1).all() and (exported["ER"].levels == plain_pred["ER"].levels).all()


def test_reproduce_table_rescore_evaluates_kept_checkpoints_with_todays_decisions(joint_run, tmp_path):
    import shutil

    from empathy.study import reproduce as script

    cfg, result = joint_run
    source = tmp_path / "sweep"
    (source / "0").mkdir(parents=True)
    for name in ("metrics.json", "resolved_config.yaml"):  # a finished run of a sweep (its checkpoint stays put)
        shutil.copy(Path(cfg.paths.output_dir) / name, source / "0" / name)
    (source / results.POOL_FILE).write_text(json.dumps({"jobs": 1, "cores": 2, "count": 1, "wall_minutes": 1.0}))
    target = tmp_path / "rescored"
    script.rescore(source, target, ["model.level_offsets.IP=[50,0]"])
    before = json.loads((source / "0" / "metrics.json").read_text())
    after = json.loads((target / "0" / "metrics.json").read_text())
    assert (
        after["metrics"]["test/IP/f1_level0"] == 0 and after["metrics"]["test/IP/f1_level2"] == 0
    )  # IP: level 1 everywhere
    for key in ("test/ER/macro_f1", "test/EX/rationale_iou_f1_strict", "dev/IP/macro_f1"):
        assert after["metrics"][key] == pytest.approx(before["metrics"][key], abs=1e-6)
    assert after["rescored"]["from"] == str((source / "0").resolve()) and after["rescored"]["level_offsets"]["IP"] == [
        50,
        0,
    ]
    assert after["fit_minutes"] == before["fit_minutes"]
    config = yaml.safe_load((target / "0" / "resolved_config.yaml").read_text())
    assert config["model"]["level_offsets"]["IP"] == [50, 0] and config["model"]["level_offsets"]["ER"] == [-1.0, -2.0]
    assert json.loads((target / results.POOL_FILE).read_text())["rescored_from"] == str(source)
    table = results.aggregate([target], tmp_path / "out")["markdown"].read_text()
    assert f"evaluated again from `{source}`" in table
    with pytest.raises(FileExistsError, match="exists: rescore into a new --sweep-dir"):
        script.rescore(source, target, [])


# ------------------------------------------------------------------------------------- ensembles
def _perturbed_checkpoint(source: str, target: Path, seed: int) -> Path:
    """The checkpoint with its heads' and attention's weights moved: another model with the same
    seeker encoder (as seeds of one configuration on a pretrained encoder have)."""
    ckpt = torch.load(source, weights_only=True)
    g = torch.Generator().manual_seed(seed)
    for name, tensor in ckpt["state_dict"].items():
        if name.startswith(("net.heads.", "net.attention.")) and tensor.is_floating_point():
            ckpt["state_dict"][name] = tensor + 0.5 * torch.randn(tensor.shape, generator=g)
    torch.save(ckpt, target)
    return target


def test_an_ensemble_averages_its_members_probabilities_in_evaluation_and_prediction(joint_run, joint_data, tmp_path):
    from empathy.models.ensemble import EnsembleNet

    cfg, result = joint_run
    first = result["best_checkpoint"]
    second = str(_perturbed_checkpoint(first, tmp_path / "second.ckpt", 1))

    def evaluate_with(name: str, ckpt: str) -> dict:
        eval_cfg = runner.compose_config(
            "evaluate",
            [f"ckpt_path={ckpt}", "split=dev", "++trainer.enable_progress_bar=false"],
            data_dir=joint_data[0],
            output_dir=tmp_path / name,
        )
        with open_dict(eval_cfg):
            eval_cfg.paths.cache_dir = cfg.paths.cache_dir
        return evaluate(eval_cfg, tmp_path / name)

    single = evaluate_with("single", first)
    twice = evaluate_with("twice", f"[{first},{first}]")  # the mean of one model's probabilities is the model
    for key in ("ER/macro_f1", "IP/rationale_iou_f1_strict", "EX/acc"):
        assert twice[f"dev/{key}"] == pytest.approx(single[f"dev/{key}"], abs=1e-6)
    both = evaluate_with("both", f"[{first},{second}]")
    assert json.loads((tmp_path / "both" / "eval_dev.json").read_text())["checkpoint"] == [first, second]
    assert any(both[f"dev/{m}/macro_f1"] != single[f"dev/{m}/macro_f1"] for m in MECHANISMS)

    # prediction: the CLI takes a list; the probabilities are the members' mean (offsets applied after)
    pairs = [
        ("I lost my job and I feel alone.", "I'm so sorry. That sounds really hard; you are not alone."),
        ("Nobody calls me anymore.", "Have you tried reaching out to them first?"),
    ]
    source = tmp_path / "pairs.csv"
    with source.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seeker_post", "response_post"])
        writer.writerows(pairs)
    output = tmp_path / "scored.csv"
    predict_from_config(
        runner.compose_config(
            "predict",
            [
                f"input={source}",
                f"output={output}",
                f"models.joint=[{first},{second}]",
                "progress=false",
                "precision=32",
            ],
        )
    )
    with output.open(encoding="utf-8", newline="") as f:
        scored = list(csv.DictReader(f))
    members = [EmpathyModule.from_checkpoint(p).eval() for p in (first, second)]
    tokenizer = load_tokenizer(members[0].hparams.encoder)
    with torch.no_grad():
        for row, (seeker, response) in zip(scored, pairs, strict=True):
            s = tokenizer(seeker, truncation=True, max_length=members[0].hparams.max_len, return_tensors="pt")
            r = tokenizer(response, truncation=True, max_length=members[0].hparams.max_len, return_tensors="pt")
            outs = [
                mod.net(r["input_ids"], r["attention_mask"], s["input_ids"], s["attention_mask"]) for mod in members
            ]
            for m in MECHANISMS:
                mean = torch.stack([torch.softmax(o[m].level_logits[0], -1) for o in outs]).mean(0)
                probs = torch.softmax(adjusted(mean.log(), level_offsets(members[0].hparams.level_offsets, m)), -1)
                assert int(row[f"{m}_level"]) == int(probs.argmax())
                for c in range(3):
                    assert float(row[f"{m}_prob{c}"]) == pytest.approx(float(probs[c]), abs=1e-4)
    # members that cannot share a seeker pass, or one member, are refused
    other = EmpathyModule.from_checkpoint(first).net
    with torch.no_grad():
        next(other.seeker_encoder.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="member 1's seeker encoder differs from member 0's"):
        EnsembleNet([members[0].net, other])
    with pytest.raises(ValueError, match="at least 2 members"):
        EnsembleNet([members[0].net])
