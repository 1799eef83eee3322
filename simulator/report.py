"""Run reports: the JSON file and a single-file HTML page with plots (issue 4 item 4).

Owns how the report dict made by ``simulator.stats`` is written to disk and shown to a
person; it computes nothing the stats module owns (percentiles, mismatches), only what a
plot needs (rates per bucket, downsampling of long timelines).

The HTML page is one self-contained file: inline CSS, no script, no network; the plots are
drawn by matplotlib (Agg, no pyplot state) and embedded as inline SVG, each with a
``<title>`` and ``aria-label``. For the same input the bytes are the same: SVG ids are
salted per figure, the SVG date is omitted and nothing reads the clock. Every string taken
from the report is escaped, since an audited EIR chooses what ends up in the examples.

Status colours are fixed (``STATUS_COLOURS``); the statuses are the outcome keys of the
simulator contract: Equipment-Status of a 2001 answer (TS 29.272 7.3.51), otherwise the
Result-Code / Experimental-Result-Code (RFC 6733 7.1, TS 29.272 7.4.3), or ``timeout``.

The page chrome (``page``, ``section``, ``table``, ``chip``, ``banner``, ``svg_of``,
``figure_card``) is shared with other pages such as the audit scorecard.
"""

from __future__ import annotations

import html
import io
import itertools
import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eir.diameter.constants import ExperimentalResultCode, ResultCode

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.typing import RcKeyType

__all__ = [
    "CURVE_COLOUR",
    "MISMATCH_COLOUR",
    "P50_COLOUR",
    "P99_COLOUR",
    "PLOT_TITLES",
    "STATUS_COLOURS",
    "THROUGHPUT_COLOUR",
    "Html",
    "Verdict",
    "banner",
    "chip",
    "esc",
    "figure_card",
    "fmt_duration",
    "fmt_epoch",
    "fmt_int",
    "fmt_ms",
    "fmt_pct",
    "fmt_rate",
    "page",
    "render_html",
    "section",
    "status_colour",
    "status_label",
    "status_sort_key",
    "svg_of",
    "table",
    "verdict",
    "write_html",
    "write_json",
]

Report = Mapping[str, Any]

# --------------------------------------------------------------------------- colours

STATUS_COLOURS: dict[str, str] = {
    "WHITELISTED": "#4caf50",
    "GREYLISTED": "#ffb300",
    "BLACKLISTED": "#b71c1c",
    "timeout": "#7e57c2",
}
# Result codes are all "the EIR said no decision": shades of grey, fixed per code so the
# same code has the same shade in every report.
_CODE_GREYS: dict[str, str] = {
    "5422": "#9e9e9e",
    "3004": "#616161",
    "5004": "#bdbdbd",
    "5005": "#757575",
    "5012": "#8a8a8a",
}
_OTHER_GREYS = ("#a8a8a8", "#6e6e6e", "#c4c4c4", "#828282", "#595959")

P50_COLOUR = "#1e88e5"
P99_COLOUR = "#d81b60"
THROUGHPUT_COLOUR = "#80cbc4"
_THROUGHPUT_EDGE = "#00897b"
CURVE_COLOUR = "#3949ab"
MISMATCH_COLOUR = "#e64a19"

PLOT_TITLES: dict[str, str] = {
    "latency": "Latency and throughput over time",
    "percentiles": "Latency percentile curve",
    "status": "Answer status mix",
    "mismatches": "Mismatches by category",
}

# Longer timelines are merged into buckets so a 1-hour run still renders in well under 2 s.
MAX_PLOT_POINTS = 600
MAX_EXAMPLES_SHOWN = 100


def status_sort_key(key: str) -> tuple[int, int, str]:
    """Display order: the three list colours, result codes by number, others, timeout."""
    fixed = {"WHITELISTED": 0, "GREYLISTED": 1, "BLACKLISTED": 2, "timeout": 5}
    if key in fixed:
        return (fixed[key], 0, "")
    if key.isdigit():
        return (3, int(key), "")
    return (4, 0, key)


def status_colour(key: str) -> str:
    if key in STATUS_COLOURS:
        return STATUS_COLOURS[key]
    if key in _CODE_GREYS:
        return _CODE_GREYS[key]
    n = int(key) if key.isdigit() else sum(key.encode())
    return _OTHER_GREYS[n % len(_OTHER_GREYS)]


def status_label(key: str) -> str:
    """``"5422"`` -> ``"5422 EQUIPMENT_UNKNOWN"``; list statuses and unknown keys as is."""
    if not key.isdigit():
        return key
    code = int(key)
    for enum in (ExperimentalResultCode, ResultCode):
        try:
            name = enum(code).name
        except ValueError:
            continue
        return f"{key} {name.removeprefix('ERROR_')}"
    return key


def _text_on(colour: str) -> str:
    """Black or white text, whichever reads on ``colour`` (sRGB relative luminance)."""
    r, g, b = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return "#000000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "#ffffff"


# --------------------------------------------------------------------------- values


def _num(v: object) -> float | None:
    """A finite float, or None for anything missing or not a number."""
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        return None
    try:
        f = float(v)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def _int(v: object) -> int:
    f = _num(v)
    return int(f) if f is not None else 0


