"""The book's figure style and the three plot kinds every chapter uses.

* :func:`size_sweep`: a metric against message size on log-log axes, a line per
  variant with its 95% CI band, and optional limit lines (memcpy, alpha-beta fit);
* :func:`ecdf`: the distribution of raw samples per variant;
* :func:`phase_breakdown`: stacked bars of phases (serialize, transfer, ...).

Axes pick readable units themselves (B/KiB/MiB, ns/µs/ms/s, MB/s/GB/s).
Oversubscribed points are labelled in the legend.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

PALETTE = ["#1b6ca8", "#d1495b", "#66a182", "#edae49", "#7a5195", "#2e4057", "#8d96a3", "#00798c"]
# past the palette's eight colours a line also changes its dash and marker, so no two lines look alike
LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D"]


def line_style(i: int) -> dict:
    """Return the colour, line style and marker of the ``i``-th line of a figure (distinct for 32 lines)."""
    k = i // len(PALETTE)
    return {"color": PALETTE[i % len(PALETTE)], "ls": LINESTYLES[k % len(LINESTYLES)], "marker": MARKERS[k % len(MARKERS)]}


def legend_outside(ax, **kw) -> None:
    """Put the legend to the right of the axes, clear of the data (the inline backend's tight box keeps it in)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)

STYLE = {
    "figure.figsize": (7.0, 4.2),
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=PALETTE),
    "font.size": 10,
    "legend.frameon": False,
    "legend.fontsize": 9,
}


COLUMN_IN = 7.5
"""The width (inches, at the style's dpi) a figure is shown at in the book's text column: a wider one is scaled down."""
MIN_PT = 9.0
"""The smallest text a figure shows, in points at the width it is shown at."""


def readable_text(fig) -> None:
    """Enlarge every text of ``fig`` that the page would show below :data:`MIN_PT` once the figure is scaled down to
    the column (:data:`COLUMN_IN`): a figure twice the column's width gets text of at least 18 pt."""
    need = MIN_PT * max(1.0, fig.get_figwidth() / COLUMN_IN)
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for which in ("major", "minor"):
                ticks = axis.get_major_ticks() if which == "major" else axis.get_minor_ticks()
                if ticks and ticks[0].label1.get_fontsize() < need:
                    axis.set_tick_params(which=which, labelsize=need)
    for t in fig.findobj(mpl.text.Text):
        if t.get_text() and t.get_fontsize() < need:
            t.set_fontsize(need)


def _print_readable() -> None:
    """Make every figure pass through :func:`readable_text` as it is drawn to a file or to a notebook's output."""
    from matplotlib.backend_bases import FigureCanvasBase

    if getattr(FigureCanvasBase.print_figure, "_readable", False):
        return
    original = FigureCanvasBase.print_figure

    def print_figure(self, *args, **kwargs):
        readable_text(self.figure)
        return original(self, *args, **kwargs)

    print_figure._readable = True
    FigureCanvasBase.print_figure = print_figure


def use_style() -> None:
    """Apply the book's matplotlib style globally (every figure's text readable at the column's width), and in a
    notebook show every DataFrame as the book's tables."""
    mpl.rcParams.update(STYLE)
    _print_readable()
    _register_table_format()


# --------------------------------------------------------------------- formatting


def format_bytes(n: float, _pos=None) -> str:
    """Return a byte count with binary units (B, KiB, MiB, GiB)."""
    n = float(n)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            v = n / scale
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.3g} {unit}"
    return f"{n:.0f} B"


def format_seconds(t: float, _pos=None) -> str:
    """Return a duration with a readable unit (ns, µs, ms, s)."""
    t = float(t)
    if t == 0:
        return "0"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if abs(t) >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t / 1e-9:.2g} ns"


def format_rate(r: float, _pos=None) -> str:
    """Return a bandwidth in decimal units (B/s, kB/s, MB/s, GB/s; MB = 10^6 B)."""
    r = float(r)
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if abs(r) >= scale:
            return f"{r / scale:.3g} {unit}"
    return f"{r:.3g} B/s"


_FORMATTERS = {"s": format_seconds, "B/s": format_rate, "B": format_bytes}


