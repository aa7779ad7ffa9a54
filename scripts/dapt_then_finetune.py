"""Domain-adaptive pre-training, then fine-tuning with the pre-trained encoder (two entry points).

    python scripts/dapt_then_finetune.py                                     # corpus=epitome, MiniLM, ER
    python scripts/dapt_then_finetune.py corpus=epitome trainer.max_steps=2000 -- seed=3
    python scripts/dapt_then_finetune.py --dry-run encoder=roberta-base -- -m seed=1,2,3

Overrides before ``--`` go to ``python -m empathy.pretrain``, those after it to
``python -m empathy.train experiment=dapt_then_finetune encoder=local encoder.path=<pretrain run>/encoder``.
``data.*`` and ``paths.*`` overrides given before ``--`` are passed to both (the excluded dev/test
texts are those of the split that training uses). The pre-training run folder is chosen here
(``--run-dir``, else ``<paths.log_dir or EMPATHY_LOG_DIR or outputs>/pretrain/runs/<time>-dapt``)
so that its encoder folder is known before training starts; pre-training is one run (no ``-m``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def split_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(pretrain overrides, train overrides): before and after ``--``; ``data.*`` and ``paths.*``
    go to both."""
    args = list(args)
    if "--" in args:
        cut = args.index("--")
        pretrain, train = args[:cut], args[cut + 1 :]
    else:
        pretrain, train = args, []
    shared = [a for a in pretrain if a.lstrip("+~").startswith(("data.", "paths."))]
    return pretrain, [*shared, *train]


# Hydra's command-line options that take a value (the others, e.g. -m, stand alone).
VALUE_FLAGS = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--info",
    "-i",
    "--experimental-rerun",
}


def hydra_flags_first(args: Sequence[str]) -> list[str]:
    """Hydra's options (``-m``, ``--cfg job``, ...) before the ``key=value`` overrides: its parser
    takes the overrides as one list, which an option in the middle would cut in two."""
    flags, overrides, args = [], [], list(args)
    while args:
        arg = args.pop(0)
        if arg.startswith("-"):  # overrides never start with "-" (~key, +key, key=value)
            flags.append(arg)
            if arg in VALUE_FLAGS and args and not args[0].startswith("-") and "=" not in args[0]:
                flags.append(args.pop(0))
        else:
            overrides.append(arg)
    return [*flags, *overrides]


def commands(args: Sequence[str], run_dir: Path, python: str = sys.executable) -> list[list[str]]:
    pretrain, train = split_overrides(args)
    encoder = run_dir / "encoder"
    return [
        [python, "-m", "empathy.pretrain", *hydra_flags_first(pretrain), f"hydra.run.dir={run_dir}"],
        [
            python,
            "-m",
            "empathy.train",
            *hydra_flags_first(["experiment=dapt_then_finetune", "encoder=local", f"encoder.path={encoder}", *train]),
        ],
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print the two commands, run nothing")
    parser.add_argument("--run-dir", help="the pre-training run folder (default: <log_dir>/pretrain/runs/<time>)")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    known, before = parser.parse_known_args(argv[:cut])  # options of this script come before --
    rest = [*before, *argv[cut:]]
    log_dir = os.environ.get("EMPATHY_LOG_DIR", "outputs")
    for override in before:
        if override.startswith("paths.log_dir="):
            log_dir = override.split("=", 1)[1]
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S") + "-dapt"
    run_dir = Path(known.run_dir or Path(log_dir) / "pretrain" / "runs" / stamp).resolve()
    for command in commands(rest, run_dir):
        print("+", shlex.join(command), flush=True)
        if known.dry_run:
            continue
        code = subprocess.call(command)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
