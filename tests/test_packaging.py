"""How the project is packaged and kept: the configs ship with the package, the core never
imports the study, and tracked files hold no machine paths nor the history of how they were made."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "empathy"
# What the before-stop check of this workplace also looks for: a folder of one machine.
MACHINE_PATH = re.compile(r"(^|[^A-Za-z0-9_.])/(work|home|root)/[A-Za-z]")
HISTORY = re.compile(r"\bsessions?\b", re.IGNORECASE)


def tracked_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO_ROOT / name for name in names.decode().split("\0") if name and (REPO_ROOT / name).is_file()]


def test_pyproject_lists_every_package_and_config_folder():
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {
        "empathy." + ".".join(p.parent.relative_to(PACKAGE).parts) if p.parent != PACKAGE else "empathy"
        for p in PACKAGE.rglob("__init__.py")
    }
    config_folders = {
        "empathy.conf",
        *(
            "empathy.conf." + ".".join(d.relative_to(REPO_ROOT / "conf").parts)
            for d in (REPO_ROOT / "conf").rglob("*")
            if d.is_dir()
        ),
    }
    assert set(setuptools["packages"]) == packages | config_folders
    assert setuptools["package-dir"] == {"empathy.conf": "conf"}


@pytest.mark.slow  # builds and installs a wheel: about 20 s
def test_a_plain_install_carries_the_configs(tmp_path):
    """``pip install .`` (no checkout beside the package) composes every entry point's config."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(REPO_ROOT), "--no-deps", "--no-build-isolation", "-w", str(wheels)], check=True)
    (wheel,) = wheels.glob("*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    code = (
        "import empathy, pathlib; from empathy import runner\n"
        "assert pathlib.Path(empathy.CONFIG_DIR) == pathlib.Path(empathy.__file__).parent / 'conf', "
        "empathy.CONFIG_DIR\n"
        "for name in ('train', 'prepare', 'predict', 'evaluate', 'export', 'report', 'analyze', 'pretrain'):\n"
        "    runner.compose_config(name, {'evaluate': ['ckpt_path=x'], 'export': ['ckpt_path=x', 'out=y'],\n"
        "        'predict': ['input=a', 'output=b'], 'report': ['input=a'], 'analyze': ['input=a']}.get(name, []))\n"
        "from empathy.study import ablations; assert ablations.LEVERS\n"
        "print(empathy.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(target / "empathy" / "__init__.py")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_core_imports_nothing_from_the_study():
    core = [p for p in PACKAGE.rglob("*.py") if "study" not in p.relative_to(PACKAGE).parts]
    offenders = {
        str(p.relative_to(REPO_ROOT)): sorted(n for n in _imports(p) if n.startswith("empathy.study")) for p in core
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    # the study is reached from configs only (conf/grid/), which name it by _target_
    assert "empathy.study.grids.GridCallback" in (REPO_ROOT / "conf" / "grid" / "decoding.yaml").read_text()


def test_data_imports_nothing_from_models():
    offenders = {
        str(p.relative_to(REPO_ROOT)): sorted(n for n in _imports(p) if n.startswith("empathy.models"))
        for p in (PACKAGE / "data").glob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_tracked_file_holds_a_machine_path_or_the_history_of_its_making():
    paths, history = [], []
    for path in tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        name = str(path.relative_to(REPO_ROOT))
        for number, line in enumerate(text.splitlines(), start=1):
            if MACHINE_PATH.search(line):
                paths.append(f"{name}:{number}: {line.strip()[:100]}")
            if HISTORY.search(line) and 'scope="session"' not in line and "scope='session'" not in line:
                history.append(f"{name}:{number}: {line.strip()[:100]}")
    assert paths == [], "absolute machine paths (name folders relative to the project root)"
    assert history == [], "the history of how the project was built belongs in no tracked file"
