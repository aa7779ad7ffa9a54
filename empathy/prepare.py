"""Prepare the data of a training run: read, validate, split, tokenize, align, cache.

    python -m empathy.prepare                                   # the data of `python -m empathy.train`
    python -m empathy.prepare mechanism=IP encoder=roberta-base data.max_len=64

It builds the data module exactly as training does with the same mechanism, encoder and data
settings (``runner.build_datamodule``), so the split it writes is the one training uses. Writes
the processed datasets into the cache (``data.cache_dir``), copies into the run folder the split
CSV (``sp_id, rp_id, split``: reuse it with ``data.split_file=``), the report of rationale pieces
that lost tokens and the list of labels dropped for a mismatched text, and prints a summary.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from empathy import CONFIG_DIR, runner
from empathy.data.merge import MISMATCHED_CSV
from empathy.data.processing import PreparedData
from empathy.errors import user_errors


def format_summary(summary: dict, outputs: dict[str, Path]) -> str:
    """A readable report of what preparing the data found and where it wrote."""
    lines = []
    for mechanism, part in summary["mechanisms"].items():
        pieces = part["rationale_pieces"]
        lines += [
            f"{mechanism}: {part['csv_path']} (cache {'hit' if part.get('cache_hit') else 'written'})",
            f"  rows read {part['rows_read']}, kept {part['rows_kept']}; identical duplicate rows merged "
            f"{part['duplicate_rows_merged']}; conflicting (sp_id, rp_id) keys {part['conflicting_keys']}, rows "
            f"dropped {part['rows_dropped']}",
            f"  rationale pieces {pieces['total']}: aligned {pieces['aligned']}, unaligned {pieces['unaligned']}; "
            f"beyond max_len={part['max_len']}: partly {pieces['beyond_max_len_partly']}, wholly "
            f"{pieces['beyond_max_len_wholly']}",
        ]
    names = list(summary["mechanisms"])
    lines.append(f"pairs per split (level 0 / 1 / 2 of {', '.join(names)}):")
    for split, values in summary["splits"].items():
        levels = "   ".join(" / ".join(str(values["levels"][m][c]) for c in "012") for m in names)
        lines.append(f"  {split:<6} {values['rows']:>6}   {levels}")
    if summary.get("mismatched_labels"):
        lines.append(f"labels dropped for a text that differs between the files: {summary['mismatched_labels']}")
    lines.append(f"cache: {summary['cache_path']}")
    lines += [f"{name}: {path}" for name, path in outputs.items()]
    return "\n".join(lines)


def run(cfg: DictConfig, output_dir: Path) -> PreparedData:
    datamodule = runner.build_datamodule(cfg)
    datamodule.setup()
    prepared = datamodule.prepared
    output_dir.mkdir(parents=True, exist_ok=True)
    outputs = {}
    for name, src in (
        ("split_csv", prepared.split_csv),
        ("unaligned_report", prepared.unaligned_report),
        ("mismatched_labels", prepared.cache_path / MISMATCHED_CSV),
    ):
        outputs[name] = Path(shutil.copy2(src, output_dir / src.name))
    print(format_summary(prepared.summary, outputs))
    return prepared


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="prepare")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