def _counts(v: object) -> dict[str, int]:
    """A ``{status: count}`` mapping with string keys; anything else becomes empty."""
    if not isinstance(v, Mapping):
        return {}
    return {str(k): _int(n) for k, n in v.items()}


def fmt_int(v: object) -> str:
    f = _num(v)
    return "–" if f is None else f"{int(f):,}"


def fmt_ms(v: object) -> str:
    f = _num(v)
    if f is None:
        return "–"
    return f"{f:,.0f} ms" if abs(f) >= 100 else f"{f:.3g} ms"


def fmt_rate(v: object) -> str:
    f = _num(v)
    if f is None:
        return "–"
    return f"{f:,.0f}/s" if abs(f) >= 100 else f"{f:.1f}/s"


def fmt_pct(part: float, whole: float) -> str:
    """A share that never rounds to a misleading 0% or 100%."""
    if whole <= 0:
        return "–"
    p = 100.0 * part / whole
    if p in (0.0, 100.0):
        return f"{p:.0f}%"
    if p > 99:
        return f"{math.floor(p * 100) / 100:.2f}%"
    if p >= 10:
        return f"{p:.0f}%"
    return f"{p:.2g}%" if p >= 0.01 else "<0.01%"


def fmt_duration(v: object) -> str:
    f = _num(v)
    if f is None:
        return "–"
    if f < 120:
        return f"{f:.1f} s"
    m, s = divmod(round(f), 60)
    if m < 120:
        return f"{m} min {s} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


def fmt_epoch(v: object) -> str:
    f = _num(v)
    if f is None:
        return "–"
    try:
        return datetime.fromtimestamp(f, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return str(v)


def _fmt_clock(x: float, _pos: object = None) -> str:
    """Axis ticks for seconds since start: ``45``, ``1:30``, ``1:02:00``."""
    x = round(x)
    sign = "-" if x < 0 else ""
    x = abs(x)
    if x < 60:
        return f"{sign}{x}"
    m, s = divmod(x, 60)
    if m < 60:
        return f"{sign}{m}:{s:02d}"
    h, m = divmod(m, 60)
    return f"{sign}{h}:{m:02d}:{s:02d}"


# --------------------------------------------------------------------------- verdict


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...]

    @property
    def word(self) -> str:
        return "PASS" if self.passed else "FAIL"


def verdict(report: Report) -> Verdict:
    """PASS when nothing mismatched, timed out or failed; FAIL names what did.

    A run that sent nothing is a FAIL too: it proves nothing about the EIR.
    """
    reasons: list[str] = []
    mism = _int(report.get("mismatches"))
    if mism:
        cats = sum(1 for n in _counts(report.get("mismatches_by_category")).values() if n)
        where = f" in {cats} categor{'y' if cats == 1 else 'ies'}" if cats else ""
        reasons.append(f"{mism:,} mismatch{'es' if mism != 1 else ''}{where}")
    for key, word in (("timeouts", "timeout"), ("errors", "error")):
        n = _int(report.get(key))
        if n:
            reasons.append(f"{n:,} {word}{'s' if n != 1 else ''}")
    proto = report.get("protocol")
    no_peer = _int(proto.get("not_sent_no_peer")) if isinstance(proto, Mapping) else 0
    if no_peer:
        reasons.append(f"{no_peer:,} request{'s' if no_peer != 1 else ''} not sent: "
                       "no open connection")
    if _int(report.get("sent")) == 0:
        reasons.append("no requests sent")
    return Verdict(passed=not reasons, reasons=tuple(reasons))


# --------------------------------------------------------------------------- JSON

_FIELD_GROUPS = (  # contract order, one group per level of the report
    "t category imei imsi",  # what leads a timeline row or a mismatch example
    "version scenario targets started_at duration_s sim_start speed",
    "sent answered timeouts errors throughput_per_s latency_ms percentile_curve timeline",
    "by_status mismatches mismatches_by_category by_category mismatch_examples",
    "protocol load generator_cpu_s",
    "p50 p90 p99 p999 max mean p50_ms p99_ms",
    "expected got sim_time",
)
_FIELD_RANK = {k: i for i, k in enumerate(k for g in _FIELD_GROUPS for k in g.split())}


def _json_key(k: str) -> tuple[int, int, int, str]:
    if k in _FIELD_RANK:
        return (0, _FIELD_RANK[k], 0, "")
    return (1, *status_sort_key(k))


def _canonical(obj: object) -> object:
    """Keys in a stable, readable order (contract order, then statuses, then by name);
    non-finite floats become null so the file stays strict JSON."""
    if isinstance(obj, Mapping):
        items = sorted(((str(k), v) for k, v in obj.items()), key=lambda kv: _json_key(kv[0]))
        return {k: _canonical(v) for k, v in items}
    if isinstance(obj, list | tuple):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, str | int | float):
        return obj
    return str(obj)


_JSON_WIDTH = 100


