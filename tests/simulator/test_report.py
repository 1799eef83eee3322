"""simulator.report: the JSON file and the single-file HTML page with plots (issue 4 item 4).

The sample report follows the stats contract (simulator/stats.py) and is built here with a
seeded RNG: a 60 s run over the population's categories with a few mismatches. The page
is checked as text (plots, titles, numbers, escaping, determinism) and, in headless
Chromium, as pixels: the screenshot must show each plot's own colours.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from simulator import report as rp

HOSTILE = "<script>alert(1)</script>"

CATEGORIES: dict[str, tuple[str, float]] = {
    # category: (expected outcome, share of the traffic)
    "registered_white": ("WHITELISTED", 0.40),
    "grey_in_grace": ("GREYLISTED", 0.10),
    "grey_near_expiry": ("GREYLISTED", 0.05),
    "grey_past_expiry": ("BLACKLISTED", 0.05),
    "stolen": ("BLACKLISTED", 0.07),
    "counterfeit": ("BLACKLISTED", 0.06),
    "malformed_imei": ("5422", 0.03),
    "cloned_cluster": ("BLACKLISTED", 0.04),
    "exception_pair": ("WHITELISTED", 0.04),
    "roamer": ("WHITELISTED", 0.08),
    "grandfathered": ("WHITELISTED", 0.05),
    "brand_new": ("GREYLISTED", 0.03),
}


def sample_report(
    *, seconds: int = 60, rate: int = 200, mismatches: bool = True, seed: int = 4
) -> dict[str, Any]:
    """A realistic report dict as simulator.stats makes it."""
    rng = random.Random(seed)
    names = list(CATEGORIES)
    weights = [CATEGORIES[n][1] for n in names]
    by_cat: dict[str, dict[str, Any]] = {
        n: {
            "sent": 0,
            "answered": 0,
            "mismatches": 0,
            "by_status": Counter(),
            "expected": Counter(),
        }
        for n in names
    }
    timeline: list[dict[str, Any]] = []
    totals: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    latencies: list[float] = []
    sent_total = answered_total = timeouts_total = 0
    sim_start = 1_767_225_600  # 2026-01-01T00:00:00Z
    for sec in range(seconds):
        # an attach storm between 20 s and 30 s: twice the rate, slower answers
        storm = 20 <= sec < 30
        n = rate * (2 if storm else 1)
        row_status: Counter[str] = Counter()
        row_lat: list[float] = []
        row_timeouts = 0
        for _ in range(n):
            cat = rng.choices(names, weights)[0]
            exp = CATEGORIES[cat][0]
            entry = by_cat[cat]
            entry["sent"] += 1
            entry["expected"][exp] += 1
            if storm and rng.random() < 0.002:
                got = "timeout"
                row_timeouts += 1
            else:
                got = exp
                if mismatches and cat == "grey_past_expiry" and rng.random() < 0.03:
                    got = "GREYLISTED"
                elif mismatches and cat == "cloned_cluster" and rng.random() < 0.02:
                    got = "WHITELISTED"
                elif storm and rng.random() < 0.004:
                    got = "3004"
                entry["answered"] += 1
                lat = rng.lognormvariate(math.log(2.0 if not storm else 6.0), 0.5)
                row_lat.append(lat)
            entry["by_status"][got] += 1
            row_status[got] += 1
            expected_ok = got == exp or got == "timeout" or got == "3004"
            if not expected_ok:
                entry["mismatches"] += 1
                if len(examples) < 8:
                    examples.append(
                        {
                            "category": cat,
                            "imei": f"35{rng.randrange(10**13):013d}",
                            "imsi": f"40101{rng.randrange(10**10):010d}",
                            "expected": exp,
                            "got": got,
                            "sim_time": sim_start + sec * 10.0,
                        }
                    )
        row_lat.sort()
        latencies.extend(row_lat)
        sent_total += n
        answered_total += len(row_lat)
        timeouts_total += row_timeouts
        totals.update(row_status)
        timeline.append(
            {
                "t": float(sec),
                "sent": n,
                "answered": len(row_lat),
                "timeouts": row_timeouts,
                "p50_ms": row_lat[len(row_lat) // 2] if row_lat else None,
                "p99_ms": row_lat[int(len(row_lat) * 0.99)] if row_lat else None,
                "by_status": dict(row_status),
            }
        )
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))]

    curve_ps = [0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 99.999]
    mbc = {n: e["mismatches"] for n, e in by_cat.items()}
    return {
        "version": 1,
        "scenario": "smoke",
        "targets": ["127.0.0.1:3868", "127.0.0.1:3869"],
        "started_at": "2026-01-01T00:00:00+00:00",
        "duration_s": float(seconds),
        "sim_start": sim_start,
        "speed": 10.0,
        "sent": sent_total,
        "answered": answered_total,
        "timeouts": timeouts_total,
        "errors": 0,
        "throughput_per_s": answered_total / seconds,
        "latency_ms": {
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "p999": pct(99.9),
            "max": latencies[-1],
            "mean": sum(latencies) / len(latencies),
        },
        "percentile_curve": [[p, pct(p)] for p in curve_ps],
        "timeline": timeline,
        "by_status": dict(totals),
        "mismatches": sum(mbc.values()),
        "mismatches_by_category": mbc,
        "by_category": {
            n: {**e, "by_status": dict(e["by_status"]), "expected": dict(e["expected"])}
            for n, e in by_cat.items()
        },
        "mismatch_examples": examples,
        "protocol": {"cer_sent": 4, "cea_ok": 4, "dwr_sent": 12, "dwa_ok": 12, "reconnects": 0},
        "load": {"kind": "poisson", "rate": rate, "storm": {"at_s": 20, "for_s": 10}},
        "generator_cpu_s": 3.2,
    }


def clean_report() -> dict[str, Any]:
    """No mismatches, no timeouts, no errors: a PASS."""
    r = sample_report(mismatches=False, seconds=20)
    # the sample storm makes timeouts; a clean run has none
    r["timeouts"] = 0
    r["by_status"].pop("timeout", None)
    for row in r["timeline"]:
        row["timeouts"] = 0
        row["by_status"].pop("timeout", None)
    return r


class _Svgs(HTMLParser):
    """Collects each <svg>'s aria-label and <title> text, and any <script> tag."""

    def __init__(self) -> None:
        super().__init__()
        self.svgs: list[dict[str, str]] = []
        self.scripts = 0
        self._in_title = False
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts += 1
        if tag == "svg":
            self._depth += 1
            if self._depth == 1:
                self.svgs.append({"aria": dict(attrs).get("aria-label") or "", "title": ""})
        if tag == "title" and self._depth == 1 and not self.svgs[-1]["title"]:
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._depth -= 1
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.svgs[-1]["title"] += data


