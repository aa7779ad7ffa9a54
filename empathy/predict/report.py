"""A self-contained HTML page for reading scored pairs: posts, level badges, highlighted rationales.

    write_report(scored_table, "out.html", title="EPITOME predictions")

The table is the predictor's output: the input columns (``seeker_post``, ``response_post``, and
optionally ``id``, responder and time columns) plus, per mechanism M present, ``M_level``,
``M_prob0..2`` and ``M_rationale`` (spans of the response joined with ``|``), and optionally an
``error`` column. The page has inline CSS and JS only (no external resources); every post and
span is HTML-escaped. Filters (per-mechanism levels, highlights, unscored rows, a text search)
can be preset from the URL, e.g. ``out.html#ER=2&IP=1,2&highlight=ER&q=sorry``.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from empathy import LEVELS, MECHANISMS
from empathy.io import write_text_atomic

MECHANISM_NAMES = {"ER": "Emotional reactions", "IP": "Interpretations", "EX": "Explorations"}
# Highlight colours, light enough for black text; distinct also for the common colour blindnesses.
MECHANISM_COLOURS = {"ER": "#ffd166", "IP": "#8ecae6", "EX": "#b5e48c"}
LEVEL_NAMES = {0: "no", 1: "weak", 2: "strong"}
RATIONALE_SEPARATOR = "|"
TEXT_COLUMNS = ("id", "seeker_post", "response_post", "error")


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


def _loose_pattern(span: str) -> re.Pattern | None:
    """The span's non-space characters with any whitespace allowed between them, ignoring case
    (tokenizer decoding may add or drop spaces around punctuation)."""
    chars = [re.escape(c) for c in span if not c.isspace()]
    return re.compile(r"\s*".join(chars), re.IGNORECASE) if chars else None


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
        pattern = _loose_pattern(span)
        located = None
        for start_at in (cursor, 0):
            start = response.find(span, start_at)
            if start >= 0:
                located = (start, start + len(span))
                break
            match = pattern.search(response, start_at) if pattern else None
            if match is not None and match.end() > match.start():
                located = match.span()
                break
        if located is None:
            missing.append(span)
            continue
        found.append(located)
        cursor = located[1]
    return found, missing


def _background(mechanisms: Sequence[str]) -> str:
    """Solid colour for one mechanism, horizontal stripes for overlapping ones."""
    colours = [MECHANISM_COLOURS[m] for m in mechanisms]
    if len(colours) == 1:
        return colours[0]
    step = 100 / len(colours)
    stops = ", ".join(f"{c} {i * step:.1f}% {(i + 1) * step:.1f}%" for i, c in enumerate(colours))
    return f"linear-gradient(to bottom, {stops})"


def highlight_response(response: str, ranges: Mapping[str, Iterable[tuple[int, int]]]) -> str:
    """The response as escaped HTML, each rationale range wrapped in a ``<mark>`` that names its
    mechanism(s) in ``data-m``; overlapping ranges of different mechanisms share a striped mark."""
    cover: list[set[str]] = [set() for _ in response]
    for mechanism, spans in ranges.items():
        for start, end in spans:
            for i in range(max(start, 0), min(end, len(response))):
                cover[i].add(mechanism)
    parts: list[str] = []
    i = 0
    while i < len(response):
        j = i + 1
        while j < len(response) and cover[j] == cover[i]:
            j += 1
        piece = html.escape(response[i:j])
        if cover[i]:
            names = [m for m in MECHANISMS if m in cover[i]]
            label = ", ".join(f"{m} rationale" for m in names)
            parts.append(
                f'<mark class="rationale" data-m="{" ".join(names)}" title="{label}" '
                f'style="background: {_background(names)}">{piece}</mark>'
            )
        else:
            parts.append(piece)
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
        f'<span class="badge level-{level if level is not None else "none"}" data-m="{mechanism}" '
        f'style="--c: {MECHANISM_COLOURS[mechanism]}" title="{html.escape(title)}">{html.escape(text)}</span>'
    )


def _pair(row: Mapping, index: int, mechanisms: Sequence[str], extra_columns: Sequence[str]) -> str:
    response = _text(row.get("response_post"))
    error = _text(row.get("error")).strip()
    ranges: dict[str, list[tuple[int, int]]] = {}
    missing: list[str] = []
    for m in mechanisms:
        found, lost = locate_spans(response, split_rationale(row.get(f"{m}_rationale")))
        ranges[m] = found
        missing += [f"{m}: {span}" for span in lost]
    levels = {m: _level(row.get(f"{m}_level")) for m in mechanisms}
    attrs = " ".join(f'data-{m.lower()}="{"" if lv is None else lv}"' for m, lv in levels.items())
    ident = _text(row.get("id")) or f"row {index + 1}"
    meta = "".join(
        f'<span class="meta-item"><b>{html.escape(str(c))}</b> {html.escape(_text(row.get(c)))}</span>'
        for c in extra_columns
    )
    parts = [
        f'<article class="pair" {attrs} data-error="{1 if error else 0}">',
        f'<header><span class="pair-id">{html.escape(ident)}</span>'
        f'<span class="badges">{"".join(_badge(row, m) for m in mechanisms)}</span>{meta}</header>',
        f'<div class="post seeker"><div class="who">Seeker</div><p>{html.escape(_text(row.get("seeker_post")))}</p></div>',
        f'<div class="post response"><div class="who">Response</div><p>{highlight_response(response, ranges)}</p></div>',
    ]
    if error:
        parts.append(f'<div class="error">Not scored: {html.escape(error)}</div>')
    if missing:
        parts.append(
            '<div class="unlocated">Rationale spans not found in the response: '
            + "; ".join(f"<q>{html.escape(s)}</q>" for s in missing)
            + "</div>"
        )
    parts.append("</article>")
    return "\n".join(parts)


CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d1d1f; background: #f5f5f7; }
#controls { position: sticky; top: 0; z-index: 1; background: #fff; border-bottom: 1px solid #ddd; padding: 10px 20px; display: flex; flex-wrap: wrap; gap: 8px 22px; align-items: center; }
#controls h1 { font-size: 17px; margin: 0 12px 0 0; }
fieldset { border: 1px solid #ddd; border-radius: 6px; padding: 2px 8px; margin: 0; }
legend { font-size: 12px; color: #555; padding: 0 4px; }
fieldset label { margin-right: 6px; white-space: nowrap; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 3px; vertical-align: -1px; margin-right: 3px; border: 1px solid rgba(0,0,0,.2); }
#count { font-weight: 600; }
main { padding: 16px 20px; max-width: 1100px; }
.note { color: #555; margin: 0 0 12px; }
.pair { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 10px 14px; margin-bottom: 12px; }
.pair[hidden] { display: none; }
.pair header { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; font-size: 13px; color: #555; margin-bottom: 6px; }
.pair-id { font-family: ui-monospace, monospace; color: #333; }
.badge { display: inline-block; border: 2px solid var(--c); border-radius: 10px; padding: 0 8px; margin-right: 4px; font-weight: 600; color: #1d1d1f; }
.badge.level-0 { background: #fff; color: #777; }
.badge.level-1 { background: linear-gradient(to right, var(--c) 50%, #fff 50%); }
.badge.level-2 { background: var(--c); }
.badge.level-none { border-style: dashed; color: #999; }
.post { display: grid; grid-template-columns: 80px 1fr; gap: 8px; }
.post p { margin: 4px 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.who { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #777; padding-top: 6px; }
.seeker p { color: #444; }
mark.rationale { color: inherit; border-radius: 3px; padding: 1px 0; }
.error { color: #a00; font-size: 13px; }
.unlocated { color: #8a5a00; font-size: 13px; }
"""

