"""Do peer supporters become more empathic with experience? (Sharma et al. 2020, Section 6.)

For each mechanism: number each responder's responses in time order (the n-th response),
bin n, and estimate the mean predicted level per bin with a clustered bootstrap (resampling
responders, not responses, since one responder's responses are not independent). The trend is
the within-responder slope of level on log2(n) (change in level per doubling of experience),
tested by permuting the levels within each responder, which keeps who wrote what and breaks
only the order. The plot shows each bin's numbers of responses and responders and the trend
test's result, and tells the mechanisms apart by line style and marker as well as by colour.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from empathy import LEVELS, MECHANISMS
from empathy.io import atomic_output
from empathy.palette import MECHANISM_COLOURS, MECHANISM_LINESTYLES, MECHANISM_MARKERS

DEFAULT_BIN_EDGES = (1, 2, 4, 8, 16)
PREDICTION_SUFFIXES = ("level", "prob0", "prob1", "prob2")
OUTPUT_NAMES = ("over_time.csv", "over_time.png", "summary.json")
BINS_COLUMNS = [
    "mechanism",
    "bin",
    "n_responses",
    "n_responders",
    "mean_level",
    "ci_low",
    "ci_high",
]


class AnalysisError(ValueError):
    """A predictions table that the analysis cannot use, with the file, column and row."""


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """A scored table (CSV, JSONL or Parquet, by suffix) with the predictions as numbers.

    Text columns keep their text ("NA" stays "NA"); only empty prediction cells become missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() == ".gz" else path.suffix.lower()
    if suffix in (".csv", ".csv.gz"):
        numeric = {f"{m}_{s}": [""] for m in MECHANISMS for s in PREDICTION_SUFFIXES}
        return pd.read_csv(path, keep_default_na=False, na_values=numeric)
    if suffix in (".jsonl", ".jsonl.gz", ".ndjson"):
        return pd.read_json(path, lines=True, dtype=False)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    raise AnalysisError(f"{path}: unknown table format {suffix!r} (expected .csv, .jsonl or .parquet)")


def present_mechanisms(table: pd.DataFrame) -> list[str]:
    """The mechanisms (in ER, IP, EX order) whose ``M_level`` column the table has."""
    return [m for m in MECHANISMS if f"{m}_level" in table.columns]


