"""The HTML rationale viewer: span location, highlights and level-0 spans, the palette, escaping,
page structure, the entry point, and (when a chromium binary is installed) the page's search,
filters, highlights and incremental rendering as a real browser runs them."""

from __future__ import annotations

import html
import importlib.util
import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from empathy.palette import MECHANISM_COLOURS, MECHANISM_TINTS, OKABE_ITO, tint
from empathy.predict.report import (
    CSS,
    JS,
    RENDER_BATCH,
    SEARCH_DEBOUNCE_MS,
    highlight_response,
    locate_spans,
    mechanism_css,
    render_report,
    search_text,
    split_rationale,
    write_report,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ATTACK = "<script>document.title='pwned'</script><img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"


def scored_table() -> pd.DataFrame:
    def row(ident, seeker, response, levels, rationales, *, author="alice", t=0, error=""):
        out = {
            "id": ident,
            "seeker_post": seeker,
            "response_post": response,
            "rp_author": author,
            "created_utc": t,
        }
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
            row(
                "p1",
                "I lost my job.",
                "I'm so sorry. It sounds hard. What happened?",
                {"ER": 2, "IP": 1, "EX": 2},
                {"ER": "I'm so sorry", "IP": "It sounds hard", "EX": "What happened?"},
            ),
            row(
                "p2",
                ATTACK + " nobody cares",
                "Hugs " + ATTACK + " I care.",
                {"ER": 1, "IP": 0, "EX": 0},
                {"ER": "Hugs|I care"},
                author="bob",
                t=1,
            ),
            row("p3", "Can't sleep.", "", {}, {}, author="carol", t=2, error="empty response_post"),
            row(
                "p4",
                "My dog died.",
                "That must hurt so much. I am sorry.",
                {"ER": 2, "IP": 2, "EX": 0},
                {"ER": "hurt so much|I am sorry", "IP": "That must hurt"},
                t=3,
            ),
        ]
    )


# ---------------------------------------------------------------- helpers


def page_data(page: str) -> dict:
    """The JSON the page carries: mechanisms, rendering settings and one entry a pair."""
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert found, "no report-data element"
    return json.loads(found.group(1))


def page_rows(page: str) -> list[list]:
    return page_data(page)["rows"]


def articles(page: str) -> list[str]:
    return [row[0] for row in page_rows(page)]


def with_level0_spans() -> pd.DataFrame:
    """The fixture as an older prediction file: spans at predicted level 0 (IP and EX)."""
    table = scored_table()
    table.loc[1, "IP_rationale"] = "I care"  # IP level 0; also an ER span (level 1)
    table.loc[1, "EX_rationale"] = "onerror"  # EX level 0, alone
    return table


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


def test_highlight_escapes_marks_overlaps_and_tags_mechanisms():
    response = "a <b>bold</b> & more"
    out = highlight_response(response, {"ER": [(2, 13)], "IP": [(9, 20)]})
    assert "<b>" not in out and "&lt;b&gt;" in out and "&amp;" in out
    marks = re.findall(r'<mark class="hl" data-m="([^"]+)" title="([^"]+)">(.*?)</mark>', out)
    assert [m for m, _, _ in marks] == ["ER", "ER IP", "IP"]
    assert marks[1][1] == "ER rationale; IP rationale"  # the tooltip names the mechanisms
    assert html.unescape("".join(text for _, _, text in marks)) == response[2:]
    # Each mechanism's letters follow the end of its run of text (the page shows them as a
    # superscript), so a highlight never relies on its colour alone.
    assert re.findall(r'<span class="tag" data-m="(\w+)"></span>', out) == ["ER", "IP"]
    assert out.index('data-m="ER"></span>') < out.index("more")
    # Overlaps are striped in both mechanisms' colours by the page's CSS.
    css = mechanism_css()
    assert re.search(
        r'mark\.hl\[data-m="ER IP"\] \{ background: linear-gradient\(.*var\(--hl-ER\).*var\(--hl-IP\)',
        css,
    )


