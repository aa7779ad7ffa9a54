"""Do responders become more empathic with experience? Levels by n-th response, and the trend.

    python -m empathy.analyze input=predictions.csv responder_column=rp_author time_column=created_utc
    python -m empathy.analyze input=preds.parquet bins=quantile n_bins=4 output_dir=analysis/ overwrite=true

Writes over_time.csv (mechanism, bin, n_responses, n_responders, mean_level, ci_low, ci_high),
over_time.png and summary.json into ``output_dir`` and prints one line per mechanism.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from empathy import CONFIG_DIR
from empathy.analysis import OverTimeResult, analyse_over_time, read_predictions, write_outputs
from empathy.errors import user_errors


def analyze(cfg: DictConfig) -> OverTimeResult:
    source = Path(to_absolute_path(cfg.input))
    output_dir = Path(to_absolute_path(cfg.output_dir))
    table = read_predictions(source)
    mechanisms = cfg.mechanisms
    if mechanisms is not None:
        mechanisms = [mechanisms] if isinstance(mechanisms, str) else list(OmegaConf.to_container(mechanisms))
    bins = cfg.bins if isinstance(cfg.bins, str) else [int(b) for b in cfg.bins]
    result = analyse_over_time(
        table,
        responder_column=cfg.responder_column,
        time_column=cfg.time_column,
        source=str(source),
        mechanisms=mechanisms,
        exclude_responders=list(cfg.exclude_responders or []),
        bins=bins,
        n_bins=cfg.n_bins,
        n_bootstrap=cfg.n_bootstrap,
        n_permutations=cfg.n_permutations,
        ci=cfg.ci,
        alpha=cfg.alpha,
        seed=cfg.seed,
    )
    paths = write_outputs(result, output_dir, overwrite=cfg.overwrite)
    print("\n".join(result.summary["lines"]))
    print("\n".join(f"  {name}: {path}" for name, path in paths.items()))
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="analyze")
def main(cfg: DictConfig) -> None:
    with user_errors():
        analyze(cfg)


if __name__ == "__main__":
    main()