def require_columns(table: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise AnalysisError(
            f"{source}: no column {', '.join(map(repr, missing))} (the file has: {', '.join(map(str, table.columns))})"
        )


def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | series.astype(str).str.strip().eq("")


def numeric_levels(table: pd.DataFrame, mechanism: str, source: str) -> pd.Series:
    """``M_level`` as floats; empty cells (unscored rows) are NaN, anything else not 0/1/2 an error."""
    column = f"{mechanism}_level"
    raw = table[column]
    blank = _blank(raw)
    if "error" in table.columns:
        blank |= ~_blank(table["error"])
    values = pd.to_numeric(raw.where(~blank), errors="coerce")
    bad = ~blank & ~values.isin(LEVELS)
    if bad.any():
        position = int(np.flatnonzero(bad.to_numpy())[0])
        raise AnalysisError(
            f"{source}: column {column!r}, data row {position + 1} (header not counted): "
            f"{raw.iloc[position]!r} is not a level; expected 0, 1 or 2 (or empty for an unscored row); "
            f"{int(bad.sum())} such row(s) in all"
        )
    return values.astype(float)


def _sortable_time(series: pd.Series) -> pd.Series:
    """Numbers as numbers, else timestamps when every value parses, else the text itself."""
    numbers = pd.to_numeric(series, errors="coerce")
    if numbers.notna().all():
        return numbers
    try:
        return pd.to_datetime(series, utc=True, format="mixed")
    except (ValueError, TypeError):
        return series.astype(str)


def response_numbers(
    table: pd.DataFrame,
    responder_column: str,
    time_column: str,
    *,
    exclude_responders: Sequence[str] = (),
) -> pd.Series:
    """The n-th response (1, 2, ...) of each row's responder, by ``time_column``.

    Ties in time keep file order. Rows with no responder, no time, or an excluded responder
    (such as Reddit's ``[deleted]``, which is many people) get NaN.
    """
    usable = ~_blank(table[responder_column]) & ~_blank(table[time_column])
    usable &= ~table[responder_column].astype(str).isin(list(exclude_responders))
    rows = table.loc[usable, [responder_column, time_column]].copy()
    rows["_time"] = _sortable_time(rows[time_column])
    rows["_who"] = rows[responder_column].astype(str)
    rows["_pos"] = np.arange(len(rows))
    rows = rows.sort_values(["_who", "_time", "_pos"], kind="mergesort")
    rows["_n"] = rows.groupby("_who", sort=False).cumcount() + 1
    return rows["_n"].reindex(table.index).astype(float)


def bin_edges(n: np.ndarray, bins: Sequence[int] | str = DEFAULT_BIN_EDGES, n_bins: int = 5) -> list[int]:
    """Left edges of the bins of n: the given ones, or ``"quantile"`` edges of the observed n."""
    if isinstance(bins, str):
        if bins != "quantile":
            raise AnalysisError(f"bins: expected a list of left edges or 'quantile', got {bins!r}")
        if n_bins < 1:
            raise AnalysisError(f"n_bins: expected at least 1, got {n_bins}")
        qs = np.quantile(np.asarray(n, dtype=float), np.linspace(0, 1, n_bins + 1)[:-1])
        edges = sorted({1, *(int(math.ceil(q)) for q in qs)})
    else:
        edges = [int(b) for b in bins]
        if not edges or edges[0] != 1 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise AnalysisError(f"bins: expected increasing left edges starting at 1, got {list(bins)}")
    return edges


def bin_labels(edges: Sequence[int]) -> list[str]:
    """``[1, 2, 4, 16]`` -> ``["1", "2-3", "4-15", "16+"]``."""
    labels = []
    for i, left in enumerate(edges):
        if i == len(edges) - 1:
            labels.append(f"{left}+")
        else:
            right = edges[i + 1] - 1
            labels.append(str(left) if right == left else f"{left}-{right}")
    return labels


def assign_bins(n: np.ndarray, edges: Sequence[int]) -> np.ndarray:
    """The bin index of each n (n >= 1)."""
    return np.searchsorted(np.asarray(edges), np.asarray(n), side="right") - 1


def _bootstrap_weights(rng: np.random.Generator, n_clusters: int, n_resamples: int, chunk_cells: int = 4_000_000):
    """Yield (chunk, n_clusters) arrays of how often each cluster is drawn in a resample."""
    chunk = max(1, chunk_cells // max(n_clusters, 1))
    done = 0
    uniform = np.full(n_clusters, 1.0 / n_clusters)
    while done < n_resamples:
        size = min(chunk, n_resamples - done)
        yield rng.multinomial(n_clusters, uniform, size=size).astype(float)
        done += size


def binned_means(
    level: np.ndarray,
    responder: np.ndarray,
    bin_index: np.ndarray,
    n_bins: int,
    *,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Per bin: responses, responders, mean level and a clustered-bootstrap percentile CI."""
    clusters, cluster = np.unique(responder, return_inverse=True)
    sums = np.zeros((len(clusters), n_bins))
    counts = np.zeros((len(clusters), n_bins))
    np.add.at(sums, (cluster, bin_index), level)
    np.add.at(counts, (cluster, bin_index), 1.0)
    total_counts = counts.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums.sum(axis=0) / total_counts
    draws = []
    for weights in _bootstrap_weights(rng, len(clusters), n_bootstrap):
        with np.errstate(invalid="ignore", divide="ignore"):
            draws.append((weights @ sums) / (weights @ counts))
    draws = np.concatenate(draws) if draws else np.full((0, n_bins), np.nan)
    alpha = (1 - ci) / 2
    low = np.full(n_bins, np.nan)
    high = np.full(n_bins, np.nan)
    for b in range(n_bins):
        column = draws[:, b][~np.isnan(draws[:, b])]
        if len(column):
            low[b], high[b] = np.quantile(column, [alpha, 1 - alpha])
    return pd.DataFrame(
        {
            "n_responses": total_counts.astype(int),
            "n_responders": (counts > 0).sum(axis=0).astype(int),
            "mean_level": means,
            "ci_low": low,
            "ci_high": high,
        }
    )


@dataclass(frozen=True)
class Trend:
    slope: float  # change in level per doubling of n, within responders
    slope_ci_low: float
    slope_ci_high: float
    p_value: float
    n_responses: int
    n_responders: int
    # Responders with two or more responses (the only ones that inform the slope).
    n_responders_repeat: int
    n_permutations: int = 0


def within_trend(
    level: np.ndarray,
    n: np.ndarray,
    responder: np.ndarray,
    *,
    n_permutations: int = 1000,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    rng: np.random.Generator,
) -> Trend:
    """Within-responder (fixed-effects) slope of level on log2(n), its clustered-bootstrap CI and
    a two-sided permutation p-value (levels shuffled within each responder)."""
    level = np.asarray(level, dtype=float)
    x = np.log2(np.asarray(n, dtype=float))
    clusters, cluster = np.unique(responder, return_inverse=True)
    n_clusters = len(clusters)
    size = np.bincount(cluster, minlength=n_clusters).astype(float)
    x_centred = x - (np.bincount(cluster, weights=x, minlength=n_clusters) / size)[cluster]
    sxx = np.bincount(cluster, weights=x_centred**2, minlength=n_clusters)
    sxy = np.bincount(cluster, weights=x_centred * level, minlength=n_clusters)
    repeat = int((size >= 2).sum())
    nan = float("nan")
    if sxx.sum() <= 0:
        return Trend(nan, nan, nan, nan, len(level), n_clusters, repeat, n_permutations)
    slope = sxy.sum() / sxx.sum()

    # Permutation: within a responder, sum(x_centred * level) is all that changes.
    order = np.argsort(cluster, kind="stable")
    grouped_cluster, grouped_x, grouped_level = cluster[order], x_centred[order], level[order]
    denominator = sxx.sum()
    extreme = 0
    for _ in range(n_permutations):
        shuffled = np.lexsort((rng.random(len(level)), grouped_cluster))
        permuted = float(grouped_x @ grouped_level[shuffled]) / denominator
        extreme += abs(permuted) >= abs(slope) - 1e-12
    p_value = (1 + extreme) / (1 + n_permutations)

    draws = []
    for weights in _bootstrap_weights(rng, n_clusters, n_bootstrap):
        with np.errstate(invalid="ignore", divide="ignore"):
            draws.append((weights @ sxy) / (weights @ sxx))
    draws = np.concatenate(draws) if draws else np.array([])
    draws = draws[~np.isnan(draws)]
    alpha = (1 - ci) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha]) if len(draws) else (nan, nan)
    return Trend(
        float(slope),
        float(low),
        float(high),
        float(p_value),
        len(level),
        n_clusters,
        repeat,
        n_permutations,
    )


def _p_at_floor(p_value: float, n_permutations: int) -> bool:
    """Whether a permutation p-value is the smallest possible, 1 / (n_permutations + 1)."""
    return bool(n_permutations) and p_value * (n_permutations + 1) < 1.5


def format_p_value(p_value: float, n_permutations: int) -> str:
    """``p = 0.0123``, or ``p <= 0.001`` when no shuffle was as extreme as the data."""
    if _p_at_floor(p_value, n_permutations):
        return f"p <= {p_value:.2g}"
    return f"p = {p_value:.3g}"


def describe_trend(mechanism: str, trend: Trend, *, alpha: float = 0.05, ci: float = 0.95) -> tuple[str, str]:
    """(direction, one plain-language line): direction is increases / decreases /
    no significant change / not enough data."""
    counts = (
        f"{trend.n_responses} responses by {trend.n_responders} responders, "
        f"{trend.n_responders_repeat} with two or more"
    )
    if math.isnan(trend.p_value):
        return (
            "not enough data",
            f"{mechanism}: not enough data for a trend (no responder has two or more responses; {counts})",
        )
    direction = "no significant change"
    if trend.p_value < alpha:
        direction = "increases" if trend.slope > 0 else "decreases"
    p_text = format_p_value(trend.p_value, trend.n_permutations)
    if _p_at_floor(trend.p_value, trend.n_permutations):
        p_text += f" (no shuffle of {trend.n_permutations} as extreme)"
    verb = {"increases": "level increases", "decreases": "level decreases"}.get(
        direction, "no significant change in level"
    )
    return direction, (
        f"{mechanism}: {verb} with a responder's experience "
        f"({trend.slope:+.3f} level per doubling of responses, {ci:.0%} CI [{trend.slope_ci_low:+.3f}, "
        f"{trend.slope_ci_high:+.3f}], permutation {p_text}; {counts})"
    )


@dataclass
class OverTimeResult:
    bins: pd.DataFrame  # BINS_COLUMNS
    summary: dict


def analyse_over_time(
    table: pd.DataFrame,
    *,
    responder_column: str,
    time_column: str,
    source: str = "predictions",
    mechanisms: Sequence[str] | None = None,
    exclude_responders: Sequence[str] = ("[deleted]",),
    bins: Sequence[int] | str = DEFAULT_BIN_EDGES,
    n_bins: int = 5,
    n_bootstrap: int = 1000,
    n_permutations: int = 1000,
    ci: float = 0.95,
    alpha: float = 0.05,
    seed: int = 0,
) -> OverTimeResult:
    """Mean level per bin of the n-th response, with CIs, and the within-responder trend."""
    require_columns(table, [responder_column, time_column], source)
    found = present_mechanisms(table)
    if mechanisms is None:
        mechanisms = found
    else:
        require_columns(table, [f"{m}_level" for m in mechanisms], source)
    if not mechanisms:
        raise AnalysisError(
            f"{source}: no mechanism columns; expected one of {', '.join(f'{m}_level' for m in MECHANISMS)}"
        )
    if not 0 < ci < 1 or not 0 < alpha < 1:
        raise AnalysisError(f"ci and alpha must lie strictly between 0 and 1, got ci={ci}, alpha={alpha}")
    n = response_numbers(table, responder_column, time_column, exclude_responders=exclude_responders)
    ordered = n.notna()
    if not ordered.any():
        raise AnalysisError(f"{source}: no row has both a {responder_column!r} and a {time_column!r} value")
    edges = bin_edges(n[ordered].to_numpy(), bins, n_bins)
    labels = bin_labels(edges)
    rng = np.random.default_rng(seed)
    frames, per_mechanism, lines = [], {}, []
    for mechanism in mechanisms:
        level = numeric_levels(table, mechanism, source)
        use = ordered & level.notna()
        responder = table.loc[use, responder_column].astype(str).to_numpy()
        n_used = n[use].to_numpy()
        level_used = level[use].to_numpy()
        if use.any():
            frame = binned_means(
                level_used,
                responder,
                assign_bins(n_used, edges),
                len(edges),
                n_bootstrap=n_bootstrap,
                ci=ci,
                rng=rng,
            )
        else:
            frame = pd.DataFrame(
                {
                    "n_responses": 0,
                    "n_responders": 0,
                    "mean_level": np.nan,
                    "ci_low": np.nan,
                    "ci_high": np.nan,
                },
                index=range(len(edges)),
            )
        frame.insert(0, "bin", labels)
        frame.insert(0, "mechanism", mechanism)
        frames.append(frame)
        trend = within_trend(
            level_used,
            n_used,
            responder,
            n_permutations=n_permutations,
            n_bootstrap=n_bootstrap,
            ci=ci,
            rng=rng,
        )
        direction, line = describe_trend(mechanism, trend, alpha=alpha, ci=ci)
        lines.append(line)
        per_mechanism[mechanism] = {
            "direction": direction,
            "summary": line,
            "slope_per_doubling": _number(trend.slope),
            "slope_ci_low": _number(trend.slope_ci_low),
            "slope_ci_high": _number(trend.slope_ci_high),
            "p_value": _number(trend.p_value),
            "n_responses": trend.n_responses,
            "n_responders": trend.n_responders,
            "n_responders_repeat": trend.n_responders_repeat,
            "rows_unscored": int((ordered & level.isna()).sum()),
        }
    summary = {
        "source": source,
        "responder_column": responder_column,
        "time_column": time_column,
        "rows": len(table),
        "rows_without_order": int((~ordered).sum()),
        "excluded_responders": list(exclude_responders),
        "bins": labels,
        "bin_left_edges": edges,
        "trend": "within-responder slope of level on log2(n); two-sided permutation test within responders",
        "n_bootstrap": n_bootstrap,
        "n_permutations": n_permutations,
        "ci": ci,
        "alpha": alpha,
        "seed": seed,
        "mechanisms": per_mechanism,
        "lines": lines,
    }
    return OverTimeResult(pd.concat(frames, ignore_index=True)[BINS_COLUMNS], summary)


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def bin_count_labels(bins: pd.DataFrame) -> list[str]:
    """Tick labels: each bin's label, then its n (responses) and r (responders); one line a
    mechanism where the mechanisms' counts differ, as they can with unscored rows."""
    labels = []
    for label, rows in bins.groupby("bin", sort=False):
        counts = [(r.mechanism, int(r.n_responses), int(r.n_responders)) for r in rows.itertuples()]
        if len({(n, k) for _, n, k in counts}) == 1:
            _, n, k = counts[0]
            labels.append(f"{label}\nn={n}\nr={k}")
        else:
            labels.append(label + "".join(f"\n{m} n={n}, r={k}" for m, n, k in counts))
    return labels


def trend_caption(summary: Mapping) -> str:
    """The trend test's name and, per mechanism, its slope, CI and p-value (from ``summary``)."""
    lines = [f"Trend test: {summary['trend']} ({summary['n_permutations']} shuffles)."]
    for mechanism, found in summary["mechanisms"].items():
        if found["p_value"] is None or found["slope_per_doubling"] is None:
            lines.append(f"{mechanism}: not enough data for a trend.")
            continue
        lines.append(
            f"{mechanism}: {found['slope_per_doubling']:+.3f} level per doubling of n, "
            f"{summary['ci']:.0%} CI [{found['slope_ci_low']:+.3f}, {found['slope_ci_high']:+.3f}], "
            f"{format_p_value(found['p_value'], summary['n_permutations'])}: {found['direction']} "
            f"({found['n_responses']} responses, {found['n_responders']} responders)."
        )
    return "\n".join(textwrap.fill(line, 135, subsequent_indent="    ") for line in lines)


def plot_over_time(
    bins: pd.DataFrame,
    *,
    ci: float = 0.95,
    title: str = "Mean predicted level by experience",
    summary: Mapping | None = None,
):
    """One line per mechanism with its CI band, over the bins of the n-th response, each bin's
    n (responses) and r (responders) under its label and, given the analysis's ``summary``, the
    trend test's results in a box under the plot. Mechanisms differ in colour (colour-blind safe
    palette), line style and marker."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(7.6, 5.0), dpi=120)
    FigureCanvasAgg(fig)  # a renderer to measure the caption with
    ax = fig.subplots()
    for mechanism, rows in bins.groupby("mechanism", sort=False):
        x = np.arange(len(rows))
        colour = MECHANISM_COLOURS.get(mechanism)
        ax.plot(
            x,
            rows["mean_level"],
            color=colour,
            label=mechanism,
            linestyle=MECHANISM_LINESTYLES.get(mechanism, "-"),
            marker=MECHANISM_MARKERS.get(mechanism, "o"),
            linewidth=1.8,
            markersize=6,
        )
        ax.fill_between(x, rows["ci_low"], rows["ci_high"], color=colour, alpha=0.15, linewidth=0)
    labels = bin_count_labels(bins)
    ax.set_xticks(np.arange(len(labels)), labels, fontsize=8)
    ax.set_xlabel("n-th response of the responder (under each bin: n responses, r responders)")
    ax.set_ylabel("mean predicted level (0-2)")
    ax.set_ylim(0, 2)
    ax.set_title(title)
    ax.text(
        0.01,
        0.01,
        f"bands: {ci:.0%} CI, responders resampled",
        transform=ax.transAxes,
        fontsize=8,
        color="#555",
    )
    ax.grid(alpha=0.3)
    ax.legend(title="mechanism", loc="best")
    bottom = 0.0
    if summary is not None:
        # The figure grows by the caption's height; the caption sits under the axes.
        box = {"boxstyle": "round,pad=0.4", "facecolor": "#f4f4f4", "edgecolor": "#bbb"}
        text = fig.text(0.012, 0, trend_caption(summary), fontsize=7, va="bottom", ha="left", bbox=box)
        caption_inches = text.get_window_extent(fig.canvas.get_renderer()).height / fig.dpi + 0.2
        fig.set_figheight(fig.get_figheight() + caption_inches)
        text.set_y(0.08 / fig.get_figheight())
        bottom = caption_inches / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    with atomic_output(path) as tmp:
        write(tmp)


def write_outputs(result: OverTimeResult, output_dir: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Path]:
    """Write over_time.csv, over_time.png and summary.json atomically; refuse to replace existing
    ones unless ``overwrite``."""
    import json

    output_dir = Path(output_dir)
    paths = {name: output_dir / name for name in OUTPUT_NAMES}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"not overwriting {', '.join(existing)}: pass overwrite=true or choose another output_dir"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    _atomic(paths["over_time.csv"], lambda p: result.bins.to_csv(p, index=False, float_format="%.6g"))
    figure = plot_over_time(result.bins, ci=result.summary["ci"], summary=result.summary)
    _atomic(paths["over_time.png"], lambda p: figure.savefig(p, format="png"))

    def dump(p: Path) -> None:
        p.write_text(json.dumps(result.summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    _atomic(paths["summary.json"], dump)
    return paths