def test_spans_at_level_zero_are_marked_not_evidence():
    page = render_report(with_level0_spans())
    p1, p2, _, p4 = articles(page)
    assert "l0" not in p4
    # Evidence (levels 1 and 2) is highlighted as usual ...
    assert '<mark class="hl" data-m="ER" title="ER rationale">' in p1 and 'class="l0' not in p1
    # ... an IP span at level 0 that is also ER evidence keeps ER's highlight, with IP's mark ...
    assert re.search(
        r'<mark class="hl l0" data-m="ER" data-z="IP" '
        r'title="ER rationale; IP span, not counted as evidence">I care</mark>',
        p2,
    )
    assert '<span class="tag l0" data-m="IP"></span>' in p2
    assert '<div class="l0-note">IP, EX: spans at level 0 (not counted as evidence)</div>' in p2
    # ... and a span at level 0 alone is no highlight at all, only the level-0 mark.
    assert '<mark class="l0" data-z="EX" title="EX span, not counted as evidence">onerror</mark>' in p2
    # The page explains highlights and level-0 spans, and offers to hide them.
    legend = re.search(r'<details class="legend" open>(.*?)</details>', page, re.S).group(1)
    assert "evidence" in legend and "predicted level of 1 or 2" in legend
    assert "spans at level 0 (not counted as evidence)" in legend
    assert '<input type="checkbox" id="show-level0" checked>' in page
    css = CSS + mechanism_css()
    assert "mark.l0 { outline: 1.5px dashed" in css and "#pairs.hide-l0 mark.l0 { outline: none; }" in css
    # New prediction files (no spans at level 0): no marks, notes or toggle.
    page = render_report(scored_table())
    assert not any('class="l0' in a or "l0-note" in a for a in articles(page))
    assert 'id="show-level0" checked hidden' in page
    # Spans with no predicted level are not evidence either.
    table = scored_table()
    table.loc[0, "ER_level"] = None
    assert "ER: spans without a predicted level (not counted as evidence)" in articles(render_report(table))[0]


# ---------------------------------------------------------------- colours

# Machado, Oliveira and Fernandes (2009) simulation matrices at full severity, on linear RGB.
CVD = {
    "normal": np.eye(3),
    "protanopia": np.array(
        [
            [0.152286, 1.052583, -0.204868],
            [0.114503, 0.786281, 0.099216],
            [-0.003882, -0.048116, 1.051998],
        ]
    ),
    "deuteranopia": np.array(
        [
            [0.367322, 0.860646, -0.227968],
            [0.280085, 0.672501, 0.047413],
            [-0.011820, 0.042940, 0.968881],
        ]
    ),
    "tritanopia": np.array(
        [
            [1.255528, -0.076749, -0.178779],
            [-0.078411, 0.930809, 0.147602],
            [0.004733, 0.691367, 0.303900],
        ]
    ),
}


def _linear_rgb(colour: str) -> np.ndarray:
    c = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _lab(linear: np.ndarray) -> np.ndarray:
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ np.clip(
        linear, 0, 1
    )
    t = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def smallest_difference(colours: dict[str, str], vision: str) -> float:
    """The smallest CIELAB difference between two of ``colours`` as ``vision`` sees them."""
    labs = [_lab(CVD[vision] @ _linear_rgb(c)) for c in colours.values()]
    return min(float(np.linalg.norm(a - b)) for a, b in itertools.combinations(labs, 2))


def test_palette_is_colour_blind_safe_and_readable():
    assert set(MECHANISM_COLOURS.values()) <= set(OKABE_ITO.values())
    # ER red against EX green, as the plot had them, is one colour to a deuteranope.
    assert smallest_difference({"ER": "#d62728", "IP": "#1f77b4", "EX": "#2ca02c"}, "deuteranopia") < 10
    for vision in ("normal", "protanopia", "deuteranopia"):
        assert smallest_difference(MECHANISM_COLOURS, vision) > 30, vision
        assert smallest_difference(MECHANISM_TINTS, vision) > 20, vision
    assert smallest_difference(MECHANISM_COLOURS, "tritanopia") > 15
    assert smallest_difference(MECHANISM_TINTS, "tritanopia") > 10
    for colour in MECHANISM_TINTS.values():  # black text on a highlight: WCAG AAA contrast
        luminance = float(np.array([0.2126, 0.7152, 0.0722]) @ _linear_rgb(colour))
        assert (luminance + 0.05) / 0.05 >= 7, colour
    assert tint("#D55E00", 1) == "#d55e00" and tint("#D55E00", 0) == "#ffffff"