def parse(html: str) -> _Svgs:
    p = _Svgs()
    p.feed(html)
    return p


# --------------------------------------------------------------------------- text checks


def test_page_has_the_four_plots_with_titles() -> None:
    html = rp.render_html(sample_report())
    svgs = parse(html).svgs
    assert [s["title"] for s in svgs] == list(rp.PLOT_TITLES.values())
    assert [s["aria"] for s in svgs] == list(rp.PLOT_TITLES.values())
    # each plot draws in its own colours (matplotlib writes colours as #rrggbb)
    for colour in (
        rp.P50_COLOUR,
        rp.P99_COLOUR,
        rp.THROUGHPUT_COLOUR,
        rp.CURVE_COLOUR,
        rp.MISMATCH_COLOUR,
        *rp.STATUS_COLOURS.values(),
    ):
        assert colour in html, colour
    # self-contained: no script, no external resource
    assert parse(html).scripts == 0
    assert "http://" not in html.replace("http://www.w3.org/", "")
    assert "https://" not in html
    assert "<link" not in html


def test_headline_numbers_and_verdict() -> None:
    r = sample_report()
    html = rp.render_html(r)
    assert r["mismatches"] > 0 and r["timeouts"] > 0
    for v in (r["sent"], r["answered"], r["timeouts"], r["mismatches"]):
        assert f">{v:,}<" in html
    lat = r["latency_ms"]
    for key in ("p50", "p99", "p999", "max"):
        assert rp.fmt_ms(lat[key]) in html
    assert rp.fmt_rate(r["throughput_per_s"]) in html
    assert '<div class="verdict fail"' in html
    assert f"{r['mismatches']:,} mismatches in 2 categories" in html
    assert f"{r['timeouts']:,} timeouts" in html
    assert "PASS" not in html


