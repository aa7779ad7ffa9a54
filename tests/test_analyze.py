"""Over-time analysis: response numbering by time, bins, clustered bootstrap, the within-responder
trend test, errors, the plot (mechanisms told apart without colour, counts and the trend test on
it), outputs, and the entry point end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from empathy.analysis import over_time
from empathy.analysis.over_time import (
    BINS_COLUMNS,
    AnalysisError,
    analyse_over_time,
    assign_bins,
    bin_count_labels,
    bin_edges,
    bin_labels,
    binned_means,
    format_p_value,
    numeric_levels,
    plot_over_time,
    read_predictions,
    response_numbers,
    trend_caption,
    write_outputs,
)
from empathy.palette import MECHANISM_COLOURS

REPO_ROOT = Path(__file__).resolve().parents[1]


def synthetic(trend: float, *, n_responders: int = 120, seed: int = 0) -> pd.DataFrame:
    """Responders with 1-30 responses each, a per-responder offset (clustering), and a level that
    moves by ``trend`` per doubling of the responder's experience; rows in shuffled file order.
    With ``trend=0`` the true mean level is 1 at every n."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_responders):
        k = int(rng.integers(1, 31))
        offset = rng.choice([-1, 0, 1]) if trend == 0 else rng.normal(0, 0.4)
        start = rng.integers(0, 10**6)
        for i in range(k):
            if trend == 0:
                # Responder-specific level distributions (means 0.7, 1, 1.3; 1 on average).
                probs = {-1: [0.5, 0.3, 0.2], 0: [0.2, 0.6, 0.2], 1: [0.2, 0.3, 0.5]}[offset]
                level = int(rng.choice(3, p=probs))
            else:
                latent = 0.6 + offset + trend * np.log2(i + 1) + rng.normal(0, 0.6)
                level = int(np.clip(np.round(latent), 0, 2))
            rows.append({"rp_author": f"user{r}", "created_utc": int(start + 100 * i), "ER_level": level})
    return pd.DataFrame(rows).sample(frac=1, random_state=seed).reset_index(drop=True)


def test_response_numbers_follow_time_not_file_order():
    table = pd.DataFrame(
        {
            "who": ["a", "b", "a", "a", "b", "[deleted]", "c"],
            "t": [30, 5, 10, 20, 1, 3, None],
        }
    )
    n = response_numbers(table, "who", "t", exclude_responders=["[deleted]"])
    assert n.tolist()[:5] == [3, 2, 1, 2, 1]
    assert np.isnan(n[5]) and np.isnan(n[6])  # excluded responder; no time
    iso = pd.DataFrame({"who": ["a", "a", "a"], "t": ["2020-03-01T10:00:00Z", "2019-12-31 23:00:00", "2020-01-15"]})
    assert response_numbers(iso, "who", "t").tolist() == [3, 1, 2]
    ties = pd.DataFrame({"who": ["a", "a"], "t": [7, 7]})
    assert response_numbers(ties, "who", "t").tolist() == [1, 2]  # ties keep file order


def test_trend_follows_time_order():
    # Levels rise over time but the file lists each responder's responses newest first.
    rows = []
    for r in range(40):
        for i in reversed(range(8)):
            rows.append({"rp_author": f"u{r}", "created_utc": i, "ER_level": min(2, i // 3)})
    result = analyse_over_time(
        pd.DataFrame(rows),
        responder_column="rp_author",
        time_column="created_utc",
        n_bootstrap=100,
        n_permutations=200,
    )
    assert result.summary["mechanisms"]["ER"]["direction"] == "increases"


def test_bins():
    assert bin_labels([1, 2, 4, 8, 16]) == ["1", "2-3", "4-7", "8-15", "16+"]
    assert assign_bins(np.array([1, 2, 3, 4, 15, 16, 99]), [1, 2, 4, 8, 16]).tolist() == [
        0,
        1,
        1,
        2,
        3,
        4,
        4,
    ]
    n = np.concatenate([np.arange(1, 101), np.ones(100)])
    edges = bin_edges(n, "quantile", 4)
    assert edges[0] == 1 and edges == sorted(set(edges)) and len(edges) <= 4
    with pytest.raises(AnalysisError, match="starting at 1"):
        bin_edges(n, [2, 4])
    with pytest.raises(AnalysisError, match="quantile"):
        bin_edges(n, "deciles")


def test_increasing_trend_is_detected():
    result = analyse_over_time(synthetic(0.25), responder_column="rp_author", time_column="created_utc", seed=1)
    er = result.summary["mechanisms"]["ER"]
    assert er["direction"] == "increases" and er["p_value"] < 0.01
    assert er["slope_ci_low"] > 0
    assert "ER: level increases" in er["summary"]
    means = result.bins["mean_level"].to_numpy()
    assert means[-1] > means[0] + 0.3


def test_no_trend_is_not_significant_and_ci_covers_true_mean():
    table = synthetic(0.0, seed=3)
    result = analyse_over_time(table, responder_column="rp_author", time_column="created_utc", seed=2)
    er = result.summary["mechanisms"]["ER"]
    assert er["direction"] == "no significant change" and er["p_value"] >= 0.05
    assert er["slope_ci_low"] < 0 < er["slope_ci_high"]
    bins = result.bins
    assert list(bins.columns) == BINS_COLUMNS and bins["bin"].tolist() == [
        "1",
        "2-3",
        "4-7",
        "8-15",
        "16+",
    ]
    assert ((bins["ci_low"] <= 1.0) & (1.0 <= bins["ci_high"])).all(), bins
    assert bins["n_responses"].sum() == len(table)
    assert bins.loc[0, "n_responders"] == table["rp_author"].nunique()  # everyone has a first response


def test_bootstrap_resamples_responders_not_rows():
    # Two kinds of responders, always 0 or always 2: rows are far from independent.
    level = np.repeat([0.0, 2.0] * 10, 20)
    responder = np.repeat(np.arange(20), 20)
    bins = np.zeros(len(level), dtype=int)
    rng = np.random.default_rng(0)
    clustered = binned_means(level, responder, bins, 1, n_bootstrap=500, rng=rng)
    naive = binned_means(level, np.arange(len(level)), bins, 1, n_bootstrap=500, rng=rng)
    width = lambda frame: float(frame["ci_high"][0] - frame["ci_low"][0])  # noqa: E731
    assert width(clustered) > 3 * width(naive)
    assert clustered["n_responders"][0] == 20 and clustered["mean_level"][0] == 1.0


def test_seeded_results_repeat():
    table = synthetic(0.1, n_responders=40, seed=5)
    kwargs = dict(
        responder_column="rp_author",
        time_column="created_utc",
        n_bootstrap=200,
        n_permutations=200,
        seed=7,
    )
    a, b = analyse_over_time(table, **kwargs), analyse_over_time(table, **kwargs)
    pd.testing.assert_frame_equal(a.bins, b.bins)
    assert a.summary == b.summary


def test_errors_name_file_column_and_row():
    table = pd.DataFrame({"rp_author": ["a", "b"], "created_utc": [1, 2], "ER_level": [1, 2]})
    with pytest.raises(AnalysisError, match=r"preds\.csv: no column 'author'.*rp_author"):
        analyse_over_time(table, responder_column="author", time_column="created_utc", source="preds.csv")
    bad = table.assign(ER_level=["1", "high"])
    with pytest.raises(
        AnalysisError,
        match=r"preds\.csv: column 'ER_level', data row 2.*'high'.*expected 0, 1 or 2",
    ):
        numeric_levels(bad, "ER", "preds.csv")
    with pytest.raises(AnalysisError, match="'7'"):
        numeric_levels(table.assign(ER_level=["7", "1"]), "ER", "preds.csv")
    with pytest.raises(AnalysisError, match="no mechanism columns"):
        analyse_over_time(table.drop(columns="ER_level"), responder_column="rp_author", time_column="created_utc")


def test_unscored_rows_are_skipped_but_still_count_as_responses(tmp_path):
    path = tmp_path / "preds.csv"
    path.write_text(
        "rp_author,created_utc,seeker_post,ER_level,error\na,1,NA,1,\na,2,x,,model failed\na,3,y,2,\n",
        encoding="utf-8",
    )
    table = read_predictions(path)
    assert table["seeker_post"][0] == "NA"  # text stays text
    assert numeric_levels(table, "ER", str(path)).isna().tolist() == [False, True, False]
    result = analyse_over_time(
        table,
        responder_column="rp_author",
        time_column="created_utc",
        n_bootstrap=50,
        n_permutations=50,
    )
    assert result.bins["n_responses"].tolist() == [1, 1, 0, 0, 0]  # the 3rd response is in bin 2-3
    assert result.summary["mechanisms"]["ER"]["rows_unscored"] == 1


def three_mechanisms(n_responders: int = 40, seed: int = 4) -> pd.DataFrame:
    table = synthetic(0.2, n_responders=n_responders, seed=seed)
    rng = np.random.default_rng(seed)
    table["IP_level"] = rng.integers(0, 3, len(table))
    table["EX_level"] = rng.integers(0, 3, len(table)).astype(float)
    return table


def quick_analysis(table: pd.DataFrame):
    return analyse_over_time(
        table,
        responder_column="rp_author",
        time_column="created_utc",
        n_bootstrap=50,
        n_permutations=50,
    )


def test_plot_tells_mechanisms_apart_without_colour():
    result = quick_analysis(three_mechanisms())
    fig = plot_over_time(result.bins, summary=result.summary)
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if line.get_label() in ("ER", "IP", "EX")]
    assert [line.get_label() for line in lines] == ["ER", "IP", "EX"]
    assert [to_hex(line.get_color()) for line in lines] == [MECHANISM_COLOURS[m].lower() for m in ("ER", "IP", "EX")]
    assert len({line.get_linestyle() for line in lines}) == 3  # solid, dashed, dotted
    assert len({line.get_marker() for line in lines}) == 3
    legend = [(h.get_linestyle(), h.get_marker()) for h in ax.get_legend().legend_handles]
    assert legend == [(line.get_linestyle(), line.get_marker()) for line in lines]


def test_plot_shows_counts_per_bin_and_the_trend_test():
    table = three_mechanisms()
    result = quick_analysis(table)
    fig = plot_over_time(result.bins, summary=result.summary)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    er = result.bins[result.bins["mechanism"] == "ER"]
    assert ticks == [
        f"{b}\nn={n}\nr={r}" for b, n, r in zip(er["bin"], er["n_responses"], er["n_responders"], strict=True)
    ]
    caption = " ".join(" ".join(t.get_text() for t in fig.texts).split())
    assert "Trend test: within-responder slope of level on log2(n); two-sided permutation test" in caption
    assert "(50 shuffles)" in caption
    for m, found in result.summary["mechanisms"].items():
        assert f"{m}: {found['slope_per_doubling']:+.3f} level per doubling of n" in caption
        assert format_p_value(found["p_value"], 50) in caption and found["direction"] in caption
    # Where the mechanisms' counts differ (unscored rows), each gets its own line.
    table.loc[table.index[:5], "EX_level"] = np.nan
    labels = bin_count_labels(quick_analysis(table).bins)
    assert any("\nER n=" in label and "\nEX n=" in label for label in labels)
    # A mechanism without a trend says so; p-values at the permutation floor are bounds.
    summary = dict(result.summary, mechanisms={"ER": dict(result.summary["mechanisms"]["ER"], p_value=None)})
    assert "ER: not enough data for a trend." in trend_caption(summary)
    assert format_p_value(1 / 51, 50) == "p <= 0.02" and format_p_value(0.25, 50) == "p = 0.25"


def test_written_plot_carries_the_trend_test(tmp_path, monkeypatch):
    drawn = []

    def recording(bins, **kwargs):
        drawn.append(plot_over_time(bins, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(over_time, "plot_over_time", recording)
    result = quick_analysis(synthetic(0.0, n_responders=20, seed=1))
    write_outputs(result, tmp_path / "out")
    assert "Trend test:" in drawn[0].texts[-1].get_text()


def test_write_outputs_refuses_to_overwrite(tmp_path):
    table = synthetic(0.0, n_responders=20, seed=1)
    result = analyse_over_time(
        table,
        responder_column="rp_author",
        time_column="created_utc",
        n_bootstrap=50,
        n_permutations=50,
    )
    paths = write_outputs(result, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "over_time.csv",
        "over_time.png",
        "summary.json",
    ]
    assert paths["over_time.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError, match="overwrite=true"):
        write_outputs(result, tmp_path / "out")
    write_outputs(result, tmp_path / "out", overwrite=True)


def test_entry_point_end_to_end(tmp_path):
    table = synthetic(0.3, n_responders=60, seed=2)
    table["IP_level"] = np.random.default_rng(0).integers(0, 3, len(table))
    source = tmp_path / "predictions.csv"
    table.to_csv(source, index=False)
    out = tmp_path / "analysis"
    command = [
        sys.executable,
        "-m",
        "empathy.analyze",
        f"input={source}",
        "responder_column=rp_author",
        "time_column=created_utc",
        f"output_dir={out}",
        "n_bootstrap=200",
        "n_permutations=200",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ER: level increases" in done.stdout and "IP: " in done.stdout
    bins = pd.read_csv(out / "over_time.csv")
    assert list(bins.columns) == BINS_COLUMNS and set(bins["mechanism"]) == {"ER", "IP"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mechanisms"]["ER"]["direction"] == "increases" and summary["n_bootstrap"] == 200
    assert (out / "over_time.png").stat().st_size > 1000

    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert again.returncode != 0 and "overwrite=true" in again.stderr
    missing = subprocess.run(
        command[:4] + ["responder_column=author"] + command[5:],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert missing.returncode != 0 and "no column 'author'" in missing.stderr and str(source) in missing.stderr