JS = """
(function () {
  var MECHS = JSON.parse(document.getElementById('report-data').textContent);
  var pairs = Array.prototype.slice.call(document.querySelectorAll('article.pair'));
  var search = document.getElementById('search');
  var unscored = document.getElementById('show-unscored');
  function checked(selector) {
    return Array.prototype.slice.call(document.querySelectorAll(selector))
      .filter(function (el) { return el.checked; }).map(function (el) { return el.value; });
  }
  function readPreset() {
    var text = (location.search.replace(/^\\?/, '') + '&' + location.hash.replace(/^#/, '')).replace(/\\+/g, ' ');
    text.split('&').forEach(function (part) {
      if (!part) return;
      var eq = part.indexOf('=');
      var key = decodeURIComponent(eq < 0 ? part : part.slice(0, eq));
      var value = eq < 0 ? '' : decodeURIComponent(part.slice(eq + 1));
      var values = value.split(',').filter(function (v) { return v !== ''; });
      if (MECHS.indexOf(key) >= 0) {
        document.querySelectorAll('input.level[data-m="' + key + '"]').forEach(function (el) {
          el.checked = values.indexOf(el.value) >= 0;
        });
      } else if (key === 'highlight') {
        document.querySelectorAll('input.highlight').forEach(function (el) {
          el.checked = values.indexOf(el.value) >= 0;
        });
      } else if (key === 'unscored') {
        unscored.checked = !(value === '0' || value === 'false');
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
    var shown = checked('input.highlight');
    if (shown.length < MECHS.length) parts.push('highlight=' + shown.join(','));
    if (!unscored.checked) parts.push('unscored=0');
    if (search.value) parts.push('q=' + encodeURIComponent(search.value));
    var url = parts.length ? '#' + parts.join('&') : location.pathname + location.search;
    try { history.replaceState(null, '', url); } catch (e) { /* some browsers refuse on file:// */ }
  }
  function paint() {
    var on = checked('input.highlight');
    var colours = {};
    document.querySelectorAll('input.highlight').forEach(function (el) { colours[el.value] = el.dataset.colour; });
    document.querySelectorAll('mark.rationale').forEach(function (mark) {
      var ms = mark.dataset.m.split(' ').filter(function (m) { return on.indexOf(m) >= 0; });
      if (ms.length === 0) { mark.style.background = 'none'; mark.classList.add('off'); return; }
      mark.classList.remove('off');
      if (ms.length === 1) { mark.style.background = colours[ms[0]]; return; }
      var step = 100 / ms.length;
      mark.style.background = 'linear-gradient(to bottom, ' + ms.map(function (m, i) {
        return colours[m] + ' ' + (i * step) + '% ' + ((i + 1) * step) + '%';
      }).join(', ') + ')';
    });
  }
  function filter() {
    var allowed = {};
    MECHS.forEach(function (m) { allowed[m] = checked('input.level[data-m="' + m + '"]'); });
    var query = search.value.trim().toLowerCase();
    var shown = 0;
    pairs.forEach(function (pair) {
      var ok;
      if (pair.dataset.error === '1') {
        ok = unscored.checked;
      } else {
        ok = MECHS.every(function (m) {
          var level = pair.dataset[m.toLowerCase()];
          return level === '' || allowed[m].indexOf(level) >= 0;
        });
      }
      if (ok && query) ok = pair.textContent.toLowerCase().indexOf(query) >= 0;
      pair.hidden = !ok;
      if (ok) shown += 1;
    });
    var count = document.getElementById('count');
    count.textContent = 'Showing ' + shown + ' of ' + pairs.length + ' pairs';
    count.dataset.shown = shown;
  }
  function update() { paint(); filter(); writePreset(); }
  readPreset();
  paint();
  filter();
  document.getElementById('controls').addEventListener('input', update);
  document.getElementById('controls').addEventListener('change', update);
  window.addEventListener('hashchange', function () { readPreset(); paint(); filter(); });
})();
"""