class ReadableLogLocator(LogLocator):
    """Decades where a log axis spans several; 1, 2 and 5 of each decade where it spans less than two, so that a short
    log axis still carries three or more labelled ticks."""

    def tick_values(self, vmin, vmax):
        lo, hi = sorted((float(vmin), float(vmax)))
        span = np.log10(hi / lo) if lo > 0 and hi > 0 else np.inf
        self.set_params(subs=(1.0, 2.0, 5.0) if span < 2 else (1.0,))
        return super().tick_values(vmin, vmax)


def readable_log_axis(axis) -> None:
    """Give a log axis (``ax.yaxis`` or ``ax.xaxis``) the book's ticks: 1-2-5 within a short range, plain numbers
    ("0.5", "2", not "2 x 10^0"), no minor labels."""
    axis.set_major_locator(ReadableLogLocator(base=10))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _yformat(ax, unit: str) -> None:
    if ax.get_yscale() == "log":
        ax.yaxis.set_major_locator(ReadableLogLocator(base=10))
    f = _FORMATTERS.get(unit)
    if f is not None:
        ax.yaxis.set_major_formatter(FuncFormatter(f))
        ax.yaxis.set_minor_formatter(NullFormatter())


def _label(variant: str, sub: pd.DataFrame) -> str:
    words = _words(str(variant))
    if "oversubscribed" in sub and sub["oversubscribed"].fillna(False).astype(bool).any():
        return f"{words} (oversubscribed)"
    return words


# --------------------------------------------------------------------- plot kinds


def size_sweep(
    summary: pd.DataFrame,
    metric: str,
    ax=None,
    hue: str = "variant",
    limits: Sequence[tuple[str, np.ndarray, np.ndarray]] = (),
    models: Sequence[tuple[str, np.ndarray, np.ndarray]] = (),
    title: str | None = None,
):
    """Plot ``metric`` against size_bytes on log-log axes with 95% CI bands; return the Axes. A point whose row is
    flagged unstable is drawn hollow, and the legend says so.

    ``limits`` are (label, sizes, values) drawn as dark dashed lines (machine limits);
    ``models`` are (label, sizes, values) drawn as thin dotted lines (fitted models).
    """
    ax = ax or plt.subplots()[1]
    rows = summary[summary["metric"] == metric].sort_values("size_bytes")
    if rows.empty:
        raise ValueError(f"no rows with metric {metric!r} to plot")
    unit = rows["unit"].iloc[0]
    any_flagged = False
    for i, (variant, sub) in enumerate(rows.groupby(hue, sort=False)):
        st = line_style(i)
        ax.plot(sub["size_bytes"], sub["median"], ms=3.5, label=_label(variant, sub), **st)
        ax.fill_between(sub["size_bytes"], sub["ci_low"], sub["ci_high"], color=st["color"], alpha=0.25, lw=0)
        flagged = sub[sub["unstable"].astype(str).str.lower() == "true"] if "unstable" in sub else sub.iloc[:0]
        if len(flagged):  # a point flagged unstable is drawn hollow
            ax.plot(flagged["size_bytes"], flagged["median"], ls="none", marker=st["marker"], ms=6, mfc="white",
                    mec=st["color"], mew=1.3, zorder=3)  # fmt: skip
            any_flagged = True
    for j, (label, x, y) in enumerate(limits):
        ax.plot(x, y, ls=("--", "-.", ":")[j % 3], color="black", lw=1.2, label=label)
    for label, x, y in models:
        ax.plot(x, y, ls=":", lw=1.2, color="gray", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=4))
    ax.xaxis.set_major_formatter(FuncFormatter(format_bytes))
    ax.tick_params(axis="x", labelrotation=35)
    _yformat(ax, unit)
    ax.set_xlabel("message size")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (median, 95% CI band)")
    if title:
        ax.set_title(title)
    if any_flagged:
        ax.plot([], [], ls="none", marker="o", ms=6, mfc="white", mec="gray", label="hollow: flagged unstable")
    ax.legend()
    return ax