def test_badges_and_controls_name_their_mechanism():
    page = render_report(scored_table())
    p1 = articles(page)[0]
    badges = re.findall(r'<span class="badge m-(\w+) level-(\w+)" title="([^"]*)">([^<]*)</span>', p1)
    assert [(m, level, text) for m, level, _, text in badges] == [
        ("ER", "2", "ER 2"),
        ("IP", "1", "IP 1"),
        ("EX", "2", "EX 2"),
    ]
    assert badges[0][2] == "Emotional reactions: level 2 (strong); P(0)=0.10 P(1)=0.10 P(2)=0.80"
    for m in ("ER", "IP", "EX"):
        assert f'<span class="swatch m-{m}">{m}</span>' in page  # the highlight toggle's swatch
        assert f"--c-{m}: {MECHANISM_COLOURS[m]}; --t-{m}: {MECHANISM_TINTS[m]};" in page


# ---------------------------------------------------------------- page structure (no browser)


def test_page_is_escaped_self_contained_and_structured():
    page = render_report(scored_table(), title="Scores <1>")
    assert "document.title='pwned'</script>" not in page and "<img" not in page
    assert page.count("<script") == 2  # the page's own data and code
    assert "<title>Scores &lt;1&gt;</title>" in page
    assert not re.search(r"\b(src|href)\s*=", page.replace("src=x", ""))  # nothing fetched
    assert "default-src 'none'" in page
    data = page_data(page)
    assert data["mechanisms"] == ["ER", "IP", "EX"]
    rows = data["rows"]
    assert len(rows) == 4 and "<article" not in page  # pairs reach the DOM only from the JSON
    assert [row[2:] for row in rows] == [
        [[2, 1, 2], 0],
        [[1, 0, 0], 0],
        [[None, None, None], 1],
        [[2, 2, 0], 0],
    ]
    html_of = [row[0] for row in rows]
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in html_of[1]
    assert "<img" not in "".join(html_of) and "<script" not in "".join(html_of)
    assert html_of[0].startswith('<article class="pair" data-er="2" data-ip="1" data-ex="2" data-error="0">')
    assert 'data-m="ER IP"' in html_of[3]  # "hurt" is both ER and IP in p4
    assert 'id="count" aria-live="polite" data-shown="4">Showing 4 of 4 pairs' in page
    assert "Not scored: empty response_post" in html_of[2]
    assert "rp_author</b> bob" in html_of[1]  # carried-through columns are shown
    assert "P(2)=0.80" in html_of[0]  # probabilities in the badge's tooltip
    assert render_report(scored_table(), title="Scores <1>") == page  # deterministic


def test_page_data_cannot_end_its_script_element():
    table = scored_table()
    table.loc[0, "seeker_post"] = "x</script><!--<script>alert(1)</script>-->"
    table.loc[0, "rp_author"] = "</SCRIPT >"
    page = render_report(table)
    element = re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in element  # every < of the data is \u003c
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert page_rows(page)[0][1].startswith("p1\nx</script><!--<script>alert(1)</script>-->")


def test_search_text_is_the_posts_not_badges_or_labels():
    """The search box looks in the id, the posts and the carried-through values only: typing ER
    must not match every pair through its ER badge."""
    page = render_report(scored_table())
    texts = [row[1] for row in page_rows(page)]
    assert texts[0] == "p1\nI lost my job.\nI'm so sorry. It sounds hard. What happened?\nalice\n0"
    assert ["er" in t.lower() for t in texts] == [
        False,
        True,
        False,
        False,
    ]  # only p2's posts say "er"
    for word in ("seeker", "response", "p(", "level", "rp_author", "not scored", "rationale"):
        assert not any(word in t.lower() for t in texts), word
    assert search_text({"id": None, "seeker_post": " a\n\tb ", "response_post": "c  d"}, []) == "a b\nc d"
    data = page_data(page)
    assert 150 <= data["debounce_ms"] <= 250 and data["batch"] == RENDER_BATCH
    assert "normalise(search.value)" in JS and "setTimeout(update, DEBOUNCE_MS)" in JS


