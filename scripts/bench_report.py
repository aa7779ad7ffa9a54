"""The HTML viewer on large files: page size and generation time, and (with Chromium) the page's
load, search and filter timings in a real browser.

    python scripts/bench_report.py                      # 5000 rows
    python scripts/bench_report.py --rows 20000 --query sorry
    python scripts/bench_report.py --page old.html      # time an existing page (no generation)
    python scripts/bench_report.py --keep /tmp/report.html

Rows come from the three EPITOME CSVs in EMPATHY_DATA_DIR (default ../shared/data/epitome-reddit beside the checkout;
the annotated levels and rationales stand in for predictions), repeated with new ids to --rows, or
synthetic ones when the CSVs are absent. The browser part drives headless Chromium over the
DevTools protocol on a pipe (no extra packages) and measures, through the page's public controls
only (#search, input.level, #count), so that any version of the page can be timed:

  load         navigation start to the load event, and to the first painted frame after it;
  typing       the query typed one character every --key-gap ms, from the first keystroke to the
               last change of #count (the results shown), plus the longest main-thread task;
  checkbox     one level checkbox toggled (unfiltered -> filtered -> unfiltered), each to the next
               painted frame;
  scroll       the window's scroll position after a filter change made deep in the list.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_DATA_DIR = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "epitome-reddit")
EPITOME_FILES = {
    "ER": "emotional-reactions-reddit.csv",
    "IP": "interpretations-reddit.csv",
    "EX": "explorations-reddit.csv",
}


# ---------------------------------------------------------------- the scored table


def epitome_scored(data_dir: Path) -> pd.DataFrame | None:
    """The three EPITOME files joined on the pair, as a scored table (annotations as predictions)."""
    paths = {m: data_dir / name for m, name in EPITOME_FILES.items()}
    if not all(p.is_file() for p in paths.values()):
        return None
    table = None
    for m, path in paths.items():
        part = pd.read_csv(path, keep_default_na=False)
        part = part.rename(columns={"level": f"{m}_level", "rationales": f"{m}_rationale"})
        part = part.drop_duplicates(["sp_id", "rp_id"])
        keep = ["sp_id", "rp_id", f"{m}_level", f"{m}_rationale"]
        if table is None:
            table = part[["sp_id", "rp_id", "seeker_post", "response_post", *keep[2:]]]
        else:
            table = table.merge(part[keep], on=["sp_id", "rp_id"], how="inner")
    table.insert(0, "id", table["sp_id"] + "_" + table["rp_id"])
    return table.drop(columns=["sp_id", "rp_id"])


def synthetic_scored(n: int, rng: np.random.Generator) -> pd.DataFrame:
    words = "i feel so alone today and nobody seems to care about what happens next".split()
    rows = []
    for i in range(n):
        response = " ".join(rng.choice(words, 40))
        row = {
            "id": f"s{i}",
            "seeker_post": " ".join(rng.choice(words, 30)),
            "response_post": response,
        }
        for m in EPITOME_FILES:
            row[f"{m}_level"] = int(rng.integers(0, 3))
            row[f"{m}_rationale"] = " ".join(response.split()[:4]) if row[f"{m}_level"] else ""
        rows.append(row)
    return pd.DataFrame(rows)


def scored_table(rows: int, data_dir: Path, seed: int = 0) -> tuple[pd.DataFrame, str]:
    """``rows`` scored pairs (the EPITOME pairs repeated with new ids), with level probabilities."""
    rng = np.random.default_rng(seed)
    base = epitome_scored(data_dir)
    source = f"EPITOME pairs from {data_dir}"
    if base is None:
        base, source = synthetic_scored(min(rows, 3000), rng), "synthetic pairs"
    repeats = -(-rows // len(base))
    table = pd.concat([base] * repeats, ignore_index=True).iloc[:rows].copy()
    table["id"] = [f"{ident}#{i // len(base)}" for i, ident in enumerate(table["id"])]
    for m in EPITOME_FILES:
        probs = rng.dirichlet([1, 1, 1], len(table))
        for k in range(3):
            table[f"{m}_prob{k}"] = probs[:, k].round(4)
    return table, source


# ---------------------------------------------------------------- Chromium over a DevTools pipe


class DevToolsPipe:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (JSON messages ending in NUL on
    the browser's file descriptors 3 and 4)."""

    def __init__(self, binary: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire() -> None:  # in the child: the browser reads fd 3 and writes fd 4
            # Through copies, since the pipe ends may themselves be descriptors 3 or 4.
            reader, writer = os.dup(to_browser_r), os.dup(from_browser_w)
            for source, target in ((reader, 3), (writer, 4)):
                os.dup2(source, target)
                os.set_inheritable(target, True)

        # close_fds=False: fds 3 and 4 must survive into the browser; every other descriptor of
        # ours is non-inheritable (PEP 446) and closes on exec anyway.

        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-sync",
            "--disable-background-networking",
            "--disable-component-update",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "--window-size=1280,900",
        ]
        self.process = subprocess.Popen(
            [binary, *flags],
            preexec_fn=wire,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.attached = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", attached=self.attached)

    def _read_message(self, timeout: float = 120.0) -> dict:
        while b"\0" not in self._buffer:
            if not select.select([self._from_browser], [], [], timeout)[0]:
                raise TimeoutError(f"no message from the browser in {timeout:.0f} s")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("the browser closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, attached: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if attached:
            message["sessionId"] = attached
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def wait_event(self, method: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, event in enumerate(self._events):
                if event.get("method") == method:
                    return self._events.pop(i)
            self._events.append(self._read_message())
        raise TimeoutError(method)

    def evaluate(self, expression: str):
        result = self.call(
            "Runtime.evaluate",
            attached=self.attached,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(json.dumps(result["exceptionDetails"])[:2000])
        return result["result"].get("value")

    def open(self, url: str) -> None:
        """Navigate and wait for the load event (a change of the hash alone loads nothing)."""
        self._events.clear()
        navigation = self.call("Page.navigate", attached=self.attached, url=url)
        if navigation.get("loaderId"):
            self.wait_event("Page.loadEventFired")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._to_browser)
        os.close(self._from_browser)


# In-page measurements through the public controls; each resolves to a number of milliseconds
# (or an object of them).
FRAME_JS = "() => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)))"

LOAD_JS = f"""(async () => {{
  const nav = performance.getEntriesByType('navigation')[0];
  await ({FRAME_JS})();
  return {{load: nav.loadEventEnd, painted: performance.now(),
           articles: document.querySelectorAll('article').length,
           count: document.getElementById('count').textContent}};
}})()"""

TYPING_JS = """(async (query, gap, settle) => {
  const frame = %s;
  const search = document.getElementById('search');
  const count = document.getElementById('count');
  let longest = 0;
  const observer = new PerformanceObserver(list => list.getEntries().forEach(
    e => { longest = Math.max(longest, e.duration); }));
  try { observer.observe({type: 'longtask', buffered: false}); } catch (e) {}
  let last = null;
  const watch = new MutationObserver(() => { last = performance.now(); });
  watch.observe(count, {childList: true, characterData: true, subtree: true, attributes: true});
  search.value = '';
  search.dispatchEvent(new Event('input', {bubbles: true}));
  await new Promise(r => setTimeout(r, settle));
  await frame();
  last = null;
  const start = performance.now();
  for (const ch of query) {
    search.value += ch;
    search.dispatchEvent(new Event('input', {bubbles: true}));
    await new Promise(r => setTimeout(r, gap));
  }
  await new Promise(r => setTimeout(r, settle));
  await frame();
  watch.disconnect();
  observer.disconnect();
  const shown = count.textContent;
  search.value = '';
  search.dispatchEvent(new Event('input', {bubbles: true}));
  await new Promise(r => setTimeout(r, settle));
  return {results_ms: last === null ? null : last - start, longest_task_ms: longest, shown: shown};
})(%s, %d, %d)"""

CHECKBOX_JS = f"""(async () => {{
  const frame = {FRAME_JS};
  const box = document.querySelector('input.level[value="0"]');
  const times = [];
  for (let i = 0; i < 2; i++) {{
    const start = performance.now();
    box.click();
    await frame();
    times.push(performance.now() - start);
  }}
  return times;
}})()"""

SCROLL_JS = f"""(async (settle) => {{
  const frame = {FRAME_JS};
  window.scrollTo(0, 1e9);
  await frame();
  for (let i = 0; i < 5; i++) {{ window.scrollBy(0, 1e9); await frame(); }}
  const deep = window.scrollY;
  const box = document.querySelector('input.level[value="0"]');
  box.click();
  await new Promise(r => setTimeout(r, settle));
  await frame();
  const after = window.scrollY;
  box.click();
  await new Promise(r => setTimeout(r, settle));
  return {{deep: deep, after_filter: after}};
}})({{settle}})"""


def browser_figures(binary: str, page: Path, query: str, key_gap: int, repeats: int) -> dict:
    settle = 600
    with tempfile.TemporaryDirectory() as profile:
        browser = DevToolsPipe(binary, Path(profile))
        try:
            loads = []
            for _ in range(repeats):
                browser.open(page.resolve().as_uri())
                loads.append(browser.evaluate(LOAD_JS))
            typing = [
                browser.evaluate(TYPING_JS % (FRAME_JS, json.dumps(query), key_gap, settle)) for _ in range(repeats)
            ]
            checkbox = [t for _ in range(repeats) for t in browser.evaluate(CHECKBOX_JS)]
            scroll = browser.evaluate(SCROLL_JS.replace("{settle}", str(settle)))
        finally:
            browser.close()
    return {"loads": loads, "typing": typing, "checkbox": checkbox, "scroll": scroll}


def _median(values) -> float:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else float("nan")


def report_browser(figures: dict, query: str, key_gap: int) -> None:
    loads, typing = figures["loads"], figures["typing"]
    print(f"  rows in the DOM after load: {loads[-1]['articles']}; {loads[-1]['count']}")
    print(
        f"  load event: {_median(x['load'] for x in loads):.0f} ms; first frame after it: "
        f"{_median(x['painted'] for x in loads):.0f} ms (median of {len(loads)})"
    )
    shown = _median(t["results_ms"] for t in typing)
    longest = _median(t["longest_task_ms"] for t in typing)
    print(
        f"  typing {query!r} ({len(query)} keys, {key_gap} ms apart): results shown {shown:.0f} ms "
        f"after the first key, {shown - key_gap * (len(query) - 1):.0f} ms after the last; longest "
        f"main-thread task {f'{longest:.0f} ms' if longest else 'under 50 ms'}; {typing[-1]['shown']}"
    )
    print(
        f"  level checkbox toggle to next frame: median {_median(figures['checkbox']):.0f} ms, "
        f"max {max(figures['checkbox']):.0f} ms ({len(figures['checkbox'])} toggles)"
    )
    scroll = figures["scroll"]
    print(f"  scroll: {scroll['deep']:.0f} px deep, {scroll['after_filter']:.0f} px after a filter change")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--data-dir", default=os.environ.get("EMPATHY_DATA_DIR", DEFAULT_DATA_DIR))
    parser.add_argument("--page", help="time this existing page instead of generating one")
    parser.add_argument("--keep", help="write the generated page here (default: a temporary file)")
    parser.add_argument("--query", default="sorry")
    parser.add_argument("--key-gap", type=int, default=50, help="milliseconds between keystrokes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        if args.page:
            page = Path(args.page)
            print(f"page: {page} ({page.stat().st_size / 1e6:.2f} MB)")
        else:
            from empathy.predict.report import render_report

            table, source = scored_table(args.rows, Path(args.data_dir))
            start = time.perf_counter()
            text = render_report(table, title=f"bench, {len(table)} rows")
            seconds = time.perf_counter() - start
            page = Path(args.keep) if args.keep else Path(tmp) / "report.html"
            page.write_text(text, encoding="utf-8")
            size = len(text.encode("utf-8"))
            print(
                f"{len(table)} rows ({source}): page {size / 1e6:.2f} MB "
                f"({size / len(table) / 1e3:.2f} kB a row), generated in {seconds:.2f} s"
            )
        if not args.chromium:
            print("no chromium on PATH: browser timings skipped (apt-get install chromium)")
            return
        print(f"browser: {args.chromium}")
        figures = browser_figures(args.chromium, page, args.query, args.key_gap, args.repeats)
        report_browser(figures, args.query, args.key_gap)


if __name__ == "__main__":
    sys.exit(main())
