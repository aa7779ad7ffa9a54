"""The `python -m empathy.prepare` entry point and scripts/fetch_data.py."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from empathy.prepare import CONFIG_DIR, run

REPO_ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    (
        f"s{i // 2}",
        f"r{i}",
        f'Seeker {i // 2}, "quoted"\nsecond line',
        f"I am so sorry, friend {i}.",
        str(i % 3),
        "" if i % 3 == 0 else "so sorry",
    )
    for i in range(40)
]


@pytest.fixture
def data_dir(tmp_path, write_csv):
    for name in ("emotional-reactions-reddit.csv", "interpretations-reddit.csv", "explorations-reddit.csv"):
        write_csv(ROWS, name=name)
    return tmp_path


def test_config_composes():
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name="prepare", overrides=["mechanism=IP", "data.max_len=32"])
    assert cfg.task_name == "prepare"
    assert list(cfg.mechanism.mechanisms) == ["IP"] and cfg.encoder.name == "minilm"
    assert cfg.data.max_len == 32 and cfg.data.on_conflict == "drop"


def test_run_writes_outputs_and_prints_summary(data_dir, tmp_path, capsys):
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(
            config_name="prepare",
            overrides=["encoder=tiny", f"data.data_dir={data_dir}", f"data.cache_dir={tmp_path / 'cache'}"],
        )
    out = tmp_path / "run"
    prepared = run(cfg, out)
    printed = capsys.readouterr().out
    assert (out / "split.csv").is_file() and (out / "unaligned_rationales.csv").is_file()
    assert (out / "split.csv").read_bytes() == prepared.split_csv.read_bytes()
    for text in (
        "ER:",
        "IP:",
        "EX:",
        "rows read 40",
        "train",
        "dev",
        "test",
        "aligned 26, unaligned 0",
        "cache written",
        str(out),
    ):
        assert text in printed
    run(cfg, tmp_path / "run2")
    assert "cache hit" in capsys.readouterr().out


@pytest.mark.parametrize("mechanism", ["all", "IP"])
def test_prepare_writes_the_split_that_training_uses(mechanism, data_dir, tmp_path):
    """The split prepare writes (for data.split_file) is the one a training run with the same
    settings copies into its run folder: the shared split, not one per mechanism."""
    from empathy import runner
    from empathy.data.split import read_split_csv

    overrides = [f"mechanism={mechanism}", "encoder=tiny", "data.max_len=32"]
    prepared = run(
        runner.compose_config("prepare", overrides, data_dir=data_dir, output_dir=tmp_path / "p"), tmp_path / "p"
    )
    training = runner.build_datamodule(
        runner.compose_config("train", overrides, data_dir=data_dir, output_dir=tmp_path / "t")
    )
    training.setup()
    assert (tmp_path / "p" / "split.csv").read_bytes() == Path(training.prepared.split_csv).read_bytes()
    assert read_split_csv(tmp_path / "p" / "split.csv") == read_split_csv(prepared.split_csv)
    assert training.split_scope == "shared"


def test_module_runs_from_the_command_line(data_dir, tmp_path):
    env = {
        **os.environ,
        "EMPATHY_DATA_DIR": str(data_dir),
        "EMPATHY_CACHE_DIR": str(tmp_path / "cache"),
        "EMPATHY_LOG_DIR": str(tmp_path / "logs"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "empathy.prepare", "encoder=tiny"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "rows read 40" in result.stdout
    (run_dir,) = (tmp_path / "logs" / "prepare" / "runs").iterdir()
    with (run_dir / "split.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 40


def test_missing_data_fails_clearly(tmp_path):
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name="prepare", overrides=["encoder=tiny", f"data.data_dir={tmp_path / 'none'}"])
    with pytest.raises(FileNotFoundError, match="EMPATHY_DATA_DIR"):
        run(cfg, tmp_path / "run")


def _fetch_module():
    spec = importlib.util.spec_from_file_location("fetch_data", REPO_ROOT / "scripts" / "fetch_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fetch_data_from_a_local_mirror(tmp_path):
    fetch_data = _fetch_module()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in fetch_data.FILES:
        (mirror / name).write_text(f"content of {name}\n", encoding="utf-8")
    dest = tmp_path / "dest"
    assert fetch_data.main(["--dest", str(dest), "--base-url", mirror.as_uri()]) == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted(fetch_data.FILES)  # no temp files left
    assert (dest / fetch_data.FILES[0]).read_text(encoding="utf-8") == f"content of {fetch_data.FILES[0]}\n"


def test_fetch_data_offline_fails_clearly(tmp_path, capsys):
    fetch_data = _fetch_module()
    dest = tmp_path / "dest"
    # Port 9 (discard) on localhost: the connection is refused at once, no network needed.
    code = fetch_data.main(["--dest", str(dest), "--base-url", "http://127.0.0.1:9/dataset", "--timeout", "2"])
    message = capsys.readouterr().err
    assert code == 1
    assert "http://127.0.0.1:9/dataset/emotional-reactions-reddit.csv" in message
    assert "behavioral-data/Empathy-Mental-Health" in message and "EMPATHY_DATA_DIR" in message
    assert list(dest.iterdir()) == []