def test_category_table() -> None:
    r = sample_report()
    html = rp.render_html(r)
    start = html.index('id="categories"')
    cat_html = html[start : html.index("</section>", start)]
    for name, entry in r["by_category"].items():
        assert f"<td>{name}</td>" in cat_html
        assert f'<td class="n">{entry["sent"]:,}</td>' in cat_html
    # categories with mismatches come first and are marked
    first_row = cat_html[cat_html.index("<tbody>") :]
    worst = max(r["mismatches_by_category"], key=r["mismatches_by_category"].get)
    assert first_row.startswith(f'<tbody><tr class="bad"><td>{worst}</td>')
    assert cat_html.count('<tr class="bad">') == 2
    # expected and got mixes are shown with status names
    assert "GREYLISTED" in cat_html and "5422 EQUIPMENT_UNKNOWN" in cat_html


def test_hostile_strings_are_escaped() -> None:
    r = sample_report()
    r["mismatch_examples"][0]["imei"] = HOSTILE
    r["mismatch_examples"][1]["got"] = '"><img src=x onerror=alert(1)>'
    r["scenario"] = "<b>x</b>"
    r["targets"] = ["<i>evil</i>:3868"]
    r["protocol"]["<svg onload=alert(1)>"] = 1
    r["by_category"]["<u>cat</u>"] = {
        "sent": 1,
        "answered": 1,
        "mismatches": 1,
        "by_status": {"<x>": 1},
        "expected": {"WHITELISTED": 1},
    }
    r["mismatches_by_category"]["<u>cat</u>"] = 1
    html = rp.render_html(r)
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<b>x</b>" not in html and "<i>evil</i>" not in html and "<u>cat</u>" not in html
    assert "<svg onload" not in html and "<x>" not in html
    assert parse(html).scripts == 0


