"""A self-contained HTML page for reading scored pairs: posts, level badges, highlighted rationales.

    write_report(scored_table, "out.html", title="EPITOME predictions")

The table is the predictor's output: the input columns (``seeker_post``, ``response_post``, and
optionally ``id``, responder and time columns) plus, per mechanism M present, ``M_level``,
``M_prob0..2`` and ``M_rationale`` (spans of the response joined with ``|``), and optionally an
``error`` column. The page has inline CSS and JS only (no external resources); every post and
span is HTML-escaped.

A rationale is the evidence for a predicted level above 0: spans of a mechanism predicted at
level 0 (older prediction files have them) are drawn dashed and hatched, with a note, never as
evidence, and can be hidden. Each highlight carries its mechanism's letters as well as its colour
(Okabe-Ito tints, :mod:`empathy.palette`).

The pairs travel as JSON (each one's HTML, rendered and escaped here, its search text and its
levels); the page builds the DOM only for the matching pairs near the viewport, a batch at a time,
so that files of many thousand pairs stay responsive. The search box matches the posts' text
(seeker, response, id and carried-through columns), not badges or labels, and waits for a pause
in typing. Filters (per-mechanism levels, highlights, level-0 spans, unscored rows, the search)
can be preset from the URL, e.g. ``out.html#ER=2&IP=1,2&highlight=ER&level0=0&q=sorry``.
"""

from __future__ import annotations

import functools
import html
import itertools
import json
import math
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from empathy import LEVELS, MECHANISMS
from empathy.io import write_text_atomic
from empathy.palette import MECHANISM_COLOURS, MECHANISM_TINTS

MECHANISM_NAMES = {"ER": "Emotional reactions", "IP": "Interpretations", "EX": "Explorations"}
LEVEL_NAMES = {0: "no", 1: "weak", 2: "strong"}
# Levels whose rationale spans are evidence for the level.
EVIDENCE_LEVELS = (1, 2)
RATIONALE_SEPARATOR = "|"
TEXT_COLUMNS = ("id", "seeker_post", "response_post", "error")
PREDICTION_SUFFIXES = ("level", "prob0", "prob1", "prob2", "rationale")
NOT_EVIDENCE_NOTE = "spans at level 0 (not counted as evidence)"
NO_LEVEL_NOTE = "spans without a predicted level (not counted as evidence)"
# Pairs added to the page per step of its incremental rendering, and the search's debounce.
RENDER_BATCH = 40
SEARCH_DEBOUNCE_MS = 200


def present_mechanisms(table: pd.DataFrame) -> list[str]:
    """The mechanisms (in ER, IP, EX order) whose ``M_level`` column the table has."""
    return [m for m in MECHANISMS if f"{m}_level" in table.columns]


def _is_missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _text(value) -> str:
    return "" if _is_missing(value) else str(value)


def split_rationale(value) -> list[str]:
    """``"so sorry|that sounds hard"`` -> ``["so sorry", "that sounds hard"]`` (empty pieces dropped)."""
    return [piece.strip() for piece in _text(value).split(RATIONALE_SEPARATOR) if piece.strip()]


@functools.lru_cache(maxsize=4096)
def _loose_pattern(span: str) -> re.Pattern | None:
    """The span's non-space characters with any whitespace allowed between them, ignoring case
    (tokenizer decoding may add or drop spaces around punctuation)."""
    chars = [re.escape(c) for c in span if not c.isspace()]
    return re.compile(r"\s*".join(chars), re.IGNORECASE) if chars else None


def _find_span(response: str, span: str, start_at: int) -> tuple[int, int] | None:
    """The span's first occurrence from ``start_at``: verbatim, else loosely (the pattern is
    compiled only when the verbatim search fails)."""
    start = response.find(span, start_at)
    if start >= 0:
        return start, start + len(span)
    pattern = _loose_pattern(span)
    match = pattern.search(response, start_at) if pattern else None
    return match.span() if match is not None and match.end() > match.start() else None


