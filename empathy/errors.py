"""How the entry points report a mistake: one line, not a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

DEBUG_ENV = "EMPATHY_DEBUG"


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors a user can act on (a missing or existing file, a wrong value: ``OSError`` and
    ``ValueError``, which the project raises with the file, row, column or key and what was
    expected) are printed as one line on stderr and the process exits with status 2.
    ``EMPATHY_DEBUG=1`` (or Hydra's ``HYDRA_FULL_ERROR=1``) lets them through with their traceback."""
    try:
        yield
    except (ValueError, OSError) as error:
        if os.environ.get(DEBUG_ENV, "0") not in ("", "0") or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {error}  [{DEBUG_ENV}=1 shows the traceback]", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
