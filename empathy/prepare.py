"""Prepare one mechanism's data: read, validate, split, tokenize, align, cache.

    EMPATHY_DATA_DIR=/path/to/epitome-reddit python -m empathy.prepare mechanism=IP

Writes the processed datasets into the cache (``data.cache_dir``), copies the split CSV and the
report of rationale pieces that lost tokens into the Hydra run folder, and prints a summary.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from empathy import CONFIG_DIR
from empathy.data.processing import PreparedData, prepare_mechanism


def format_summary(summary: dict, outputs: dict[str, Path]) -> str:
    """A readable report of what preparing one mechanism found and where it wrote."""
    pieces = summary["rationale_pieces"]
    lines = [
        f"mechanism {summary['mechanism']}: {summary['csv_path']}",
        f"  rows read {summary['rows_read']}, kept {summary['rows_kept']}; identical duplicate rows "
        f"merged {summary['duplicate_rows_merged']}; conflicting (sp_id, rp_id) keys "
        f"{summary['conflicting_keys']}, rows dropped {summary['rows_dropped']}",
        "  split    rows  level 0 / 1 / 2",
    ]
    for name, split in summary["splits"].items():
        levels = " / ".join(str(split["levels"][lv]) for lv in sorted(split["levels"]))
        lines.append(f"  {name:<6} {split['rows']:>6}  {levels}")
    lines += [
        f"  rationale pieces {pieces['total']}: aligned {pieces['aligned']}, unaligned "
        f"{pieces['unaligned']}; beyond max_len={summary['max_len']}: partly "
        f"{pieces['beyond_max_len_partly']}, wholly {pieces['beyond_max_len_wholly']}",
        f"  cache {'hit' if summary['cache_hit'] else 'written'}: {summary['cache_path']}",
    ]
    lines += [f"  {name}: {path}" for name, path in outputs.items()]
    return "\n".join(lines)


def run(cfg: DictConfig, output_dir: Path) -> PreparedData:
    data = cfg.data
    prepared = prepare_mechanism(
        data_dir=to_absolute_path(data.data_dir),
        mechanism=cfg.mechanism.name,
        mechanism_file=cfg.mechanism.file,
        encoder_cfg=cfg.encoder,
        max_len=data.max_len,
        on_conflict=data.on_conflict,
        unescape_html=data.unescape_html,
        split_fractions=tuple(data.split_fractions),
        split_seed=data.split_seed,
        split_file=to_absolute_path(data.split_file) if data.split_file else None,
        cache_dir=to_absolute_path(data.cache_dir),
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    outputs = {}
    for name, src in (("split_csv", prepared.split_csv), ("unaligned_report", prepared.unaligned_report)):
        outputs[name] = Path(shutil.copy2(src, output_dir / src.name))
    print(format_summary(prepared.summary, outputs))
    return prepared


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="prepare")
def main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