def locate_spans(response: str, spans: Sequence[str]) -> tuple[list[tuple[int, int]], list[str]]:
    """Character ranges of ``spans`` in ``response`` and the spans that could not be found.

    Each span is looked for after the previous span's match (so a repeated phrase maps to
    successive occurrences), then anywhere; each time verbatim first, then ignoring case and
    whitespace (tokenizer decoding may add or drop spaces).
    """
    found: list[tuple[int, int]] = []
    missing: list[str] = []
    cursor = 0
    for span in spans:
        located = _find_span(response, span, cursor) or _find_span(response, span, 0)
        if located is None:
            missing.append(span)
            continue
        found.append(located)
        cursor = located[1]
    return found, missing


def _coverage(length: int, ranges: Mapping[str, Iterable[tuple[int, int]]]) -> list[frozenset[str]]:
    """For each character, the mechanisms whose ranges cover it."""
    cover: list[set[str]] = [set() for _ in range(length)]
    for mechanism, spans in ranges.items():
        for start, end in spans:
            for i in range(max(start, 0), min(end, length)):
                cover[i].add(mechanism)
    return [frozenset(c) for c in cover]


def _mark(piece: str, names: Sequence[str], not_evidence: Collection[str]) -> str:
    """One highlighted piece: evidence mechanisms in ``data-m`` (class ``hl``, coloured by the
    page's CSS), the others in ``data-z`` (class ``l0``, dashed and hatched)."""
    evidence = [m for m in names if m not in not_evidence]
    zero = [m for m in names if m in not_evidence]
    classes, attrs, titles = [], [], []
    if evidence:
        classes.append("hl")
        attrs.append(f'data-m="{" ".join(evidence)}"')
        titles += [f"{m} rationale" for m in evidence]
    if zero:
        classes.append("l0")
        attrs.append(f'data-z="{" ".join(zero)}"')
        titles += [f"{m} span, not counted as evidence" for m in zero]
    return (
        f'<mark class="{" ".join(classes)}" {" ".join(attrs)} title="{"; ".join(titles)}">{html.escape(piece)}</mark>'
    )


def _tag(mechanism: str, not_evidence: Collection[str]) -> str:
    """An empty element whose CSS ``::after`` shows the mechanism's letters (not part of the
    text, so copying or searching the response is unaffected)."""
    zero = " l0" if mechanism in not_evidence else ""
    return f'<span class="tag{zero}" data-m="{mechanism}"></span>'


def highlight_response(
    response: str,
    ranges: Mapping[str, Iterable[tuple[int, int]]],
    not_evidence: Collection[str] = (),
) -> str:
    """The response as escaped HTML with each rationale range in a ``<mark>``.

    A mark names its evidence mechanisms in ``data-m`` and the mechanisms in ``not_evidence``
    (spans at predicted level 0) in ``data-z``; overlapping ranges share a mark (striped in the
    page). Where a mechanism's run of text ends, a tag element carries its letters.
    """
    cover = _coverage(len(response), ranges)
    parts: list[str] = []
    i = 0
    while i < len(response):
        j = i + 1
        while j < len(response) and cover[j] == cover[i]:
            j += 1
        piece = response[i:j]
        if cover[i]:
            names = [m for m in MECHANISMS if m in cover[i]]
            parts.append(_mark(piece, names, not_evidence))
            after = cover[j] if j < len(response) else frozenset()
            parts += [_tag(m, not_evidence) for m in names if m not in after]
        else:
            parts.append(html.escape(piece))
        i = j
    return "".join(parts)