def _controls(title: str, mechanisms: Sequence[str], n_pairs: int, has_unscored: bool) -> str:
    sets = []
    for m in mechanisms:
        levels = "".join(
            f'<label><input type="checkbox" class="level" data-m="{m}" value="{lv}" checked> {lv}</label>'
            for lv in LEVELS
        )
        sets.append(
            f'<fieldset class="mechanism" data-m="{m}"><legend>{html.escape(MECHANISM_NAMES[m])} ({m})</legend>'
            f'<label title="highlight {m} rationales"><input type="checkbox" class="highlight" value="{m}" '
            f'data-colour="{MECHANISM_COLOURS[m]}" checked><span class="swatch" style="background: '
            f'{MECHANISM_COLOURS[m]}"></span>spans</label> levels {levels}</fieldset>'
        )
    unscored = (
        '<label><input type="checkbox" id="show-unscored" checked> unscored rows</label>'
        if has_unscored
        else '<input type="checkbox" id="show-unscored" checked hidden>'
    )
    return (
        f'<div id="controls"><h1>{html.escape(title)}</h1>{"".join(sets)}'
        f'<label>search <input type="search" id="search" placeholder="text in either post"></label>'
        f'{unscored}<span id="count" data-shown="{n_pairs}">Showing {n_pairs} of {n_pairs} pairs</span></div>'
    )


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
    prediction_columns = {f"{m}_{s}" for m in MECHANISMS for s in ("level", "prob0", "prob1", "prob2", "rationale")}
    extra = [c for c in table.columns if c not in prediction_columns and c not in TEXT_COLUMNS]
    records = table.to_dict("records")
    pairs = "\n".join(_pair(row, i, mechanisms, extra) for i, row in enumerate(records))
    has_unscored = "error" in table.columns and any(_text(r.get("error")).strip() for r in records)
    note = f"First {len(table)} of {total} rows. " if len(table) < total else ""
    note += (
        "Badges: outline = level 0 (no), half filled = 1 (weak), filled = 2 (strong); hover one for "
        "the level probabilities."
    )
    note += " Filters can be preset in the URL, e.g. <code>#ER=2&amp;IP=1,2&amp;highlight=ER</code>."
    data = json.dumps(mechanisms).replace("</", "<\\/")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            # No external resources at all, even if a post smuggles in markup.
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">",
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
            _controls(title, mechanisms, len(table), has_unscored),
            f'<main><p class="note">{note}</p>',
            pairs if records else '<p class="note">No rows.</p>',
            "</main>",
            f'<script type="application/json" id="report-data">{data}</script>',
            f"<script>{JS}</script>",
            "</body></html>",
        ]
    )


def write_report(
    table: pd.DataFrame, path: str | os.PathLike, *, title: str = "Empathy predictions", max_rows: int | None = None
) -> Path:
    """Write the report page for ``table`` to ``path`` atomically (temporary file, then rename)."""
    return write_text_atomic(path, render_report(table, title=title, max_rows=max_rows))