def test_same_input_same_bytes_even_across_processes(tmp_path: Path) -> None:
    r = sample_report()
    a = rp.render_html(r)
    assert rp.render_html(copy.deepcopy(r)) == a
    # input key order does not matter either
    shuffled = dict(reversed(list(r.items())))
    shuffled["by_status"] = dict(reversed(list(r["by_status"].items())))
    assert rp.render_html(shuffled) == a
    # another interpreter with another hash seed writes the same page
    src = tmp_path / "r.json"
    rp.write_json(r, src)
    out = tmp_path / "r.html"
    code = (
        "import json,sys; from simulator import report as rp; "
        "rp.write_html(json.load(open(sys.argv[1])), sys.argv[2])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(src), str(out)], check=True, env=env)
    assert out.read_text(encoding="utf-8") == a


def test_zero_mismatches_pass_and_banner() -> None:
    r = clean_report()
    assert r["mismatches"] == 0 and r["timeouts"] == 0 and r["errors"] == 0
    html = rp.render_html(r)
    assert rp.verdict(r) == rp.Verdict(True, ())
    assert '<div class="verdict pass"' in html and "<b>PASS</b>" in html
    assert f"0 mismatches in {len(CATEGORIES)} categories" in html
    banner = html[html.index('<div class="banner pass"') :]
    banner = banner[: banner.index("</div>")]
    for name in CATEGORIES:
        assert name in banner
    titles = [s["title"] for s in parse(html).svgs]
    assert titles == [rp.PLOT_TITLES[k] for k in ("latency", "percentiles", "status")]


def test_verdict_names_each_failure() -> None:
    r = clean_report()
    assert rp.verdict({**r, "errors": 2}).reasons == ("2 errors",)
    assert rp.verdict({**r, "timeouts": 1}).reasons == ("1 timeout",)
    v = rp.verdict({**r, "mismatches": 1, "mismatches_by_category": {"stolen": 1}, "errors": 1})
    assert not v.passed and v.reasons == ("1 mismatch in 1 category", "1 error")
    assert rp.verdict({"sent": 0}).reasons == ("no requests sent",)


def test_empty_run_renders() -> None:
    r = {
        "version": 1,
        "scenario": None,
        "targets": ["127.0.0.1:3868"],
        "started_at": "2026-01-01T00:00:00+00:00",
        "duration_s": 5.0,
        "sim_start": None,
        "speed": 1.0,
        "sent": 10,
        "answered": 0,
        "timeouts": 10,
        "errors": 0,
        "throughput_per_s": 0.0,
        "latency_ms": {
            "p50": None,
            "p90": None,
            "p99": None,
            "p999": None,
            "max": None,
            "mean": None,
        },
        "percentile_curve": [],
        "timeline": [],
        "by_status": {"timeout": 10},
        "mismatches": 0,
        "mismatches_by_category": {},
        "by_category": {},
        "mismatch_examples": [],
        "protocol": {},
        "load": {},
        "generator_cpu_s": 0.1,
    }
    html = rp.render_html(r)
    assert "<b>FAIL</b>" in html and "10 timeouts" in html
    assert "no category was checked" in html
    assert len(parse(html).svgs) == 3
    # and with almost nothing at all
    html = rp.render_html({})
    assert "no requests sent" in html and len(parse(html).svgs) == 3
    # timeline rows present but without answers
    r["timeline"] = [
        {
            "t": float(i),
            "sent": 2,
            "answered": 0,
            "timeouts": 2,
            "p50_ms": None,
            "p99_ms": None,
            "by_status": {"timeout": 2},
        }
        for i in range(5)
    ]
    assert len(parse(rp.render_html(r)).svgs) == 3


def test_one_hour_timeline_is_downsampled_and_fast() -> None:
    r = sample_report(seconds=3600, rate=3)
    t0 = time.process_time()
    html = rp.render_html(r)
    spent = time.process_time() - t0
    assert len(parse(html).svgs) == 4
    # generous bound (shared 2-core machine); the target is well under 2 s
    assert spent < 6.0, spent
    buckets = rp._buckets(r["timeline"])
    assert len(buckets) <= rp.MAX_PLOT_POINTS
    assert sum(b.answered for b in buckets) == r["answered"]
    # the worst second survives the merge
    worst = max(row["p99_ms"] for row in r["timeline"] if row["p99_ms"] is not None)
    assert max(b.p99 for b in buckets if b.p99 is not None) == worst


def test_write_json_is_stable_and_strict(tmp_path: Path) -> None:
    r = sample_report(seconds=5)
    r["latency_ms"]["mean"] = float("nan")
    p1, p2 = tmp_path / "a.json", tmp_path / "b.json"
    rp.write_json(r, p1)
    rp.write_json(dict(reversed(list(r.items()))), p2)
    text = p1.read_text(encoding="utf-8")
    assert text == p2.read_text(encoding="utf-8")
    back = json.loads(text)  # strict: NaN was written as null
    assert back["latency_ms"]["mean"] is None
    assert back["sent"] == r["sent"] and back["by_status"] == r["by_status"]
    keys = list(back)
    assert keys[:4] == ["version", "scenario", "targets", "started_at"]
    assert keys.index("sent") < keys.index("timeline")
    assert list(back["timeline"][0])[:2] == ["t", "sent"]
    assert list(back["latency_ms"]) == ["p50", "p90", "p99", "p999", "max", "mean"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_import_is_cheap() -> None:
    code = "import sys, simulator.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- Chromium

WIDTH, HEIGHT = 1280, 2400


def _chromium() -> str:
    from testbed import fdpeer

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if fdpeer.must_not_skip():
        pytest.fail("chromium missing where it is required (CI/EIR_REQUIRE_INTEROP set)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


def _rgb(colour: str) -> tuple[int, int, int]:
    return (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))


def _screenshot(html: str, tmp_path: Path) -> Any:
    import matplotlib.image
    import numpy as np

    exe = _chromium()
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    shot = tmp_path / "shot.png"
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--screenshot={shot}",
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert shot.exists(), f"no screenshot (rc={proc.returncode}): {proc.stderr[-2000:]}"
    img = matplotlib.image.imread(str(shot))
    return np.rint(img[:, :, :3] * 255).astype(np.int16)


def _white_runs(img: Any, x: int = 38, least: int = 50) -> list[tuple[int, int]]:
    """Vertical extents of the white cards, read down a column inside their left padding."""
    white = [*(img[:, x] == 255).all(axis=1).tolist(), False]
    runs: list[tuple[int, int]] = []
    start = None
    for y, w in enumerate(white):
        if w and start is None:
            start = y
        elif not w and start is not None:
            if y - start >= least:
                runs.append((start, y))
            start = None
    return runs


def _near(img: Any, colour: str, tol: int = 6) -> Any:
    import numpy as np

    return np.abs(img - np.array(_rgb(colour), dtype=np.int16)).max(axis=2) <= tol


def _pixels_near(img: Any, colour: str, tol: int = 6) -> int:
    return int(_near(img, colour, tol).sum())


@pytest.mark.interop
def test_chromium_renders_the_plots(tmp_path: Path) -> None:
    import numpy as np

    img = _screenshot(rp.render_html(sample_report()), tmp_path)
    assert img.shape[:2] == (HEIGHT, WIDTH)
    # not blank: plenty of non-background pixels and many distinct colours
    non_bg = (np.abs(img - img[5, 5]).max(axis=2) > 12).mean()
    assert non_bg > 0.05, non_bg
    colours = {tuple(c) for c in img[::3, ::3].reshape(-1, 3).tolist()}
    assert len(colours) > 200
    # the page is a column of white cards: summary, then two rows of two plots
    cards = _white_runs(img)
    assert len(cards) >= 4, cards
    (top1, bottom1), (top2, bottom2) = cards[1], cards[2]
    half = WIDTH // 2
    plots = {
        "latency": img[top1:bottom1, :half],
        "percentiles": img[top1:bottom1, half:],
        "status": img[top2:bottom2, :half],
        "mismatches": img[top2:bottom2, half:],
    }
    # each plot is drawn where it belongs, in its own colours
    for plot, colour, least in [
        ("latency", rp.P50_COLOUR, 150),
        ("latency", rp.P99_COLOUR, 150),
        ("latency", rp.THROUGHPUT_COLOUR, 5000),
        ("percentiles", rp.CURVE_COLOUR, 200),
        ("status", rp.STATUS_COLOURS["WHITELISTED"], 5000),
        ("status", rp.STATUS_COLOURS["GREYLISTED"], 1000),
        ("status", rp.STATUS_COLOURS["BLACKLISTED"], 1000),
        ("mismatches", rp.MISMATCH_COLOUR, 1000),
    ]:
        n = _pixels_near(plots[plot], colour)
        assert n >= least, f"{plot} plot: {n} pixels of {colour}"
    assert _pixels_near(plots["percentiles"], rp.THROUGHPUT_COLOUR) == 0


@pytest.mark.interop
def test_chromium_renders_the_pass_banner(tmp_path: Path) -> None:
    img = _screenshot(rp.render_html(clean_report()), tmp_path)
    assert img.shape[:2] == (HEIGHT, WIDTH)
    cards = _white_runs(img)
    (top1, bottom1), (top2, bottom2) = cards[1], cards[2]
    # the green banner fills the mismatch plot's place; no mismatch bar anywhere
    green = "#e6f4ea"  # --pass-bg in the page CSS
    assert _pixels_near(img[top2:bottom2, WIDTH // 2 :], green, tol=2) > 20000
    assert _pixels_near(img, rp.MISMATCH_COLOUR) == 0
    # the PASS verdict box in the summary card is green too
    assert _pixels_near(img[cards[0][0] : cards[0][1]], green, tol=2) > 20000
    assert _pixels_near(img[top1:bottom1, WIDTH // 2 :], rp.CURVE_COLOUR) >= 200
