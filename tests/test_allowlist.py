"""Nothing loaded from a file builds objects: checkpoints, exports and run folders that name a
class or function are refused before anything runs (empathy.allowlist)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from empathy import allowlist, runner
from empathy.allowlist import UnsafeConfigError
from empathy.data.synthetic import write_synthetic_epitome
from empathy.evaluate import evaluate
from empathy.models.module import EmpathyModule
from empathy.predict import export_model, load_model

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
SCHEDULER = {
    "_target_": "empathy.models.module.linear_schedule",
    "_partial_": True,
    "warmup_ratio": 0.1,
}


def _opener(victim: Path) -> dict:
    return {"_target_": "builtins.open", "_args_": [str(victim), "w"]}


# Each: a change to a real checkpoint's hyper-parameters that names a callable.
TAMPERINGS = {
    "data_config": lambda hp, victim: hp.update(data_config=_opener(victim)),
    "nested data_config": lambda hp, victim: hp["data_config"]["mechanism_files"].update(ER=_opener(victim)),
    "optimizer": lambda hp, victim: hp.update(optimizer={**_opener(victim), "_partial_": True}),
    "scheduler": lambda hp, victim: hp.update(
        scheduler={
            "_target_": "shutil.copyfile",
            "_partial_": True,
            "src": "/etc/hostname",
            "dst": str(victim),
        }
    ),
    "encoder": lambda hp, victim: hp.update(encoder={**hp["encoder"], "config": _opener(victim)}),
    "net": lambda hp, victim: hp["net"].update(extra=_opener(victim)),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_encoder_cfg) -> Path:
    """A joint model's checkpoint as training writes it (hyper_parameters + state_dict)."""
    torch.manual_seed(0)
    module = EmpathyModule(
        encoder=tiny_encoder_cfg,
        net={"attention_heads": 1, "dropout": 0.1},
        mechanisms=["ER", "IP", "EX"],
        loss={"lambda_EI": 1.0, "lambda_RE": 0.5},
        optimizer=OPTIMIZER,
        scheduler=SCHEDULER,
        data_config={
            "max_len": 64,
            "split_scope": "shared",
            "mechanism_files": {"ER": "er.csv", "IP": "ip.csv", "EX": "ex.csv"},
        },
    )
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    torch.save(
        {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(), "epoch": 0},
        path,
    )
    return path


def _tampered(checkpoint: Path, tmp_path: Path, name: str) -> tuple[Path, Path]:
    victim = tmp_path / "created-by-the-checkpoint.txt"
    payload = torch.load(checkpoint, weights_only=True)
    payload["hyper_parameters"] = copy.deepcopy(payload["hyper_parameters"])
    TAMPERINGS[name](payload["hyper_parameters"], victim)
    path = tmp_path / f"tampered-{name.replace(' ', '-')}.ckpt"
    torch.save(payload, path)
    return path, victim


def test_the_untampered_checkpoint_loads(checkpoint):
    assert EmpathyModule.from_checkpoint(str(checkpoint)).mechanisms == ("ER", "IP", "EX")
    assert load_model(checkpoint).mechanisms == ("ER", "IP", "EX")


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_a_checkpoint_that_names_a_callable_is_refused_everywhere(checkpoint, tmp_path, name):
    path, victim = _tampered(checkpoint, tmp_path, name)
    loaders = {
        "module": lambda: EmpathyModule.from_checkpoint(str(path)),
        "predict": lambda: load_model(path),
        "export": lambda: export_model(path, tmp_path / "export"),
    }
    for what, load in loaders.items():
        with pytest.raises(UnsafeConfigError, match=str(path)):
            load()
        assert not victim.exists(), what
    assert not (tmp_path / "export").exists()


def test_evaluate_refuses_the_checkpoint_of_the_issue(checkpoint, tmp_path):
    """The reported case: plain data added to hyper_parameters.data_config reached
    hydra.utils.instantiate through empathy.evaluate, and the file was created."""
    path, victim = _tampered(checkpoint, tmp_path, "data_config")
    data_dir = write_synthetic_epitome(tmp_path / "data", n_rows=30, seed=0)
    cfg = runner.compose_config(
        "evaluate",
        [f"ckpt_path={path}", "split=dev"],
        data_dir=data_dir,
        output_dir=tmp_path / "eval",
    )
    with pytest.raises(UnsafeConfigError, match=r"data_config\._target_: loaded data may not hold Hydra.s _target_"):
        evaluate(cfg, tmp_path / "eval")
    assert not victim.exists()


def test_an_export_that_names_a_callable_is_refused(checkpoint, tmp_path):
    folder = export_model(checkpoint, tmp_path / "export")
    assert load_model(folder).mechanisms == ("ER", "IP", "EX")
    config = json.loads((folder / "config.json").read_text())
    config["net"]["extra"] = _opener(tmp_path / "victim.txt")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeConfigError, match=r"config\.json: net\.extra\._target_: loaded data may not hold"):
        load_model(folder)
    assert not (tmp_path / "victim.txt").exists()


def test_a_run_folder_config_that_names_a_callable_is_refused(tmp_path):
    """floors_for_run reads a run folder's resolved_config.yaml: its data module must be the
    project's, and its values plain."""
    from omegaconf import OmegaConf

    from empathy.study.floors import floors_for_run

    data_dir = write_synthetic_epitome(tmp_path / "data", n_rows=30, seed=0)
    cfg = runner.compose_config("train", ["encoder=tiny"], data_dir=data_dir, output_dir=tmp_path / "run")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for change, message in (
        (
            lambda c: c["data"].update(_target_="builtins.open"),
            "is not one of the project's data modules",
        ),
        (
            lambda c: c["data"].update(split_file=_opener(tmp_path / "victim.txt")),
            "loaded data may not hold",
        ),
    ):
        run = tmp_path / f"run-{message[:6].replace(' ', '')}"
        run.mkdir()
        config = copy.deepcopy(resolved)
        change(config)
        (run / "resolved_config.yaml").write_text(yaml.safe_dump(config))
        with pytest.raises(UnsafeConfigError, match=message):
            floors_for_run(run, mechanism="ER")
    assert not (tmp_path / "victim.txt").exists()


def test_check_plain_accepts_plain_values_and_names_the_key():
    allowlist.check_plain({"a": [1, 2.5, "x", None, True], "b": {"c": (1, 2)}}, "here")
    with pytest.raises(UnsafeConfigError, match=r"here: b\.c\[1\]: _args_|here: b\.c\[1\]\._args_"):
        allowlist.check_plain({"b": {"c": [1, {"_args_": []}]}}, "here")
    with pytest.raises(UnsafeConfigError, match="is not a plain value"):
        allowlist.check_plain({"a": object()}, "here")


def test_only_optimisers_and_schedules_are_built_by_name():
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = allowlist.build_optimizer(OPTIMIZER, params)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 1e-3
    assert isinstance(allowlist.build_scheduler(SCHEDULER, optimizer, 10), torch.optim.lr_scheduler.LambdaLR)
    for bad in ("builtins.open", "os.system", "torch.load", "torch.optim.lr_scheduler.StepLR"):
        with pytest.raises(UnsafeConfigError, match="is not an optimiser"):
            allowlist.build_optimizer({"_target_": bad, "_partial_": True}, params)
        with pytest.raises(UnsafeConfigError, match="is not one of the project.s schedules"):
            allowlist.build_scheduler({"_target_": bad, "_partial_": True}, optimizer, 10)
    with pytest.raises(UnsafeConfigError, match="only _target_ and _partial_: true"):
        allowlist.build_optimizer({**OPTIMIZER, "_recursive_": True}, params)