def _level(value) -> int | None:
    if _is_missing(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() and int(number) in LEVELS else None


def _probabilities(row: Mapping, mechanism: str) -> str:
    probs = []
    for level in LEVELS:
        value = row.get(f"{mechanism}_prob{level}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            return ""
        if math.isnan(number):
            return ""
        probs.append(f"P({level})={number:.2f}")
    return " ".join(probs)


def _badge(row: Mapping, mechanism: str) -> str:
    level = _level(row.get(f"{mechanism}_level"))
    text = f"{mechanism} {level if level is not None else '–'}"
    title = f"{MECHANISM_NAMES[mechanism]}: " + (
        f"level {level} ({LEVEL_NAMES[level]})" if level is not None else "not scored"
    )
    probs = _probabilities(row, mechanism)
    if probs:
        title += f"; {probs}"
    return (
        f'<span class="badge m-{mechanism} level-{level if level is not None else "none"}" '
        f'title="{html.escape(title)}">{html.escape(text)}</span>'
    )


def search_text(row: Mapping, extra_columns: Sequence[str]) -> str:
    """What the page's search box looks in: the id, the two posts and the carried-through
    columns' values (not badges, labels, column names or probabilities), one field a line,
    whitespace within a field collapsed to single spaces (as the page does to the query)."""
    fields = [row.get("id"), row.get("seeker_post"), row.get("response_post")]
    fields += [row.get(c) for c in extra_columns]
    return "\n".join(" ".join(_text(f).split()) for f in fields if _text(f).strip())


def _not_evidence_notes(spans: Mapping[str, list], levels: Mapping[str, int | None]) -> list[str]:
    """A note per kind of non-evidence spans: mechanisms with spans but no level above 0."""
    at_zero = [m for m, found in spans.items() if found and levels[m] == 0]
    no_level = [m for m, found in spans.items() if found and levels[m] is None]
    notes = []
    if at_zero:
        notes.append(f"{', '.join(at_zero)}: {NOT_EVIDENCE_NOTE}")
    if no_level:
        notes.append(f"{', '.join(no_level)}: {NO_LEVEL_NOTE}")
    return notes


class Pair(NamedTuple):
    """One scored pair as the page shows it."""

    html: str  # the pair's <article>, escaped
    text: str  # what the search looks in (search_text)
    levels: list[int | None]  # in the page's mechanisms order; None: not scored
    error: bool  # an unscored row
    not_evidence: bool  # has spans that are not evidence (at level 0 or without a level)

    def record(self) -> list:
        """The pair in the page's JSON: ``[html, search text, levels, error flag]``."""
        return [self.html, self.text, self.levels, 1 if self.error else 0]


def render_pair(row: Mapping, index: int, mechanisms: Sequence[str], extra_columns: Sequence[str]) -> Pair:
    """One row of the scored table as a :class:`Pair`."""
    response = _text(row.get("response_post"))
    error = _text(row.get("error")).strip()
    levels = {m: _level(row.get(f"{m}_level")) for m in mechanisms}
    ranges: dict[str, list[tuple[int, int]]] = {}
    missing: list[str] = []
    for m in mechanisms:
        found, lost = locate_spans(response, split_rationale(row.get(f"{m}_rationale")))
        ranges[m] = found
        missing += [f"{m}: {span}" for span in lost]
    not_evidence = [m for m in mechanisms if ranges[m] and levels[m] not in EVIDENCE_LEVELS]
    attrs = " ".join(f'data-{m.lower()}="{"" if lv is None else lv}"' for m, lv in levels.items())
    ident = _text(row.get("id")) or f"row {index + 1}"
    meta = "".join(
        f'<span class="meta-item"><b>{html.escape(str(c))}</b> {html.escape(_text(row.get(c)))}</span>'
        for c in extra_columns
    )
    seeker = html.escape(_text(row.get("seeker_post")))
    parts = [
        f'<article class="pair" {attrs} data-error="{1 if error else 0}">',
        f'<header><span class="pair-id">{html.escape(ident)}</span>'
        f'<span class="badges">{"".join(_badge(row, m) for m in mechanisms)}</span>{meta}</header>',
        f'<div class="post seeker"><div class="who">Seeker</div><p>{seeker}</p></div>',
        '<div class="post response"><div class="who">Response</div>'
        f"<p>{highlight_response(response, ranges, not_evidence)}</p></div>",
    ]
    if error:
        parts.append(f'<div class="error">Not scored: {html.escape(error)}</div>')
    parts += [f'<div class="l0-note">{html.escape(n)}</div>' for n in _not_evidence_notes(ranges, levels)]
    if missing:
        parts.append(
            '<div class="unlocated">Rationale spans not found in the response: '
            + "; ".join(f"<q>{html.escape(s)}</q>" for s in missing)
            + "</div>"
        )
    parts.append("</article>")
    return Pair(
        "".join(parts),
        search_text(row, extra_columns),
        [levels[m] for m in mechanisms],
        bool(error),
        bool(not_evidence),
    )


def _stripes(variables: Sequence[str]) -> str:
    """One colour, or horizontal stripes of several (overlapping mechanisms)."""
    if len(variables) == 1:
        return variables[0]
    step = 100 / len(variables)
    stops = ", ".join(f"{v} {i * step:.4g}% {(i + 1) * step:.4g}%" for i, v in enumerate(variables))
    return f"linear-gradient(to bottom, {stops})"


def mechanism_css() -> str:
    """The palette as CSS variables, and the highlight rules for every combination of mechanisms.

    ``--hl-M`` is M's highlight colour, transparent inside ``#pairs.off-M`` (its highlights
    switched off); a level-0 mark loses its outline and hatching when all its mechanisms are off
    or inside ``#pairs.hide-l0``.
    """
    rules = [
        ":root { "
        + " ".join(
            f"--c-{m}: {MECHANISM_COLOURS[m]}; --t-{m}: {MECHANISM_TINTS[m]}; --hl-{m}: var(--t-{m});"
            for m in MECHANISMS
        )
        + " }"
    ]
    for m in MECHANISMS:
        rules.append(f".m-{m} {{ --c: var(--c-{m}); --t: var(--t-{m}); }}")
        rules.append(f"#pairs.off-{m} {{ --hl-{m}: transparent; }}")
        rules.append(f'#pairs.off-{m} .tag[data-m="{m}"] {{ display: none; }}')
    for size in range(1, len(MECHANISMS) + 1):
        for combo in itertools.combinations(MECHANISMS, size):
            names = " ".join(combo)
            rules.append(f'mark.hl[data-m="{names}"] {{ background: {_stripes([f"var(--hl-{m})" for m in combo])}; }}')
            off = "".join(f".off-{m}" for m in combo)
            rules.append(f'#pairs{off} mark.l0[data-z="{names}"] {{ outline: none; }}')
            rules.append(f'#pairs{off} mark.l0:not(.hl)[data-z="{names}"] {{ background: none; }}')
    return "\n".join(rules)


CSS = """
:root { color-scheme: light; }
body {
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d1d1f;
  background: #f5f5f7;
}
#controls {
  position: sticky; top: 0; z-index: 1; background: #fff; border-bottom: 1px solid #ddd; padding: 10px 20px;
  display: flex; flex-wrap: wrap; gap: 8px 22px; align-items: center;
}
#controls h1 { font-size: 17px; margin: 0 12px 0 0; }
fieldset { border: 1px solid #ddd; border-radius: 6px; padding: 2px 8px; margin: 0; }
legend { font-size: 12px; color: #555; padding: 0 4px; }
fieldset label { margin-right: 6px; white-space: nowrap; }
.swatch {
  display: inline-block; min-width: 12px; border-radius: 3px; padding: 0 3px; margin-right: 3px;
  border: 1px solid var(--c); background: var(--t); font-size: 11px; font-weight: 600; line-height: 14px;
}
#count { font-weight: 600; }
main { padding: 16px 20px; max-width: 1100px; }
.note, .legend { color: #444; margin: 0 0 12px; }
.legend { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 8px 14px; font-size: 14px; }
.legend p { margin: 2px 0; }
.legend summary { cursor: pointer; font-weight: 600; }
.pair {
  background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 10px 14px; margin-bottom: 12px;
  content-visibility: auto; contain-intrinsic-size: auto 180px;
}
.pair header {
  display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; font-size: 13px; color: #555;
  margin-bottom: 6px;
}
.pair-id { font-family: ui-monospace, monospace; color: #333; }
.badge {
  display: inline-block; border: 2px solid var(--c); border-radius: 10px; padding: 0 8px; margin-right: 4px;
  font-weight: 600; color: #1d1d1f;
}
.badge.level-0 { background: #fff; color: #666; }
.badge.level-1 { background: linear-gradient(to right, var(--t) 50%, #fff 50%); }
.badge.level-2 { background: var(--t); }
.badge.level-none { border-style: dashed; color: #777; }
.post { display: grid; grid-template-columns: 80px 1fr; gap: 8px; }
.post p { margin: 4px 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.who { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #666; padding-top: 6px; }
.seeker p { color: #444; }
mark { background: none; color: inherit; border-radius: 3px; padding: 1px 0; }
mark.l0 { outline: 1.5px dashed #444; outline-offset: -1px; }
mark.l0:not(.hl) { background: repeating-linear-gradient(135deg, transparent 0 3px, rgba(0, 0, 0, .22) 3px 4.5px); }
.tag::after {
  content: attr(data-m); font-size: 10px; font-weight: 700; vertical-align: super; line-height: 0;
  margin: 0 2px 0 1px; color: #333;
}
.tag.l0::after { text-decoration: underline dashed; color: #666; font-weight: 400; }
#pairs.hide-l0 mark.l0 { outline: none; }
#pairs.hide-l0 mark.l0:not(.hl) { background: none; }
#pairs.hide-l0 .tag.l0 { display: none; }
.error { color: #a00; font-size: 13px; }
.l0-note { color: #555; font-size: 13px; font-style: italic; }
.unlocated { color: #8a5a00; font-size: 13px; }
#more { text-align: center; padding: 8px; }
#more[hidden] { display: none; }
"""

JS = """
(function () {
  'use strict';
  var DATA = JSON.parse(document.getElementById('report-data').textContent);
  var MECHS = DATA.mechanisms;
  var BATCH = DATA.batch;
  var DEBOUNCE_MS = DATA.debounce_ms;
  // One entry a pair: [html, search text, levels in MECHS order (null: not scored), error flag].
  var ROWS = DATA.rows;
  var TEXT = ROWS.map(function (row) { return row[1].toLowerCase(); });
  var list = document.getElementById('pairs');
  var more = document.getElementById('more');
  var controls = document.getElementById('controls');
  var search = document.getElementById('search');
  var unscored = document.getElementById('show-unscored');
  var level0 = document.getElementById('show-level0');
  var count = document.getElementById('count');
  var shown = [];
  var rendered = 0;
  var lastKey = null;
  var timer = null;

  function checked(selector) {
    return Array.prototype.slice.call(document.querySelectorAll(selector))
      .filter(function (el) { return el.checked; }).map(function (el) { return el.value; });
  }
  function normalise(query) { return query.trim().replace(/\\s+/g, ' ').toLowerCase(); }
  function filterState() {
    return {
      allowed: MECHS.map(function (m) { return checked('input.level[data-m="' + m + '"]').map(Number); }),
      unscored: unscored.checked,
      query: normalise(search.value)
    };
  }
  function keep(i, state) {
    var row = ROWS[i];
    if (row[3]) {
      if (!state.unscored) return false;
    } else {
      for (var k = 0; k < MECHS.length; k++) {
        if (row[2][k] !== null && state.allowed[k].indexOf(row[2][k]) < 0) return false;
      }
    }
    return !state.query || TEXT[i].indexOf(state.query) >= 0;
  }

  // Incremental rendering: the DOM holds the matching pairs down to a little past the viewport;
  // the next batch is added when the #more sentinel comes near (or its button is pressed).
  function renderMore() {
    var end = Math.min(rendered + BATCH, shown.length);
    if (end > rendered) {
      var html = shown.slice(rendered, end).map(function (i) { return ROWS[i][0]; }).join('');
      list.insertAdjacentHTML('beforeend', html);
      rendered = end;
    }
    more.hidden = rendered >= shown.length;
  }
  var observer = 'IntersectionObserver' in window ? new IntersectionObserver(function (entries) {
    if (entries.some(function (e) { return e.isIntersecting; })) { renderMore(); watch(); }
  }, {rootMargin: '1500px 0px'}) : null;
  function watch() {
    // Observing anew reports the current intersection, so batches continue while the sentinel
    // stays in range.
    if (!observer) return;
    observer.unobserve(more);
    if (!more.hidden) observer.observe(more);
  }
  more.querySelector('button').addEventListener('click', function () { renderMore(); watch(); });

  function scrollToResults() {
    var top = list.getBoundingClientRect().top + window.scrollY - controls.offsetHeight - 8;
    if (window.scrollY > top) window.scrollTo(0, Math.max(top, 0));
  }
  function applyFilter() {
    var state = filterState();
    var key = JSON.stringify(state);
    if (key === lastKey) return;
    var first = lastKey === null;
    lastKey = key;
    shown = [];
    for (var i = 0; i < ROWS.length; i++) if (keep(i, state)) shown.push(i);
    list.textContent = '';
    rendered = 0;
    renderMore();
    watch();
    count.textContent = 'Showing ' + shown.length + ' of ' + ROWS.length + ' pairs';
    count.dataset.shown = shown.length;
    if (!first) scrollToResults();
  }
  function applyHighlights() {
    var on = checked('input.highlight');
    MECHS.forEach(function (m) { list.classList.toggle('off-' + m, on.indexOf(m) < 0); });
    list.classList.toggle('hide-l0', !level0.checked);
  }

  function readPreset() {
    var text = (location.search.replace(/^\\?/, '') + '&' + location.hash.replace(/^#/, '')).replace(/\\+/g, ' ');
    text.split('&').forEach(function (part) {
      if (!part) return;
      var eq = part.indexOf('=');
      var key = decodeURIComponent(eq < 0 ? part : part.slice(0, eq));
      var value = eq < 0 ? '' : decodeURIComponent(part.slice(eq + 1));
      var values = value.split(',').filter(function (v) { return v !== ''; });
      var off = value === '0' || value === 'false';
      if (MECHS.indexOf(key) >= 0) {
        document.querySelectorAll('input.level[data-m="' + key + '"]').forEach(function (el) {
          el.checked = values.indexOf(el.value) >= 0;
        });
      } else if (key === 'highlight') {
        document.querySelectorAll('input.highlight').forEach(function (el) {
          el.checked = values.indexOf(el.value) >= 0;
        });
      } else if (key === 'unscored') {
        unscored.checked = !off;
      } else if (key === 'level0') {
        level0.checked = !off;
      } else if (key === 'q') {
        search.value = value;
      }
    });
  }
  function writePreset() {
    var parts = [];
    MECHS.forEach(function (m) {
      var levels = checked('input.level[data-m="' + m + '"]');
      if (levels.length < 3) parts.push(m + '=' + levels.join(','));
    });
    var on = checked('input.highlight');
    if (on.length < MECHS.length) parts.push('highlight=' + on.join(','));
    if (!level0.checked) parts.push('level0=0');
    if (!unscored.checked) parts.push('unscored=0');
    if (search.value) parts.push('q=' + encodeURIComponent(search.value));
    var url = parts.length ? '#' + parts.join('&') : location.pathname + location.search;
    try { history.replaceState(null, '', url); } catch (e) { /* some browsers refuse on file:// */ }
  }
  function update() {
    if (timer !== null) { clearTimeout(timer); timer = null; }
    applyHighlights();
    applyFilter();
    writePreset();
  }

  // Checkboxes apply at once; the search waits for a pause in typing (Enter applies at once).
  controls.addEventListener('change', update);
  search.addEventListener('input', function () {
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(update, DEBOUNCE_MS);
  });
  window.addEventListener('hashchange', function () { readPreset(); applyHighlights(); applyFilter(); });
  readPreset();
  applyHighlights();
  applyFilter();
})();
"""


def _controls(title: str, mechanisms: Sequence[str], n_pairs: int, has_unscored: bool, has_level0: bool) -> str:
    sets = []
    for m in mechanisms:
        levels = "".join(
            f'<label><input type="checkbox" class="level" data-m="{m}" value="{lv}" checked> {lv}</label>'
            for lv in LEVELS
        )
        sets.append(
            f'<fieldset class="mechanism" data-m="{m}"><legend>{html.escape(MECHANISM_NAMES[m])} ({m})</legend>'
            f'<label title="highlight {m} rationales"><input type="checkbox" class="highlight" value="{m}" checked>'
            f'<span class="swatch m-{m}">{m}</span>spans</label> levels {levels}</fieldset>'
        )
    unscored = (
        '<label><input type="checkbox" id="show-unscored" checked> unscored rows</label>'
        if has_unscored
        else '<input type="checkbox" id="show-unscored" checked hidden>'
    )
    level0 = (
        '<label title="spans given at predicted level 0: not evidence"><input type="checkbox" '
        'id="show-level0" checked> spans at level 0</label>'
        if has_level0
        else '<input type="checkbox" id="show-level0" checked hidden>'
    )
    return (
        f'<div id="controls"><h1>{html.escape(title)}</h1>{"".join(sets)}'
        f'<label>search <input type="search" id="search" placeholder="text of the posts"></label>'
        f'{level0}{unscored}<span id="count" aria-live="polite" data-shown="{n_pairs}">Showing {n_pairs} of '
        f"{n_pairs} pairs</span></div>"
    )


def _legend(mechanisms: Sequence[str], has_level0: bool) -> str:
    """What highlights and badges mean."""
    samples = ", ".join(
        f'<mark class="hl" data-m="{m}">{html.escape(MECHANISM_NAMES[m].lower())}</mark>'
        f'<span class="tag" data-m="{m}"></span>'
        for m in mechanisms
    )
    lines = [
        f"<b>Highlights</b> mark the spans of the response that the model gives as the evidence "
        f"(rationale) for a predicted level of 1 or 2: {samples}. Each carries its mechanism's "
        f"letters; stripes are spans of several mechanisms. Hover a highlight to see what it is.",
        f'<mark class="l0" data-z="{mechanisms[0]}">Dashed and hatched</mark>'
        f'<span class="tag l0" data-m="{mechanisms[0]}"></span>: {NOT_EVIDENCE_NOTE}; a note under '
        "the pair says so."
        + (" Hide them with <i>spans at level 0</i>." if has_level0 else " There are none in this file."),
        "<b>Badges</b>: outline = level 0 (no), half filled = 1 (weak), filled = 2 (strong), dashed = "
        "not scored; hover one for the level probabilities.",
        "The search looks in the posts, ids and carried-through columns. Filters can be preset in "
        "the URL, e.g. <code>#ER=2&amp;IP=1,2&amp;highlight=ER&amp;level0=0&amp;q=sorry</code>.",
    ]
    body = "".join(f"<p>{line}</p>" for line in lines)
    return f'<details class="legend" open><summary>What the page shows</summary>{body}</details>'


def script_json(payload) -> str:
    """JSON to embed in a ``<script>`` element: every ``<`` written as ``\\u003c``, so nothing in
    the data can end the element (``</script>``) or change how the parser looks for its end
    (``<!--``)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def render_report(table: pd.DataFrame, *, title: str = "Empathy predictions", max_rows: int | None = None) -> str:
    """The report page as one HTML string."""
    if "response_post" not in table.columns:
        raise ValueError(
            f"the scored table has no 'response_post' column (columns: {', '.join(map(str, table.columns))})"
        )
    mechanisms = present_mechanisms(table)
    if not mechanisms:
        raise ValueError(
            "the scored table has no mechanism columns: expected at least one of "
            + ", ".join(f"{m}_level" for m in MECHANISMS)
        )
    total = len(table)
    if max_rows is not None:
        if max_rows < 0:
            raise ValueError(f"max_rows must be >= 0 or None, got {max_rows}")
        table = table.iloc[:max_rows]
    prediction_columns = {f"{m}_{s}" for m in MECHANISMS for s in PREDICTION_SUFFIXES}
    extra = [c for c in table.columns if c not in prediction_columns and c not in TEXT_COLUMNS]
    pairs = [render_pair(row, i, mechanisms, extra) for i, row in enumerate(table.to_dict("records"))]
    has_unscored = any(p.error for p in pairs)
    has_level0 = any(p.not_evidence for p in pairs)
    note = f"First {len(table)} of {total} rows." if len(table) < total else ""
    data = script_json(
        {
            "mechanisms": mechanisms,
            "batch": RENDER_BATCH,
            "debounce_ms": SEARCH_DEBOUNCE_MS,
            "rows": [p.record() for p in pairs],
        }
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            # No external resources at all, even if a post smuggles in markup.
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">",
            f"<title>{html.escape(title)}</title><style>{CSS}{mechanism_css()}</style></head><body>",
            _controls(title, mechanisms, len(table), has_unscored, has_level0),
            "<main>",
            f'<p class="note">{note}</p>' if note else "",
            _legend(mechanisms, has_level0),
            '<noscript><p class="note">This page needs JavaScript to show the pairs.</p></noscript>',
            '<div id="pairs"></div>',
            '<div id="more" hidden><button type="button">Show more</button></div>',
            "" if pairs else '<p class="note">No rows.</p>',
            "</main>",
            f'<script type="application/json" id="report-data">{data}</script>',
            f"<script>{JS}</script>",
            "</body></html>",
        ]
    )


def write_report(
    table: pd.DataFrame,
    path: str | os.PathLike,
    *,
    title: str = "Empathy predictions",
    max_rows: int | None = None,
) -> Path:
    """Write the report page for ``table`` to ``path`` atomically (temporary file, then rename)."""
    return write_text_atomic(path, render_report(table, title=title, max_rows=max_rows))