def _dumps(obj: object, level: int = 0) -> str:
    """Indented JSON where any container that fits on a line stays on one line, so a
    timeline row or a percentile point reads as one line instead of ten."""
    flat = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))
    if not isinstance(obj, dict | list) or not obj or len(flat) + 2 * level <= _JSON_WIDTH:
        return flat
    pad, end = "  " * (level + 1), "  " * level
    if isinstance(obj, dict):
        items = [
            f"{pad}{json.dumps(k, ensure_ascii=False)}: {_dumps(v, level + 1)}"
            for k, v in obj.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    return "[\n" + ",\n".join(pad + _dumps(v, level + 1) for v in obj) + "\n" + end + "]"


def _atomic_write(path: str | os.PathLike[str], text: str) -> None:
    """A reader never sees half a report (the testbed may poll for it)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)


def write_json(report: Report, path: str | os.PathLike[str]) -> None:
    """The report as strict JSON (NaN becomes null), keys in a stable order."""
    _atomic_write(path, _dumps(_canonical(report)) + "\n")


# --------------------------------------------------------------------------- page chrome


class Html(str):
    """A string of HTML that is already safe; ``esc`` passes it through unchanged."""

    __slots__ = ()


def esc(v: object) -> str:
    if isinstance(v, Html):
        return v
    return html.escape("" if v is None else str(v), quote=True)


def _join(parts: Iterable[str]) -> Html:
    return Html("".join(parts))


CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#e3e7ec;--bg:#f5f7fa;--card:#fff;
--pass:#1b7f3b;--pass-bg:#e6f4ea;--fail:#b3261e;--fail-bg:#fce8e6;--info-bg:#e8f0fe}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 "DejaVu Sans","Liberation Sans",Arial,sans-serif}
main{max-width:1260px;margin:0 auto;padding:18px 20px 40px}
header h1{font-size:22px;margin:0 0 2px}
header .sub{color:var(--muted);margin:0 0 10px}
nav{font-size:13px;margin:0 0 14px}
nav a{color:var(--muted);margin-right:14px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;
padding:14px 16px;margin:0 0 16px}
section>h2{font-size:16px;margin:0 0 10px}
.verdict{display:flex;align-items:center;gap:16px;border-radius:8px;padding:10px 16px;
margin:0 0 14px;font-size:15px}
.verdict b{font-size:30px;letter-spacing:1px}
.verdict.pass{background:var(--pass-bg);color:var(--pass);border:2px solid var(--pass)}
.verdict.fail{background:var(--fail-bg);color:var(--fail);border:2px solid var(--fail)}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(104px,1fr));gap:8px}
.card{border:1px solid var(--line);border-radius:6px;padding:6px 10px;background:#fbfcfd}
.card .k{color:var(--muted);font-size:12px}
.card .v{font-size:20px;font-weight:600;white-space:nowrap}
.card.bad{border-color:var(--fail);background:var(--fail-bg)}
.card.bad .v{color:var(--fail)}
.meta{color:var(--muted);font-size:13px;margin:10px 0 0}
.meta span{margin-right:16px;white-space:nowrap}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:14px}
.grid section{margin:0}
figure{margin:0}
svg.plot{display:block;width:100%;height:auto}
svg.plot text{font-family:"DejaVu Sans","Liberation Sans",Arial,sans-serif!important}
.banner{border-radius:8px;padding:14px 16px;font-size:15px}
.banner.pass{background:var(--pass-bg);color:var(--pass);border:1px solid var(--pass)}
.banner.fail{background:var(--fail-bg);color:var(--fail);border:1px solid var(--fail)}
.banner.info{background:var(--info-bg);border:1px solid #aac4f6}
.banner .chip{background:#fff;color:var(--fg);border:1px solid #b7d8c0}
.banner big{display:block;font-size:26px;font-weight:700;margin-bottom:6px}
table{border-collapse:collapse;width:100%;font-size:13px}
caption{text-align:left;color:var(--muted);padding:0 0 6px}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#f0f3f6;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.bad td{background:var(--fail-bg)}
tr.bad td.n:last-child{color:var(--fail);font-weight:700}
code,.mono{font-family:"DejaVu Sans Mono",monospace;font-size:12px;word-break:break-all}
.chip{display:inline-block;border-radius:10px;padding:0 8px;margin:1px 4px 1px 0;
font-size:12px;line-height:18px;white-space:nowrap}
.two{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));gap:14px}
.muted{color:var(--muted)}
"""


def page(
    title: str,
    sections: Iterable[str],
    *,
    subtitle: str = "",
    nav: Sequence[tuple[str, str]] = (),
) -> str:
    """A complete, self-contained HTML document. ``sections`` are HTML fragments (use
    ``section``); ``nav`` is ``(anchor_id, label)`` pairs for a contents line."""
    links = _join(f'<a href="#{esc(a)}">{esc(label)}</a>' for a, label in nav)
    return "".join(
        [
            "<!DOCTYPE html>\n",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><main>",
            f"<header><h1>{esc(title)}</h1>",
            f'<p class="sub">{esc(subtitle)}</p>' if subtitle else "",
            f"<nav>{links}</nav>" if nav else "",
            "</header>\n",
            "\n".join(sections),
            "\n</main></body></html>\n",
        ]
    )


def section(heading: str, body: str, *, anchor: str = "") -> Html:
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return Html(f"<section{ident}><h2>{esc(heading)}</h2>{body}</section>")


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    numeric: Iterable[int] = (),
    caption: str = "",
    row_class: Sequence[str] = (),
) -> Html:
    """Cells are escaped unless they are ``Html``; ``numeric`` columns align right."""
    num = set(numeric)

    def cls(i: int) -> str:
        return ' class="n"' if i in num else ""

    head = _join(f'<th scope="col"{cls(i)}>{esc(h)}</th>' for i, h in enumerate(headers))
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    body: list[str] = []
    for r, row in enumerate(rows):
        rc = row_class[r] if r < len(row_class) and row_class[r] else ""
        tr = f'<tr class="{esc(rc)}">' if rc else "<tr>"
        body.append(tr + "".join(f"<td{cls(i)}>{esc(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return Html(f"<table>{cap}{thead}<tbody>{''.join(body)}</tbody></table>")


def chip(label: str, colour: str) -> Html:
    return Html(
        f'<span class="chip" style="background:{esc(colour)};color:{_text_on(colour)}">'
        f"{esc(label)}</span>"
    )


def banner(body: str, kind: str = "info") -> Html:
    """A coloured box; ``kind`` is ``pass``, ``fail`` or ``info``."""
    return Html(f'<div class="banner {esc(kind)}" role="status">{body}</div>')


def figure_card(heading: str, body: str) -> Html:
    return section(heading, f"<figure>{body}</figure>")


_SVG_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.S)
_SVG_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


def svg_of(fig: Figure, title: str, *, desc: str = "") -> Html:
    """The figure as an inline ``<svg>`` element with a title (and description) for screen
    readers. The id salt is derived from the title, so several figures on one page never
    share ids and the same figure always gets the same bytes."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"eir:{title}", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = _SVG_METADATA.sub("", _SVG_PROLOGUE.sub("", buf.getvalue(), count=1), count=1)
    open_end = text.index(">") + 1
    head = text[: open_end - 1].replace(
        "<svg ", f'<svg class="plot" role="img" aria-label="{esc(title)}" ', 1
    )
    inner = f"<title>{esc(title)}</title>" + (f"<desc>{esc(desc)}</desc>" if desc else "")
    return Html(head + ">" + inner + text[open_end:].rstrip() + "\n")


# --------------------------------------------------------------------------- timeline


@dataclass
class _Bucket:
    t: float
    width: float
    sent: int = 0
    answered: int = 0
    timeouts: int = 0
    p50: float | None = None
    p99: float | None = None
    by_status: dict[str, int] = field(default_factory=dict)


def _buckets(timeline: object, max_points: int = MAX_PLOT_POINTS) -> list[_Bucket]:
    """Timeline rows as buckets with a width; merged when there are too many to plot.

    In a merged bucket p50 is the median of its rows' p50 and p99 their maximum: a
    plot may smooth the middle but must not hide the worst second.
    """
    if not isinstance(timeline, Sequence):
        return []
    rows: list[_Bucket] = []
    for r in timeline:
        if not isinstance(r, Mapping):
            continue
        t = _num(r.get("t"))
        if t is None:
            continue
        rows.append(
            _Bucket(
                t=t,
                width=0.0,
                sent=_int(r.get("sent")),
                answered=_int(r.get("answered")),
                timeouts=_int(r.get("timeouts")),
                p50=_num(r.get("p50_ms")),
                p99=_num(r.get("p99_ms")),
                by_status=_counts(r.get("by_status")),
            )
        )
    rows.sort(key=lambda b: b.t)
    if not rows:
        return []
    steps = [b.t - a.t for a, b in itertools.pairwise(rows) if b.t > a.t]
    step = statistics.median(steps) if steps else 1.0
    for b in rows:
        b.width = step
    if len(rows) <= max_points:
        return rows
    g = math.ceil(len(rows) / max_points)
    merged: list[_Bucket] = []
    for i in range(0, len(rows), g):
        grp = rows[i : i + g]
        p50s = [b.p50 for b in grp if b.p50 is not None]
        p99s = [b.p99 for b in grp if b.p99 is not None]
        mix: dict[str, int] = {}
        for b in grp:
            for k, n in b.by_status.items():
                mix[k] = mix.get(k, 0) + n
        merged.append(
            _Bucket(
                t=grp[0].t,
                width=step * len(grp),
                sent=sum(b.sent for b in grp),
                answered=sum(b.answered for b in grp),
                timeouts=sum(b.timeouts for b in grp),
                p50=statistics.median(p50s) if p50s else None,
                p99=max(p99s) if p99s else None,
                by_status=mix,
            )
        )
    return merged


# --------------------------------------------------------------------------- plots

_RC: dict[RcKeyType, Any] = {
    # DejaVu Sans ships with matplotlib, so text is measured with the font the CSS asks for.
    "font.family": "DejaVu Sans",
    "font.size": 9.5,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#9aa3ad",
    "axes.labelcolor": "#333333",
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e8ebef",
    "grid.linewidth": 0.8,
    "xtick.color": "#555555",
    "ytick.color": "#555555",
    "legend.frameon": False,
    "legend.fontsize": 8.5,
    "path.simplify": True,
    "svg.fonttype": "none",
}

_WIDE = 6.6  # inches; two plots side by side on a 1280 px screen


@contextmanager
def _plotting() -> Iterator[None]:
    import matplotlib

    matplotlib.use("Agg")  # never a GUI backend, whatever the environment says
    with matplotlib.rc_context(_RC):
        yield


def _new_figure(height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(_WIDE, height), layout="constrained")


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#777777")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _log_if_wide(ax: Axes, values: Iterable[float | None], ratio: float = 20.0) -> None:
    pos = [v for v in values if v is not None and v > 0]
    if pos and max(pos) / min(pos) > ratio:
        ax.set_yscale("log")


_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)


def _clock_axis(ax: Axes, span: float) -> None:
    """Ticks on round clock steps (10 s, 5 min, 1 h), labelled 45, 1:30 or 1:02:00."""
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    step = next((s for s in _TIME_STEPS if span / s <= 8), _TIME_STEPS[-1])
    ax.xaxis.set_major_locator(MultipleLocator(step))
    ax.xaxis.set_major_formatter(FuncFormatter(_fmt_clock))
    unit = "s" if span < 60 else "m:ss" if span <= 3600 else "h:mm:ss"
    ax.set_xlabel(f"time since start ({unit})")


def _plot_latency(buckets: Sequence[_Bucket]) -> Figure:
    fig = _new_figure(4.3)
    ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    if not buckets or not any(b.answered or b.timeouts or b.sent for b in buckets):
        _empty(ax, "no answers")
        _empty(ax2, "no throughput")
        return fig
    nan = float("nan")
    t = [b.t for b in buckets]
    edge = [*t, t[-1] + buckets[-1].width]
    p50 = [b.p50 if b.p50 is not None else nan for b in buckets]
    p99 = [b.p99 if b.p99 is not None else nan for b in buckets]
    if any(b.p50 is not None or b.p99 is not None for b in buckets):
        ax.plot(t, p99, color=P99_COLOUR, lw=1.8, label="p99")
        ax.plot(t, p50, color=P50_COLOUR, lw=1.8, label="p50")
        _log_if_wide(ax, [b.p50 for b in buckets] + [b.p99 for b in buckets])
        ax.set_ylabel("latency (ms)")
        ax.legend(loc="upper left", ncols=2)
    else:
        _empty(ax, "no answers, so no latency")

    rate = [b.answered / b.width for b in buckets]
    ax2.stairs(rate, edge, fill=True, color=THROUGHPUT_COLOUR, label="answers/s")
    ax2.stairs(rate, edge, color=_THROUGHPUT_EDGE, lw=1.0)
    if any(b.timeouts for b in buckets):
        ax2.stairs(
            [b.timeouts / b.width for b in buckets],
            edge,
            color=STATUS_COLOURS["timeout"],
            lw=1.6,
            label="timeouts/s",
        )
    ax2.set_ylabel("answers/s")
    ax2.set_ylim(bottom=0)
    ax2.set_xlim(edge[0], edge[-1])
    ax2.legend(loc="lower left", ncols=2)
    _clock_axis(ax2, edge[-1] - edge[0])
    return fig


def _nines(p: float) -> float:
    """Percentile on the "nines" scale: 90 -> 1, 99 -> 2, 99.9 -> 3."""
    return -math.log10(1.0 - p / 100.0)


_NINES_TICKS = (50.0, 90.0, 99.0, 99.9, 99.99, 99.999)


def _plot_percentiles(curve: object, latency: Mapping[str, Any]) -> Figure:
    fig = _new_figure(4.3)
    ax = fig.subplots()
    pts: list[tuple[float, float]] = []
    if isinstance(curve, Sequence):
        for item in curve:
            if not isinstance(item, Sequence) or len(item) < 2:
                continue
            p, ms = _num(item[0]), _num(item[1])
            if p is not None and ms is not None and 0 <= p < 100:
                pts.append((_nines(p), ms))
    pts.sort()
    marks = [
        (label, p, v)
        for label, p, key in (
            ("p50", 50.0, "p50"),
            ("p90", 90.0, "p90"),
            ("p99", 99.0, "p99"),
            ("p99.9", 99.9, "p999"),
        )
        if (v := _num(latency.get(key))) is not None
    ]
    top = _num(latency.get("max"))
    if not pts and not marks:
        _empty(ax, "no answers")
        return fig
    if pts:
        ax.plot([x for x, _ in pts], [y for _, y in pts], color=CURVE_COLOUR, lw=2.2)
    for label, p, v in marks:
        ax.plot([_nines(p)], [v], "o", color=CURVE_COLOUR, ms=5)
        first = p == 50.0  # nothing to the left of p50: label it on the right
        ax.annotate(
            f"{label} {fmt_ms(v)}",
            (_nines(p), v),
            xytext=(7, -3) if first else (-6, 7),
            textcoords="offset points",
            ha="left" if first else "right",
            va="top" if first else "baseline",
            fontsize=8.5,
            color="#222222",
        )
    xmax = max([5.0] + [x for x, _ in pts])
    if top is not None:
        ax.axhline(top, color="#888888", lw=1.0, ls="--")
        ax.annotate(
            f"max {fmt_ms(top)}",
            (xmax, top),
            xytext=(0, 3),
            textcoords="offset points",
            ha="right",
            fontsize=8.5,
            color="#555555",
        )
    ticks = [p for p in _NINES_TICKS if _nines(p) <= xmax + 1e-9]
    ax.set_xticks([_nines(p) for p in ticks], [f"{p:g}" for p in ticks])
    ax.set_xlim(_nines(50.0) - 0.05, xmax + 0.1)
    ax.set_xlabel("percentile (nines scale)")
    ax.set_ylabel("latency (ms)")
    shown = [y for x, y in pts if x >= _nines(50.0)] + [v for _, _, v in marks]
    if top is not None:
        shown.append(top)
    _log_if_wide(ax, shown, ratio=30.0)
    if ax.get_yscale() != "log":
        ax.set_ylim(bottom=0, top=max(shown) * 1.12 if shown and max(shown) > 0 else 1.0)
    return fig


def _fitting_label(key: str, pct: str, share: float) -> str:
    """The longest of "NAME 12%" / "12%" / nothing that fits a bar segment of ``share``
    of the plot width (about 90 characters of 8 pt text fit the whole width)."""
    room = share * 90
    for label in (f"{key} {pct}", pct):
        if len(label) + 1 <= room:
            return label
    return ""


def _plot_status(buckets: Sequence[_Bucket], totals: Mapping[str, int]) -> Figure:
    fig = _new_figure(4.3)
    ax, axt = fig.subplots(2, 1, height_ratios=[4, 1])
    keys = sorted({k for b in buckets for k in b.by_status} | set(totals), key=status_sort_key)
    total = sum(totals.values())
    if buckets and any(b.by_status for b in buckets):
        t = [b.t for b in buckets]
        edge = [*t, t[-1] + buckets[-1].width]
        base = [0.0] * len(buckets)
        for k in keys:
            vals = [b.by_status.get(k, 0) / b.width for b in buckets]
            if not any(vals):
                continue
            top = [a + v for a, v in zip(base, vals, strict=True)]
            ax.stairs(
                top,
                edge,
                baseline=base,
                fill=True,
                color=status_colour(k),
                label=f"{status_label(k)} ({totals.get(k, 0):,})",
            )
            base = top
        ax.set_xlim(edge[0], edge[-1])
        ax.set_ylim(bottom=0)
        ax.set_ylabel("answers/s by status")
        _clock_axis(ax, edge[-1] - edge[0])
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=3, fontsize=8)
    else:
        _empty(ax, "no answers over time")
    if total > 0:
        left = 0.0
        for k in keys:
            n = totals.get(k, 0)
            if n <= 0:
                continue
            share = n / total
            colour = status_colour(k)
            axt.barh([0], [share], left=left, color=colour, height=0.8)
            label = _fitting_label(k, fmt_pct(n, total), share)
            if label:
                axt.text(
                    left + share / 2,
                    0,
                    label,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color=_text_on(colour),
                )
            left += share
        axt.set_xlim(0, 1)
        axt.set_ylim(-0.5, 0.5)
        axt.set_yticks([])
        axt.xaxis.set_major_formatter(lambda x, _pos: f"{x:.0%}")
        axt.grid(False)
        axt.set_title(f"totals: {total:,} outcomes", loc="left", fontsize=8.5)
    else:
        _empty(axt, "no outcomes")
    return fig


def _plot_mismatches(cats: Sequence[tuple[str, int, int]]) -> Figure:
    """``cats`` is ``(name, mismatches, sent)``, already in display order."""
    fig = _new_figure(max(2.2, 1.0 + 0.3 * len(cats)))
    ax = fig.subplots()
    y = list(range(len(cats)))
    vals = [m for _, m, _ in cats]
    ax.barh(y, vals, color=MISMATCH_COLOUR, height=0.65)
    ax.set_yticks(y, [name for name, _, _ in cats])
    ax.invert_yaxis()
    vmax = max(vals) if vals else 1
    for i, (_, m, sent) in enumerate(cats):
        text = f" {m:,} of {sent:,} ({fmt_pct(m, sent)})" if m else " 0"
        ax.text(m, i, text, va="center", fontsize=8.5, color="#222222" if m else "#888888")
    ax.set_xlim(0, vmax * 1.45)
    ax.set_xlabel("mismatches (answer differs from expectation)")
    ax.grid(axis="y", visible=False)
    return fig


# --------------------------------------------------------------------------- HTML report


def _categories(report: Report) -> list[tuple[str, int, int]]:
    """Every category checked, as ``(name, mismatches, sent)``, worst first."""
    by_cat = report.get("by_category")
    by_cat = by_cat if isinstance(by_cat, Mapping) else {}
    mbc = _counts(report.get("mismatches_by_category"))
    out: list[tuple[str, int, int]] = []
    for name in {str(k) for k in by_cat} | set(mbc):
        entry = by_cat.get(name)
        entry = entry if isinstance(entry, Mapping) else {}
        m = mbc[name] if name in mbc else _int(entry.get("mismatches"))
        out.append((name, m, _int(entry.get("sent"))))
    out.sort(key=lambda c: (-c[1], c[0]))
    return out


def _mix(counts: Mapping[str, int]) -> Html:
    if not counts:
        return Html('<span class="muted">–</span>')
    return _join(
        chip(f"{status_label(k)} {n:,}", status_colour(k))
        for k, n in sorted(counts.items(), key=lambda kv: status_sort_key(kv[0]))
    )


def _card(label: str, value: str, bad: bool = False) -> str:
    cls = "card bad" if bad else "card"
    return (
        f'<div class="{cls}"><div class="k">{esc(label)}</div>'
        f'<div class="v">{esc(value)}</div></div>'
    )


def _summary(report: Report, v: Verdict) -> Html:
    lat = report.get("latency_ms")
    lat = lat if isinstance(lat, Mapping) else {}
    sent, answered = _int(report.get("sent")), _int(report.get("answered"))
    timeouts, errors = _int(report.get("timeouts")), _int(report.get("errors"))
    mism = _int(report.get("mismatches"))
    why = "; ".join(v.reasons) if v.reasons else "0 mismatches · 0 timeouts · 0 errors"
    head = (
        f'<div class="verdict {"pass" if v.passed else "fail"}" role="status">'
        f"<b>{v.word}</b><span>{esc(why)}</span></div>"
    )
    cards = [
        _card("sent", fmt_int(sent), bad=sent == 0),
        _card(f"answered ({fmt_pct(answered, sent)})", fmt_int(answered)),
        _card("timeouts", fmt_int(timeouts), bad=timeouts > 0),
        _card("errors", fmt_int(errors), bad=errors > 0),
        _card("mismatches", fmt_int(mism), bad=mism > 0),
        _card("throughput", fmt_rate(report.get("throughput_per_s"))),
        _card("p50", fmt_ms(lat.get("p50"))),
        _card("p99", fmt_ms(lat.get("p99"))),
        _card("p99.9", fmt_ms(lat.get("p999"))),
        _card("max", fmt_ms(lat.get("max"))),
    ]
    meta = [
        ("scenario", report.get("scenario") or "–"),
        ("started", report.get("started_at") or "–"),
        ("duration", fmt_duration(report.get("duration_s"))),
        ("targets", ", ".join(str(t) for t in _targets(report)) or "–"),
    ]
    return section(
        "Summary",
        head
        + f'<div class="cards">{"".join(cards)}</div>'
        + '<p class="meta">'
        + "".join(f"<span>{esc(k)}: <b>{esc(val)}</b></span>" for k, val in meta)
        + "</p>",
        anchor="summary",
    )


def _targets(report: Report) -> list[object]:
    t = report.get("targets")
    if isinstance(t, str):
        return [t]
    return list(t) if isinstance(t, Sequence) else []


def _mismatch_banner(cats: Sequence[tuple[str, int, int]]) -> Html:
    if not cats:
        return banner(
            "<big>0 mismatches</big>but no category was checked: "
            "the run had no expectations to compare with.",
            "info",
        )
    names = _join(chip(name, "#ffffff") for name, _, _ in sorted(cats))
    n = len(cats)
    return banner(
        f"<big>0 mismatches in {n} categor{'y' if n == 1 else 'ies'}</big>"
        f"every answer matched its expectation. Categories checked: {names}",
        "pass",
    )


def _category_table(report: Report, cats: Sequence[tuple[str, int, int]]) -> Html:
    by_cat = report.get("by_category")
    by_cat = by_cat if isinstance(by_cat, Mapping) else {}
    rows: list[list[object]] = []
    classes: list[str] = []
    for name, m, sent in cats:
        entry = by_cat.get(name)
        entry = entry if isinstance(entry, Mapping) else {}
        answered = _int(entry.get("answered"))
        rows.append(
            [
                name,
                fmt_int(sent),
                fmt_int(answered),
                _mix(_counts(entry.get("expected"))),
                _mix(_counts(entry.get("by_status"))),
                fmt_pct(m, sent) if sent else "–",
                fmt_int(m),
            ]
        )
        classes.append("bad" if m else "")
    if not rows:
        return Html('<p class="muted">No categories in this report.</p>')
    return table(
        ["category", "sent", "answered", "expected mix", "got mix", "mismatch rate", "mismatches"],
        rows,
        numeric=(1, 2, 5, 6),
        row_class=classes,
    )


def _examples_table(report: Report) -> Html:
    ex = report.get("mismatch_examples")
    ex = [e for e in ex if isinstance(e, Mapping)] if isinstance(ex, Sequence) else []
    if not ex:
        return Html('<p class="muted">No mismatch examples.</p>')
    rows: list[list[object]] = []
    for e in ex[:MAX_EXAMPLES_SHOWN]:
        exp, got = str(e.get("expected", "")), str(e.get("got", ""))
        rows.append(
            [
                e.get("category", ""),
                Html(f'<span class="mono">{esc(e.get("imei", ""))}</span>'),
                Html(f'<span class="mono">{esc(e.get("imsi") or "–")}</span>'),
                chip(status_label(exp), status_colour(exp)),
                chip(status_label(got), status_colour(got)),
                fmt_epoch(e.get("sim_time")),
            ]
        )
    cap = (
        f"showing {MAX_EXAMPLES_SHOWN} of {len(ex):,} examples"
        if len(ex) > MAX_EXAMPLES_SHOWN
        else f"{len(ex):,} example{'s' if len(ex) != 1 else ''}"
    )
    return table(
        ["category", "IMEI", "IMSI", "expected", "got", "simulated time"], rows, caption=cap
    )


def _status_table(totals: Mapping[str, int]) -> Html:
    total = sum(totals.values())
    rows = [
        [chip(status_label(k), status_colour(k)), fmt_int(n), fmt_pct(n, total)]
        for k, n in sorted(totals.items(), key=lambda kv: status_sort_key(kv[0]))
    ]
    if not rows:
        return Html('<p class="muted">No outcomes.</p>')
    return table(["status", "count", "share"], rows, numeric=(1, 2))


def _value(v: object) -> object:
    if isinstance(v, Mapping | list | tuple):
        return Html(f"<code>{esc(json.dumps(_canonical(v), ensure_ascii=False))}</code>")
    return v if v is not None else "–"


def _kv_table(m: object, empty: str) -> Html:
    if not isinstance(m, Mapping) or not m:
        return Html(f'<p class="muted">{esc(empty)}</p>')
    rows = [[k, _value(m[k])] for k in sorted(m, key=str)]
    return table(["", ""], rows, numeric=())


def _run_table(report: Report) -> Html:
    dur = _num(report.get("duration_s"))
    cpu = _num(report.get("generator_cpu_s"))
    cpu_text = "–"
    if cpu is not None:
        cpu_text = f"{cpu:.2f} s" + (f" ({fmt_pct(cpu, dur)} of wall time)" if dur else "")
    sim0, speed = _num(report.get("sim_start")), _num(report.get("speed"))
    sim_window = "–"
    if sim0 is not None:
        end = sim0 + (dur or 0.0) * (speed or 1.0)
        sim_window = f"{fmt_epoch(sim0)} → {fmt_epoch(end)}"
    rows = [
        [
            "targets",
            Html(
                "<br>".join(f'<span class="mono">{esc(t)}</span>' for t in _targets(report)) or "–"
            ),
        ],
        ["scenario", report.get("scenario") or "–"],
        ["started at", report.get("started_at") or "–"],
        ["duration", fmt_duration(dur)],
        ["clock speed", f"{speed:g}×" if speed is not None else "–"],
        ["simulated time", sim_window],
        ["simulator CPU", cpu_text],
        ["report version", report.get("version", "–")],
    ]
    return table(["", ""], rows)


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (see the module docstring)."""
    v = verdict(report)
    lat = report.get("latency_ms")
    lat = lat if isinstance(lat, Mapping) else {}
    buckets = _buckets(report.get("timeline"))
    totals = _counts(report.get("by_status"))
    cats = _categories(report)
    mism = _int(report.get("mismatches"))
    with _plotting():
        fig = _plot_latency(buckets)
        latency_svg = svg_of(
            fig,
            PLOT_TITLES["latency"],
            desc=f"p50 and p99 latency per interval, and answers per second; overall p50 "
            f"{fmt_ms(lat.get('p50'))}, p99 {fmt_ms(lat.get('p99'))}, throughput "
            f"{fmt_rate(report.get('throughput_per_s'))}.",
        )
        fig = _plot_percentiles(report.get("percentile_curve"), lat)
        pct_svg = svg_of(
            fig,
            PLOT_TITLES["percentiles"],
            desc=f"latency by percentile from 50 to 99.999; p99.9 {fmt_ms(lat.get('p999'))}, "
            f"max {fmt_ms(lat.get('max'))}.",
        )
        fig = _plot_status(buckets, totals)
        status_svg = svg_of(
            fig,
            PLOT_TITLES["status"],
            desc="answers per second by status, and the share of each status overall: "
            + ", ".join(
                f"{k} {n:,}"
                for k, n in sorted(totals.items(), key=lambda kv: status_sort_key(kv[0]))
            ),
        )
        if mism > 0 or any(m for _, m, _ in cats):
            fig = _plot_mismatches(cats)
            mism_body: str = svg_of(
                fig,
                PLOT_TITLES["mismatches"],
                desc="mismatches per category: "
                + ", ".join(f"{name} {m:,} of {sent:,}" for name, m, sent in cats),
            )
        else:
            mism_body = _mismatch_banner(cats)
    plots = Html(
        '<div class="grid" id="plots">'
        + figure_card(PLOT_TITLES["latency"], latency_svg)
        + figure_card(PLOT_TITLES["percentiles"], pct_svg)
        + figure_card(PLOT_TITLES["status"], status_svg)
        + figure_card(PLOT_TITLES["mismatches"], mism_body)
        + "</div>"
    )
    spacer = Html('<div style="height:16px"></div>')
    details = Html(
        '<div class="two">'
        + section("Status totals", _status_table(totals))
        + section("Protocol counters", _kv_table(report.get("protocol"), "No protocol counters."))
        + section("Load", _kv_table(report.get("load"), "No load description."))
        + section("Run", _run_table(report))
        + "</div>"
    )
    scenario = report.get("scenario")
    title = "EIR simulator report" + (f": {scenario}" if scenario else "")
    subtitle = (
        f"{v.word} · {fmt_int(report.get('sent'))} sent to "
        f"{', '.join(str(t) for t in _targets(report)) or 'no target'}"
        f" · started {report.get('started_at') or '–'}"
    )
    return page(
        title,
        [
            _summary(report, v),
            plots,
            spacer,
            section("Categories", _category_table(report, cats), anchor="categories"),
            section("Mismatch examples", _examples_table(report), anchor="examples"),
            Html(f'<div id="details">{details}</div>'),
        ],
        subtitle=subtitle,
        nav=[
            ("summary", "Summary"),
            ("plots", "Plots"),
            ("categories", "Categories"),
            ("examples", "Mismatch examples"),
            ("details", "Status, protocol, load, run"),
        ],
    )


def write_html(report: Report, path: str | os.PathLike[str]) -> None:
    _atomic_write(path, render_html(report))