def ecdf(samples: pd.DataFrame, value: str = "value", hue: str = "variant", ax=None, unit: str = "s", title=None):
    """Plot the empirical CDF of raw samples per ``hue`` group (log x); return the Axes."""
    ax = ax or plt.subplots()[1]
    for i, (variant, sub) in enumerate(samples.groupby(hue, sort=False)):
        x = np.sort(sub[value].to_numpy())
        y = np.arange(1, x.size + 1) / x.size
        ax.step(x, y, where="post", color=PALETTE[i % len(PALETTE)], label=f"{variant} (n={x.size})")
    ax.set_xscale("log")
    f = _FORMATTERS.get(unit)
    if f is not None:
        ax.xaxis.set_major_formatter(FuncFormatter(f))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("fraction of samples ≤ x")
    ax.set_xlabel(unit)
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


def phase_breakdown(
    table: pd.DataFrame,
    phases: Sequence[str],
    category: str = "variant",
    ax=None,
    unit: str = "s",
    title: str | None = None,
    horizontal: bool = True,
):
    """Plot stacked bars: one bar per ``category`` row, one segment per phase column; return the Axes."""
    ax = ax or plt.subplots()[1]
    labels = [_words_of_parts(x) for x in table[category].astype(str)]
    pos = np.arange(len(labels))
    left = np.zeros(len(labels))
    for i, phase in enumerate(phases):
        vals = table[phase].to_numpy(dtype=float)
        color = PALETTE[i % len(PALETTE)]
        if horizontal:
            ax.barh(pos, vals, left=left, color=color, label=phase)
        else:
            ax.bar(pos, vals, bottom=left, color=color, label=phase)
        left += np.nan_to_num(vals)
    if horizontal:
        ax.set_yticks(pos, labels)
        ax.invert_yaxis()
        f = _FORMATTERS.get(unit)
        if f is not None:
            ax.xaxis.set_major_formatter(FuncFormatter(f))
    else:
        ax.set_xticks(pos, labels, rotation=30, ha="right")
        _yformat(ax, unit)
    if title:
        ax.set_title(title)
    legend_outside(ax)
    return ax


TABLE_ROWS = 40
"""A table longer than this shows its first :data:`TABLE_SHOWN` rows on a page, says how many it has, and offers all of
them as a CSV download (inside the page: it needs no file beside it)."""
TABLE_SHOWN = 15


def _interval(rows: pd.DataFrame, value: str, low: str, high: str, scale: float):
    """Return ``rows[value]`` times ``scale`` and its distances to the interval's ends (the error bars' two sides);
    raise ValueError for an interval that does not hold its value."""
    mid = rows[value].to_numpy(dtype=float) * scale
    lo, hi = rows[low].to_numpy(dtype=float) * scale, rows[high].to_numpy(dtype=float) * scale
    if ((lo > mid + 1e-12 * abs(mid)) | (hi < mid - 1e-12 * abs(mid))).any():
        raise ValueError(f"an interval that does not hold its {value}: every row needs {low} <= {value} <= {high}")
    return mid, [np.clip(mid - lo, 0, None), np.clip(hi - mid, 0, None)]  # (clip: rounding only)


def errorbars(ax, x, rows: pd.DataFrame, value: str = "median", low: str = "ci_low", high: str = "ci_high",
              scale: float = 1.0, **kw):
    """Draw ``rows[value]`` at ``x`` with its interval (``rows[low]`` to ``rows[high]``) as error bars, every value
    multiplied by ``scale``; matplotlib's ``errorbar`` keywords pass through (caps of 3 points unless given). Return
    the container."""
    mid, err = _interval(rows, value, low, high, scale)
    kw.setdefault("capsize", 3)
    return ax.errorbar(x, mid, yerr=err, **kw)


def interval_bars(ax, pos, rows: pd.DataFrame, value: str = "median", low: str = "ci_low", high: str = "ci_high",
                  scale: float = 1.0, horizontal: bool = False, **kw):
    """Draw ``rows[value]`` as bars at ``pos`` (horizontal bars: ``barh``) with their intervals as error bars, every
    value multiplied by ``scale``; matplotlib's ``bar``/``barh`` keywords pass through (caps of 2 points unless given).
    Return the container."""
    mid, err = _interval(rows, value, low, high, scale)
    kw.setdefault("capsize", 2)
    return ax.barh(pos, mid, xerr=err, **kw) if horizontal else ax.bar(pos, mid, yerr=err, **kw)


def _csv_link(df: pd.DataFrame, name: str = "table.csv") -> str:
    import base64
    import html

    data = base64.b64encode(df.to_csv(index=False).encode()).decode()
    return f'<a download="{html.escape(name)}" href="data:text/csv;base64,{data}">all {len(df)} rows as CSV</a>'