def test_only_present_mechanisms_and_unlocated_spans():
    table = scored_table().drop(columns=[c for c in scored_table().columns if c.startswith(("ER_", "IP_"))])
    table.loc[0, "EX_rationale"] = "What happened?|not in the text"
    page = render_report(table)
    assert 'data-m="EX"' in page and 'class="level" data-m="ER"' not in page
    assert page_rows(page)[0][2] == [2]
    assert "Rationale spans not found in the response: <q>EX: not in the text</q>" in articles(page)[0]


def test_max_rows_and_bad_tables():
    page = render_report(scored_table(), max_rows=2)
    assert len(page_rows(page)) == 2 and "First 2 of 4 rows." in page
    assert "No rows." in render_report(scored_table(), max_rows=0)
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
        [
            sys.executable,
            "-m",
            "empathy.report",
            f"input={source}",
            f"output={out}",
            "max_rows=3",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {out} (3 of 4 pairs" in done.stdout
    page = out.read_text(encoding="utf-8")
    assert "<title>scored.csv</title>" in page and len(page_rows(page)) == 3


# ---------------------------------------------------------------- in a real browser

CHROMIUM = next((b for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary on PATH (apt-get install chromium) for the browser tests",
)

# In-page helpers for the browser tests' scripts.
PRELUDE = """
const $ = s => document.querySelector(s);
const sleep = ms => new Promise(r => setTimeout(r, ms));
const frame = () => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
const shown = () => Number($('#count').dataset.shown);
const inDom = () => document.querySelectorAll('#pairs article').length;
const type = text => { const s = $('#search'); s.value = text; s.dispatchEvent(new Event('input', {bubbles: true})); };
const settle = () => sleep(SETTLE_MS).then(frame);
const style = (el, pseudo) => getComputedStyle(el, pseudo || null);
""".replace("SETTLE_MS", str(SEARCH_DEBOUNCE_MS + 150))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium over a DevTools pipe (the client of scripts/bench_report.py)."""
    spec = importlib.util.spec_from_file_location("bench_report", REPO_ROOT / "scripts" / "bench_report.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    driver = bench.DevToolsPipe(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.close()


def in_page(browser, url: str, script: str):
    """Load ``url`` afresh and run ``script`` (the body of an async function) in it."""
    browser.open("about:blank")
    browser.open(url)
    return browser.evaluate(f"(async () => {{ {PRELUDE}\n{script} }})()")


@needs_chromium
def test_search_is_debounced_and_matches_posts_in_chromium(browser, tmp_path):
    page = write_report(scored_table(), tmp_path / "report.html")
    found = in_page(
        browser,
        page.as_uri(),
        """
      const out = {initial: shown(), inDom: inDom(),
                   pwned: document.title === 'pwned' || document.body.hasAttribute('data-pwned')};
      const seen = [];
      const watch = new MutationObserver(() => seen.push($('#count').textContent));
      watch.observe($('#count'), {childList: true, characterData: true, subtree: true});
      for (const text of ['s', 'so', 'sor', 'sorr', 'sorry']) type(text);  // five quick keystrokes
      out.whileTyping = shown();
      await settle();
      watch.disconnect();
      Object.assign(out, {after: shown(), seen: seen, hash: location.hash, queries: {}});
      for (const q of ['ER', 'seeker', 'Response', 'P(2)', 'rp_author', 'level', 'Not scored', 'bob', '  DOG ', 'p3']) {
        type(q);
        await settle();
        out.queries[q] = shown();
      }
      return out;
    """,
    )
    assert found["initial"] == 4 and found["inDom"] == 4 and not found["pwned"]
    assert found["whileTyping"] == 4  # nothing filtered while the keys come
    assert found["after"] == 2 and found["seen"] == ["Showing 2 of 4 pairs"]  # one filter after the pause
    assert found["hash"] == "#q=sorry"
    assert found["queries"] == {
        "ER": 1,
        "seeker": 0,
        "Response": 0,
        "P(2)": 0,
        "rp_author": 0,
        "level": 0,
        "Not scored": 0,
        "bob": 1,
        "  DOG ": 1,
        "p3": 1,
    }


@needs_chromium
def test_highlights_level0_spans_and_presets_in_chromium(browser, tmp_path):
    page = write_report(with_level0_spans(), tmp_path / "report.html")
    found = in_page(
        browser,
        page.as_uri(),
        """
      const l0 = $('#pairs mark.l0[data-z="IP"]'), alone = $('#pairs mark.l0[data-z="EX"]');
      const er = $('#pairs mark.hl[data-m="ER"]'), tag = $('#pairs .tag[data-m="ER"]');
      const out = {l0: style(l0).outlineStyle, alone: style(alone).backgroundImage, er: style(er).backgroundColor,
                   tag: style(tag, '::after').content, legendMark: style($('.legend mark.l0')).outlineStyle};
      $('#show-level0').click();
      await frame();
      Object.assign(out, {l0Hidden: style(l0).outlineStyle, aloneHidden: style(alone).backgroundImage});
      $('input.highlight[value="ER"]').click();
      await frame();
      Object.assign(out, {erOff: style(er).backgroundColor, tagOff: style(tag).display, hash: location.hash,
                          shown: shown()});
      return out;
    """,
    )
    assert found["l0"] == "dashed" and found["legendMark"] == "dashed"
    assert "repeating-linear-gradient" in found["alone"]  # hatched
    assert found["er"] == "rgb(232, 166, 115)" and found["tag"] != "none"
    assert found["l0Hidden"] == "none" and found["aloneHidden"] == "none"
    assert found["erOff"] == "rgba(0, 0, 0, 0)" and found["tagOff"] == "none"
    assert found["hash"] == "#highlight=IP,EX&level0=0" and found["shown"] == 4  # highlights filter nothing

    # Presets from the URL: ER level 2 only, unscored rows hidden, IP highlights only.
    found = in_page(
        browser,
        page.as_uri() + "#ER=2&unscored=0&highlight=IP&level0=0",
        """
      return {shown: shown(), ids: [...document.querySelectorAll('#pairs .pair-id')].map(e => e.textContent),
              classes: $('#pairs').className, level0: $('#show-level0').checked};
    """,
    )
    assert found == {
        "shown": 2,
        "ids": ["p1", "p4"],
        "classes": "off-ER off-EX hide-l0",
        "level0": False,
    }
    # The query string works too, and filters combine: EX level 0 and a text search.
    found = in_page(browser, page.as_uri() + "?EX=0&q=dog", "return [shown(), $('#search').value];")
    assert found == [1, "dog"]


@needs_chromium
def test_large_page_renders_incrementally_and_filters_return_to_top_in_chromium(browser, tmp_path):
    table = pd.concat([scored_table()] * 150, ignore_index=True)
    table["id"] = [f"r{i}" for i in range(len(table))]
    page = write_report(table, tmp_path / "report.html")
    found = in_page(
        browser,
        page.as_uri(),
        """
      const out = {shown: shown(), inDom: inDom()};
      const deep = async () => {
        for (let i = 0; i < 8; i++) { window.scrollTo(0, document.body.scrollHeight); await frame(); await sleep(30); }
        return window.scrollY;
      };
      out.deep = await deep();
      out.inDomDeep = inDom();
      out.resultsTop = $('#pairs').getBoundingClientRect().top + window.scrollY - $('#controls').offsetHeight;
      $('input.level[data-m="ER"][value="1"]').click();  // a filter change deep in the list
      await frame();
      Object.assign(out, {afterFilter: window.scrollY, shownFiltered: shown(), inDomFiltered: inDom()});
      out.deepAgain = await deep();
      type('sorry');
      await settle();
      out.afterSearch = window.scrollY;
      return out;
    """,
    )
    assert found["shown"] == 600 and found["inDom"] == RENDER_BATCH  # the DOM holds a window only
    assert found["deep"] > 5000 and found["inDomDeep"] > RENDER_BATCH  # scrolling renders more
    assert found["shownFiltered"] == 450 and found["inDomFiltered"] == RENDER_BATCH
    assert found["deepAgain"] > 5000
    top = max(found["resultsTop"], 0) + 1
    assert found["afterFilter"] <= top and found["afterSearch"] <= top
