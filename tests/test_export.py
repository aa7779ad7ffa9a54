"""Export: a self-contained safetensors folder that predicts exactly what the checkpoint does."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from transformers import AutoConfig, AutoModel

from empathy import runner
from empathy.data.synthetic import write_synthetic_epitome
from empathy.export import export
from empathy.models.checkpoint import state_dict_sha256
from empathy.models.export import load_exported
from empathy.models.module import EmpathyModule
from empathy.predict import EmpathyPredictor, export_model, load_model
from empathy.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]
SEEKERS = ["I feel so alone lately.", "Can't sleep again.", "Lost my job today.", "Nobody cares about me."]
RESPONSES = [
    "I'm so sorry. Have you talked to anyone?",
    "That sounds really hard.",
    "Hang in there 😊",
    "I understand how lonely that feels, I went through something similar.",
]


def compose_cfg(name: str, overrides: list[str], data_dir: Path, out: Path) -> DictConfig:
    return runner.compose_config(name, overrides, data_dir=data_dir, output_dir=out)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained_er(tmp_path_factory) -> dict:
    """A tiny ER model trained for one short epoch; its run folder has metrics.json."""
    data_dir = write_synthetic_epitome(tmp_path_factory.mktemp("epitome"), n_rows=80, seed=0)
    out = tmp_path_factory.mktemp("run-ER")
    cfg = compose_cfg(
        "train",
        [
            "encoder=tiny",
            "logger=csv",
            "model=biencoder",
            "mechanism=ER",
            "trainer.max_epochs=1",
            "++trainer.limit_train_batches=4",
            "trainer.precision=32-true",
            "trainer.accelerator=cpu",
            "++trainer.enable_progress_bar=false",
            "data.batch_size=8",
            "model.optimizer.lr=1e-3",
        ],
        data_dir,
        out,
    )
    return train(cfg, out)


def _outputs(predictor: EmpathyPredictor):
    return predictor.predict(SEEKERS, RESPONSES)["ER"]


def _module_checkpoint(path: Path, encoder: dict, mechanism: str = "ER") -> Path:
    """A checkpoint as training writes it (hyper_parameters + state_dict), without training."""
    torch.manual_seed(1)
    module = EmpathyModule(
        encoder=encoder,
        mechanisms=[mechanism],
        net={"attention_heads": 1, "use_attention": True, "freeze_seeker": True, "dropout": 0.1},
        loss={"lambda_EI": 1.0, "lambda_RE": 0.5},
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3},
    )
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


def test_export_folder_is_self_contained_and_predicts_like_the_checkpoint(trained_er, tmp_path):
    ckpt = Path(trained_er["best_checkpoint"])
    out = export_model(ckpt, tmp_path / "models" / "ER")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert {
        "config.json",
        "model.safetensors",
        "seeker.safetensors",
        "encoder/config.json",
        "tokenizer/tokenizer.json",
    } <= set(files)
    assert all(f.endswith((".json", ".safetensors", ".txt")) for f in files), files  # no pickle, no optimizer
    config = json.loads((out / "config.json").read_text())
    assert config["mechanisms"] == ["ER"] and config["max_len"] == 128 and config["rationale_policy"] == "strict"
    assert config["rationale_decoding"] == {"threshold": 0.3, "fill_gaps": 2, "min_span": 1}  # the model's own
    assert config["encoder"]["name"] == "tiny" and config["net"]["use_attention"] is True
    assert config["seeker"]["source"] == "stored"  # random-init tiny encoder: nothing to reference
    run_metrics = json.loads((ckpt.parent.parent / "metrics.json").read_text())
    assert config["metrics"] == run_metrics["metrics"] and config["metrics_checkpoint"] == str(ckpt)
    assert not list(out.parent.glob(".*"))  # no temporary folder left
    umask = os.umask(0)
    os.umask(umask)
    for path in out.rglob("*"):  # the user's umask, not private files
        assert stat.S_IMODE(path.stat().st_mode) == (0o777 if path.is_dir() else 0o666) & ~umask, path

    # Loads from anywhere: no Hydra run folder, no checkpoint.
    moved = tmp_path / "elsewhere"
    out.rename(moved)
    from_ckpt = _outputs(EmpathyPredictor.from_pretrained({"ER": ckpt}, precision="32"))
    from_folder = _outputs(EmpathyPredictor.from_pretrained({"ER": moved}, precision="32"))
    assert np.array_equal(from_ckpt.levels, from_folder.levels)
    assert np.array_equal(from_ckpt.probs, from_folder.probs)
    assert from_ckpt.rationales == from_folder.rationales
    with pytest.raises(ValueError, match="scores ER, but it was given as the model of IP"):
        EmpathyPredictor.from_pretrained({"IP": moved})
    # Evaluation needs the training settings, which an export does not carry.
    with pytest.raises(ValueError, match="exported folder: evaluation needs training checkpoints"):
        EmpathyModule.from_checkpoints([ckpt, moved])


def test_export_refuses_to_overwrite_unless_asked(trained_er, tmp_path):
    ckpt = trained_er["best_checkpoint"]
    out = tmp_path / "ER"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        export_model(ckpt, out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="scores ER, but it was given as the model of IP"):
        export_model(ckpt, tmp_path / "IP", mechanisms=["IP"])
    assert not (tmp_path / "IP").exists()
    export_model(ckpt, out, overwrite=True)
    assert (out / "config.json").exists() and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ER"]


def test_hydra_entry_point(trained_er, tmp_path):
    cfg = compose_cfg(
        "export", [f"ckpt_path={trained_er['best_checkpoint']}", f"out={tmp_path / 'ER'}"], tmp_path, tmp_path
    )
    out = export(cfg)
    assert load_exported(out).mechanisms == ("ER",)
    with pytest.raises(FileExistsError):
        export(cfg)


def test_seeker_is_referenced_when_it_equals_the_pretrained_encoder(tmp_path, tiny_encoder_cfg):
    # A "pretrained" encoder in a local folder, as a hub model would be.
    pretrained = tmp_path / "pretrained"
    kwargs = dict(tiny_encoder_cfg["config"])
    torch.manual_seed(0)
    AutoModel.from_config(
        AutoConfig.for_model(kwargs.pop("model_type"), **kwargs), add_pooling_layer=False
    ).save_pretrained(pretrained)
    encoder = {"name": "tiny-local", "path": str(pretrained), "tokenizer": tiny_encoder_cfg["tokenizer"]}
    ckpt = _module_checkpoint(tmp_path / "model.ckpt", encoder)

    out = export_model(ckpt, tmp_path / "referenced")
    config = json.loads((out / "config.json").read_text())
    assert config["seeker"]["source"] == "pretrained" and config["seeker"]["pretrained_path"] == str(pretrained)
    assert not (out / "seeker.safetensors").exists()
    expected = _outputs(EmpathyPredictor.from_pretrained({"ER": ckpt}, precision="32"))
    got = _outputs(EmpathyPredictor.from_pretrained({"ER": out}, precision="32"))
    assert np.array_equal(expected.probs, got.probs)

    stored = export_model(ckpt, tmp_path / "stored", seeker="store")
    assert (stored / "seeker.safetensors").exists()
    assert json.loads((stored / "config.json").read_text())["seeker"]["source"] == "stored"

    # The referenced weights changed after export: refuse rather than predict with other weights.
    model = AutoModel.from_pretrained(pretrained)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(pretrained)
    with pytest.raises(ValueError, match="not the ones the model was exported with"):
        load_model(out)
    assert np.array_equal(
        _outputs(EmpathyPredictor.from_pretrained({"ER": stored}, precision="32")).probs, expected.probs
    )


def test_a_trained_seeker_is_stored(tmp_path, tiny_encoder_cfg):
    pretrained = tmp_path / "pretrained"
    kwargs = dict(tiny_encoder_cfg["config"])
    AutoModel.from_config(
        AutoConfig.for_model(kwargs.pop("model_type"), **kwargs), add_pooling_layer=False
    ).save_pretrained(pretrained)
    encoder = {"name": "tiny-local", "path": str(pretrained), "tokenizer": tiny_encoder_cfg["tokenizer"]}
    ckpt = _module_checkpoint(tmp_path / "model.ckpt", encoder)
    checkpoint = torch.load(ckpt, weights_only=True)
    key = next(k for k in checkpoint["state_dict"] if k.startswith("net.seeker_encoder."))
    checkpoint["state_dict"][key] = checkpoint["state_dict"][key] + 0.5  # e.g. an unfrozen seeker
    torch.save(checkpoint, ckpt)
    out = export_model(ckpt, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["seeker"]["source"] == "stored"
    assert config["seeker"]["sha256"] == state_dict_sha256(load_model(ckpt).net.seeker_encoder)
    assert config["encoder"]["name"] == "tiny-local"


def _as_earlier_single_model(ckpt: Path, path: Path) -> Path:
    """The checkpoint as a single-mechanism model of an earlier version wrote it: ``mechanism``,
    heads ``level_head.*`` / ``rationale_head.*``, a ``net`` without ``mechanisms``."""
    checkpoint = torch.load(ckpt, weights_only=True)
    hp = dict(checkpoint["hyper_parameters"])
    (mechanism,) = hp.pop("mechanisms")
    hp.update(
        mechanism=mechanism,
        decoding_grid=False,
        class_weights=[1.0, 2.0, 3.0],
        net={k: v for k, v in hp["net"].items() if k != "mechanisms"},
    )
    prefix = f"net.heads.{mechanism}."
    checkpoint["state_dict"] = {
        ("net." + k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in checkpoint["state_dict"].items()
    }
    checkpoint["hyper_parameters"] = hp
    torch.save(checkpoint, path)
    return path


def test_a_single_mechanism_checkpoint_of_an_earlier_version_loads(trained_er, tmp_path):
    ckpt = Path(trained_er["best_checkpoint"])
    old = _as_earlier_single_model(ckpt, tmp_path / "old.ckpt")
    assert any(k.startswith("net.level_head.") for k in torch.load(old, weights_only=True)["state_dict"])
    model = load_model(old)
    assert model.mechanisms == ("ER",) and model.hparams["class_weights"] == {"ER": [1.0, 2.0, 3.0]}
    assert "decoding_grid" not in model.hparams
    expected = _outputs(EmpathyPredictor.from_pretrained({"ER": ckpt}, precision="32"))
    got = _outputs(EmpathyPredictor.from_pretrained({"ER": old}, precision="32"))
    assert np.array_equal(expected.levels, got.levels) and np.array_equal(expected.probs, got.probs)
    assert expected.rationales == got.rationales
    assert EmpathyModule.from_checkpoint(old).mechanisms == ("ER",)
    # and its export loads as today's
    folder = export_model(old, tmp_path / "exported")
    assert np.array_equal(
        _outputs(EmpathyPredictor.from_pretrained({"ER": folder}, precision="32")).probs, expected.probs
    )