WIDE_TABLE = 8
"""A table with more columns than this is set in a smaller type, so that it fits the text column."""
WORD_COLUMNS = ("variant", "config", "strategy", "backend", "path", "processor", "channel")
"""Columns whose cells are variants' names: a table shows them in labels.yaml's words."""


def _words(text: str) -> str:
    """A variant's (or a value's) plain words (labels.yaml) where the text is its name, else the text."""
    from .labels import vocabulary

    voc = vocabulary()
    return str(voc["variants"].get(text, voc["values"].get(text, text)))


def _words_of_parts(text: str) -> str:
    """A label made of names joined by " + " or " · " ("mpi_Bcast + pickle5_oob"), each name in its words."""
    import re

    return "".join(p if p in (" + ", " · ") else _words(p) for p in re.split(r"( \+ | · )", text))


def _header(name: str) -> str:
    """A column header in words: a variant's words, a generated index name ("level_1") blank, underscores as spaces."""
    import re

    if re.fullmatch(r"level_\d+|index", name):
        return ""
    parts = []
    for part in name.split(" / "):
        w = _words(part)
        parts.append(w if w != part else part.replace("_", " "))
    return " / ".join(parts)


def _cell(v) -> str:
    """One table cell as the book writes it: empty for a missing value, integers whole, other numbers at 3 significant
    digits (:func:`ipcbench.numbers.num`), anything else as its text."""
    from .numbers import num

    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or v is pd.NaT:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, float, np.integer, np.floating)):
        return num(float(v))
    return str(v)


def book_table(df: pd.DataFrame):
    """Return ``df`` styled as every table of the book: no bare row numbers (a named index becomes the first column),
    flat headers (a tuple header is joined with " / "), numbers through one formatter, no "NaN", text left-aligned and
    wrapped; a table longer than :data:`TABLE_ROWS` rows shows its first :data:`TABLE_SHOWN`, says so, and links all its
    rows as a CSV download."""
    out = df.copy()
    if isinstance(out.columns, pd.MultiIndex) or any(isinstance(c, tuple) for c in out.columns):
        out.columns = [" / ".join(str(x) for x in (c if isinstance(c, tuple) else (c,)) if str(x) != "") for c in out.columns]
    else:
        out.columns = [str(c) for c in out.columns]
    keep_index = False
    if any(n is not None for n in out.index.names) or not isinstance(out.index, pd.RangeIndex):
        try:
            out = out.reset_index()
            out.columns = [str(c) for c in out.columns]
        except ValueError:  # the index's name is a column's too: show the index as it is
            keep_index = True
    heads, seen = [], set()
    for c in out.columns:  # headers in words; a header that would repeat another keeps its own name
        h = _header(c)
        heads.append(h if h not in seen or not h else c)
        seen.add(heads[-1])
    blanks = iter(" " * k for k in range(len(heads)))  # blank headers stay distinct
    out.columns = [h if h else next(blanks) for h in heads]
    caption = None
    if len(out) > TABLE_ROWS:
        caption = f"The first {TABLE_SHOWN} of {len(out)} rows; {_csv_link(out)}."
        out = out.head(TABLE_SHOWN)
    styler = out.style.format(_cell)
    named = [c for c in out.columns if c in WORD_COLUMNS]  # a column of variants' names: each in its words
    if named:
        styler = styler.format(lambda v: _words(v) if isinstance(v, str) else _cell(v), subset=named)
    if not keep_index:
        styler = styler.hide(axis="index")
    props = "text-align: left; white-space: normal;" + (" font-size: 0.8em; padding: 0.2em 0.3em;" if out.shape[1] > WIDE_TABLE else "")
    styler = styler.set_table_styles([{"selector": "td, th", "props": props},
                                      {"selector": "th", "props": "overflow-wrap: anywhere;"}])  # fmt: skip
    return styler.set_caption(caption) if caption else styler


def _register_table_format() -> None:
    """Show every DataFrame a notebook displays as :func:`book_table` does (where IPython runs)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is not None:
        ip.display_formatter.formatters["text/html"].for_type(pd.DataFrame, lambda df: book_table(df).to_html())
