"""Write the HTML rationale viewer for a scored table.

    python -m empathy.report input=scored.csv output=scored.html
    python -m empathy.report input=scored.parquet max_rows=500 title="EX, dev split"

Open the page in a browser; filters can be preset in the URL: scored.html#ER=2&EX=0,1&highlight=ER
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from empathy import CONFIG_DIR
from empathy.analysis import read_predictions
from empathy.errors import user_errors
from empathy.predict.report import write_report


def run(cfg: DictConfig) -> Path:
    source = Path(to_absolute_path(cfg.input))
    table = read_predictions(source)
    path = write_report(table, to_absolute_path(cfg.output), title=cfg.title or source.name, max_rows=cfg.max_rows)
    shown = len(table) if cfg.max_rows is None else min(len(table), cfg.max_rows)
    print(f"wrote {path} ({shown} of {len(table)} pairs from {source})")
    return path


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="report")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(cfg)


if __name__ == "__main__":
    main()
