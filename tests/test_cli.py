"""What a user sees of the entry points: --help that says what each does, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from empathy import CONFIG_DIR

ENTRY_POINTS = ("train", "evaluate", "predict", "export", "prepare", "report", "analyze", "pretrain")
REQUIRED = {"evaluate": ["ckpt_path=x"], "predict": ["input=a", "output=b"], "export": ["ckpt_path=x", "out=y"],
            "report": ["input=a"], "analyze": ["input=a"]}  # fmt: skip


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_each_entry_point_has_its_own_help_and_job_name(name):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(name, overrides=REQUIRED.get(name, []), return_hydra_config=True)
    header = cfg.hydra.help.header
    assert header.startswith(f"empathy.{name}: ") and f"python -m empathy.{name}" in header  # what, and an example
    assert "Main options:" in header
    assert cfg.hydra.job.name == name  # its log is <name>.log, whatever module runs it
    assert "$APP_CONFIG_GROUPS" not in cfg.hydra.help.template  # not every group of every entry point


def test_help_prints_what_the_entry_point_does_first(tmp_path):
    done = subprocess.run([sys.executable, "-m", "empathy.predict", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("empathy.predict: score a file of (seeker post, response post) pairs")
    assert "models.joint" in done.stdout and "== Config ==" not in done.stdout


def test_a_common_mistake_is_one_line_and_the_traceback_is_behind_a_switch(tmp_path):
    command = [sys.executable, "-m", "empathy.predict", "input=missing.csv", "output=out.csv",
               "models.joint=model", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("EMPATHY_DEBUG", None)
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: input=missing.csv: no such file")
    assert "EMPATHY_DEBUG=1" in lines[0] and "Traceback" not in done.stderr
    debug = subprocess.run(command, cwd=tmp_path, env={**env, "EMPATHY_DEBUG": "1"}, capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr
