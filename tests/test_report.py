"""The HTML rationale viewer: span location, escaping, page structure, the entry point, and
(when a chromium binary is installed) the page's filters as a real browser runs them."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from empathy.predict.report import (
    MECHANISM_COLOURS,
    highlight_response,
    locate_spans,
    render_report,
    split_rationale,
    write_report,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ATTACK = "<script>document.title='pwned'</script><img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"


def scored_table() -> pd.DataFrame:
    def row(ident, seeker, response, levels, rationales, *, author="alice", t=0, error=""):
        out = {"id": ident, "seeker_post": seeker, "response_post": response, "rp_author": author, "created_utc": t}
        for m in ("ER", "IP", "EX"):
            level = levels.get(m)
            out[f"{m}_level"] = level
            for k in range(3):
                out[f"{m}_prob{k}"] = None if level is None else (0.8 if k == level else 0.1)
            out[f"{m}_rationale"] = rationales.get(m, "")
        out["error"] = error
        return out

    return pd.DataFrame(
        [
            row("p1", "I lost my job.", "I'm so sorry. It sounds hard. What happened?",
                {"ER": 2, "IP": 1, "EX": 2}, {"ER": "I'm so sorry", "IP": "It sounds hard", "EX": "What happened?"}),
            row("p2", ATTACK + " nobody cares", "Hugs " + ATTACK + " I care.",
                {"ER": 1, "IP": 0, "EX": 0}, {"ER": "Hugs|I care"}, author="bob", t=1),
            row("p3", "Can't sleep.", "", {}, {}, author="carol", t=2, error="empty response_post"),
            row("p4", "My dog died.", "That must hurt so much. I am sorry.",
                {"ER": 2, "IP": 2, "EX": 0}, {"ER": "hurt so much|I am sorry", "IP": "That must hurt"}, t=3),
        ]
    )


# ---------------------------------------------------------------- spans and highlighting


def test_split_rationale():
    assert split_rationale("so sorry| that is hard |") == ["so sorry", "that is hard"]
    assert split_rationale(None) == [] and split_rationale(float("nan")) == [] and split_rationale("") == []


def test_locate_spans_verbatim_repeated_loose_and_missing():
    response = "so sorry. I am so sorry,   Really SORRY."
    found, missing = locate_spans(response, ["so sorry", "so sorry", "really  sorry", "absent"])
    assert [response[a:b] for a, b in found] == ["so sorry", "so sorry", "Really SORRY"]
    assert found[0][0] < found[1][0]  # a repeated phrase maps to the next occurrence
    assert missing == ["absent"]
    found, _ = locate_spans("I'm here for you", ["I ' m here"])  # tokenizer-decoded spacing
    assert found == [(0, 8)]


def test_highlight_escapes_and_marks_overlaps():
    response = "a <b>bold</b> & more"
    out = highlight_response(response, {"ER": [(2, 13)], "IP": [(9, 20)]})
    assert "<b>" not in out and "&lt;b&gt;" in out and "&amp;" in out
    marks = re.findall(r'<mark class="rationale" data-m="([^"]+)"[^>]*>(.*?)</mark>', out)
    assert [m for m, _ in marks] == ["ER", "ER IP", "IP"]
    assert html.unescape("".join(text for _, text in marks)) == response[2:]
    assert "linear-gradient" in out  # the overlap is striped in both colours
    assert MECHANISM_COLOURS["ER"] in out and MECHANISM_COLOURS["IP"] in out


# ---------------------------------------------------------------- page structure (no browser)


def test_page_is_escaped_self_contained_and_structured():
    page = render_report(scored_table(), title="Scores <1>")
    assert "document.title='pwned'</script>" not in page and "<img" not in page
    assert page.count("<script") == 2  # the page's own data and code
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in page
    assert "<title>Scores &lt;1&gt;</title>" in page
    assert not re.search(r"\b(src|href)\s*=", page.replace("src=x", ""))  # nothing fetched
    assert "default-src 'none'" in page
    articles = re.findall(r"<article [^>]*>", page)
    assert len(articles) == 4
    assert 'data-er="2" data-ip="1" data-ex="2" data-error="0"' in articles[0]
    assert 'data-er="" data-ip="" data-ex="" data-error="1"' in articles[2]
    assert 'data-m="ER IP"' in page  # "hurt so much" is both ER and IP in p4
    assert 'id="count" data-shown="4">Showing 4 of 4 pairs' in page
    assert "Not scored: empty response_post" in page
    assert "rp_author</b> bob" in page  # carried-through columns are shown
    assert "P(2)=0.80" in page  # probabilities in the badge's tooltip


def test_only_present_mechanisms_and_unlocated_spans():
    table = scored_table().drop(columns=[c for c in scored_table().columns if c.startswith(("ER_", "IP_"))])
    table.loc[0, "EX_rationale"] = "What happened?|not in the text"
    page = render_report(table)
    assert 'data-m="EX"' in page and 'class="level" data-m="ER"' not in page
    assert "Rationale spans not found in the response: <q>EX: not in the text</q>" in page


def test_max_rows_and_bad_tables():
    page = render_report(scored_table(), max_rows=2)
    assert page.count("<article ") == 2 and "First 2 of 4 rows." in page
    with pytest.raises(ValueError, match="response_post"):
        render_report(scored_table().drop(columns="response_post"))
    with pytest.raises(ValueError, match="ER_level"):
        render_report(scored_table()[["id", "seeker_post", "response_post"]])


def test_write_report_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "sub" / "out.html"
    assert write_report(scored_table(), path) == path
    first = path.read_text(encoding="utf-8")
    write_report(scored_table(), path, max_rows=1)
    assert path.read_text(encoding="utf-8") != first
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.html"]  # no temporary files left


def test_entry_point(tmp_path):
    source = tmp_path / "scored.csv"
    scored_table().to_csv(source, index=False)
    out = tmp_path / "view.html"
    done = subprocess.run(
        [sys.executable, "-m", "empathy.report", f"input={source}", f"output={out}", "max_rows=3",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {out} (3 of 4 pairs" in done.stdout
    page = out.read_text(encoding="utf-8")
    assert "<title>scored.csv</title>" in page and page.count("<article ") == 3


# ---------------------------------------------------------------- in a real browser

CHROMIUM = next((b for b in ("chromium", "chromium-browser") if shutil.which(b)), None)


def dump_dom(page: Path, suffix: str, tmp_path: Path) -> str:
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", page.as_uri() + suffix],
        capture_output=True, text=True, timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium) for the browser test")
def test_filters_and_highlights_in_chromium(tmp_path):
    page = write_report(scored_table(), tmp_path / "report.html")

    dom = dump_dom(page, "", tmp_path)
    assert "<body>" in dom and "<title>pwned" not in dom  # the posts' markup did not run
    assert re.search(r'id="count" data-shown="4">Showing 4 of 4 pairs<', dom)

    # Preset from the URL: ER level 2 only, unscored rows hidden, IP highlights only.
    dom = dump_dom(page, "#ER=2&unscored=0&highlight=IP", tmp_path)
    assert re.search(r'id="count" data-shown="2">Showing 2 of 4 pairs<', dom)
    articles = re.findall(r"<article ([^>]*)>", dom)
    assert ["hidden" in a for a in articles] == [False, True, True, False]
    marks = re.findall(r'<mark class="rationale( off)?" data-m="([^"]+)"', dom)
    assert ("", "IP") in marks and (" off", "ER") in marks and (" off", "EX") in marks
    assert ("", "ER IP") in marks  # an overlap stays visible while one of its mechanisms is on
    assert "<body>" in dom

    # The query string works too, and filters combine: EX level 0 and a text search.
    dom = dump_dom(page, "?EX=0&q=dog", tmp_path)
    assert re.search(r'data-shown="1">Showing 1 of 4 pairs<', dom)
    assert ["hidden" in a for a in re.findall(r"<article ([^>]*)>", dom)] == [True, True, True, False]
