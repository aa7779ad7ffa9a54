"""Download the EPITOME Reddit CSVs from the upstream repository into a folder.

    python scripts/fetch_data.py                      # into data/epitome-reddit
    python scripts/fetch_data.py --dest /data/epitome # anywhere; then EMPATHY_DATA_DIR=/data/epitome

The files come from the ``dataset/`` folder of the public GitHub repository
behavioral-data/Empathy-Mental-Health (Sharma et al., EMNLP 2020; see its licence). Each file is
written atomically (temporary file, then rename), so an interrupted download leaves no partial CSV.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

BASE_URL = "https://raw.githubusercontent.com/behavioral-data/Empathy-Mental-Health/master/dataset/"
FILES = (
    "emotional-reactions-reddit.csv",
    "interpretations-reddit.csv",
    "explorations-reddit.csv",
)
UPSTREAM = "https://github.com/behavioral-data/Empathy-Mental-Health (folder dataset/)"


class FetchError(RuntimeError):
    """A download that failed, with what to do instead."""


def fetch(dest: str | Path, *, base_url: str = BASE_URL, timeout: float = 15.0, force: bool = False) -> list[Path]:
    """Download the three CSVs into ``dest``; files already there are kept unless ``force``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in FILES:
        target = dest / name
        if target.is_file() and not force:
            written.append(target)
            continue
        url = base_url.rstrip("/") + "/" + name
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                while block := response.read(1 << 16):
                    out.write(block)
            os.replace(tmp, target)
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            Path(tmp).unlink(missing_ok=True)
            raise FetchError(
                f"could not download {url} ({err}). Without network, copy the three files "
                f"({', '.join(FILES)}) from {UPSTREAM} into {dest.resolve()} by other means, or "
                "point EMPATHY_DATA_DIR (or data.data_dir=...) at a folder that holds them."
            ) from err
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default="data/epitome-reddit", help="folder to write (default: %(default)s)")
    parser.add_argument("--base-url", default=BASE_URL, help="where the files are (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per connection (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="download files that are already there again")
    args = parser.parse_args(argv)
    try:
        paths = fetch(args.dest, base_url=args.base_url, timeout=args.timeout, force=args.force)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
