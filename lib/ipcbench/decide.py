"""What to use: the decision tables of the book's "What should I use?" page, computed from this build's rows.

A table (``data/seeds/decisions.yaml``) names a question, the columns that name a choice (a channel and a codec, an
RPC rung, a broadcast strategy) and where its rows come from. Each cell is one case (a size, a reader count, a link)
and compares the choices that ran together in it: the fastest by median, the runner-up, and the choices whose 95%
intervals overlap the fastest's. The fastest is *apart* when its interval and the runner-up's do not overlap; where
they overlap, the cell names every choice this build cannot tell from the fastest. Nothing is typed: a build that
measured other numbers gives other cells.
"""

from __future__ import annotations

import functools
import math
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import claims, labels, numbers, results
from .labels import byte_words

DECISIONS_FILE = Path(__file__).resolve().parents[2] / "data" / "seeds" / "decisions.yaml"
BYTE_COLUMNS = ("array_bytes", "size_bytes", "nominal_bytes")
_TIME_UNITS = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9))


class DecisionError(ValueError):
    """A decision table's definition is malformed (a missing key, an unknown chapter, a direction that is neither)."""


@functools.lru_cache(maxsize=4)
def load(path: str | None = None) -> dict:
    """Return the decision tables' definitions, checked: every table has a question, a direction, choice columns and
    parts, and every part names a chapter, an experiment, a metric, a row template and a section."""
    p = Path(path or DECISIONS_FILE)
    data = yaml.safe_load(p.read_text()) or {}
    tables = data.get("tables") or []
    if not tables:
        raise DecisionError(f"{p} defines no decision tables")
    for t in tables:
        for key in ("id", "question", "better", "choice", "parts"):
            if key not in t:
                raise DecisionError(f"decision table {t.get('id', t)!r} in {p} has no {key!r}")
        if t["better"] not in ("lower", "higher"):
            raise DecisionError(f"decision table {t['id']!r}: better is {t['better']!r}; write lower or higher")
        for part in t["parts"]:
            for key in ("chapter", "experiment", "metric", "row", "section"):
                if key not in part:
                    raise DecisionError(f"decision table {t['id']!r}: a part has no {key!r} ({part})")
            if part["chapter"] not in results.CHAPTERS:
                raise DecisionError(f"decision table {t['id']!r}: unknown chapter {part['chapter']!r}")
            if not t.get("columns") and "column" in part:
                raise DecisionError(f"decision table {t['id']!r}: a part names a column, but the table has no columns")
    data.setdefault("words", {})
    return data


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v) != ""


def _key(v) -> str:
    """A cell's value as the words' key: 4.0 -> "4", "1GbE" stays."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def value_words(column: str, v, words: dict) -> str:
    """Return the words for one value of a column: the table's words, else a byte size, a variant's or the qualifier's
    words of labels.yaml ("3 readers"), a number, or the value."""
    mine = (words.get(column) or {}).get(_key(v))
    if mine is not None:
        return str(mine)
    if column in BYTE_COLUMNS:
        return byte_words(v)
    voc = labels.vocabulary()
    if column == "variant" and _key(v) in voc["variants"]:  # the book's one name for a variant
        return str(voc["variants"][_key(v)])
    if column in voc["qualifiers"] and column not in ("payload", "codec"):  # "{value} reader{s}"
        return labels._Words(voc).qualifier(column, v)
    try:
        return numbers.num(float(v))
    except (TypeError, ValueError):
        return str(v)


def duration(value, low=None, high=None) -> str:
    """Write a time in seconds with its interval in the unit its median reads best in (ns, µs, ms, s)."""
    v = float(value)
    scale, unit = next(((s, u) for u, s in _TIME_UNITS if abs(v) >= s), (1e-9, "ns"))
    lo = None if low is None else float(low) / scale
    hi = None if high is None else float(high) / scale
    return numbers.interval(v / scale, lo, hi, unit)


def measured(row: dict) -> str:
    """A row's median with its interval, in the row's unit."""
    if row.get("unit") == "s":
        return duration(row["median"], row["ci_low"], row["ci_high"])
    return numbers.interval(row["median"], row["ci_low"], row["ci_high"], str(row.get("unit") or ""))


@dataclass
class Cell:
    """One case's decision: the rows compared (best first), the fastest, the runner-up, and those not told apart."""

    case: str
    column: str
    section: str
    ranked: list[dict] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    better: str = "lower"

    @property
    def best(self) -> dict:
        return self.ranked[0]

    @property
    def runner_up(self) -> dict | None:
        return self.ranked[1] if len(self.ranked) > 1 else None

    @property
    def apart(self) -> bool | None:
        """True when the fastest's interval and the runner-up's do not overlap; None with a single choice."""
        r = self.runner_up
        if r is None:
            return None
        b = self.best
        return bool(b["ci_high"] < r["ci_low"]) if self.better == "lower" else bool(b["ci_low"] > r["ci_high"])

    @property
    def tied(self) -> list[str]:
        """The choices (other than the fastest) whose interval overlaps the fastest's."""
        b = self.best
        return [n for n, r in zip(self.names[1:], self.ranked[1:], strict=True)
                if r["ci_low"] <= b["ci_high"] and r["ci_high"] >= b["ci_low"]]  # fmt: skip

    @property
    def margin(self) -> float | None:
        """The runner-up's median over the fastest's (a time) or the fastest's over the runner-up's (a rate)."""
        r = self.runner_up
        if r is None or not self.best["median"] or not r["median"]:
            return None
        b = self.best["median"]
        return r["median"] / b if self.better == "lower" else b / r["median"]

    @property
    def unstable(self) -> bool:
        """True when the fastest choice's row was flagged unstable (its samples spread or drifted)."""
        return str(self.best.get("unstable")).lower() == "true"

    @property
    def oversubscribed(self) -> bool:
        return str(self.best.get("oversubscribed")).lower() == "true"


def _choice_name(row: dict, choice: list[str], words: dict) -> str:
    return " + ".join(value_words(c, row.get(c), words) for c in choice if _present(row.get(c)))


def _merge_words(base: dict, extra: dict | None) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for k, v in (extra or {}).items():
        out.setdefault(k, {}).update(v)
    return out


def cells(table: dict, res: claims.Results | None = None, words: dict | None = None) -> list[Cell]:
    """Return a decision table's cells in the order its parts, rows and columns come (rows that did not run, none)."""
    res = res or claims.Results()
    words = load()["words"] if words is None else words
    out = []
    for part in table["parts"]:
        df = res.summary(part["chapter"])
        if df is None:
            continue
        w = _merge_words(words, part.get("words"))
        sel = df[(df["experiment"] == part["experiment"]) & (df["metric"] == part["metric"])]
        for col, want in (part.get("where") or {}).items():
            sel = sel[sel[col].map(lambda c, want=want: claims._same(c, want))]
        keys = [f for _, f, _, _ in string.Formatter().parse(part["row"]) if f]
        colkey = table.get("columns") if "column" not in part else None
        group = keys + ([colkey] if colkey else [])
        missing = [k for k in group + list(table["choice"]) if k not in sel.columns]
        if missing:
            raise DecisionError(f"decision table {table['id']!r}: {part['chapter']}'s {part['experiment']} rows have no "
                                f"column(s) {missing}")  # fmt: skip
        sel = sel.dropna(subset=["median", "ci_low", "ci_high"])
        if sel.empty:
            continue
        by: dict[tuple, list[dict]] = {}
        for r in sel.to_dict("records"):
            by.setdefault(tuple(_key(r[k]) for k in group), []).append(r)
        groups = [(g, by[g]) for g in sorted(by, key=lambda g: tuple(_sort_key(x) for x in g))]
        for gkey, rows in groups:
            values = dict(zip(group, gkey, strict=True))
            case = part["row"].format(**{k: value_words(k, values[k], w) for k in keys})
            column = part.get("column") or (value_words(colkey, values[colkey], w) if colkey else "")
            recs = sorted(rows, key=lambda r: r["median"], reverse=table["better"] == "higher")
            names = [_choice_name(r, table["choice"], w) for r in recs]
            out.append(Cell(case, column, part["section"], recs, names, table["better"]))
    return out


def _sort_key(v: str):
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)


def cell_text(c: Cell) -> str:
    """One cell as MyST: the fastest choice (a link to the section that measured it) with its interval, and how far
    ahead of the runner-up it is, or which choices it cannot be told from."""
    head = f"**{{ref}}`{c.names[0]} <{c.section}>`** {measured(c.best)}."
    r = c.runner_up
    marks = [w for w, on in (("unstable", c.unstable), ("oversubscribed", c.oversubscribed)) if on]
    marks = f" *{', '.join(marks).capitalize()}.*" if marks else ""
    if r is None:
        return f"{head} The only choice measured.{marks}"
    m = c.margin
    ahead = f"{numbers.num(m, 2)}x" if m is not None else "n/a"
    if c.apart:
        text = (f"{head} Next: {c.names[1]} {measured(r)}, {ahead} {'slower' if c.better == 'lower' else 'lower'}; "
                "apart.")  # fmt: skip
    else:
        by_name = dict(zip(c.names, c.ranked, strict=True))
        tied = [f"{n} {measured(by_name[n])}" for n in c.tied]
        shown = "; ".join(tied[:3]) + (f"; and {len(tied) - 3} more" if len(tied) > 3 else "")
        text = f"{head} Not told apart from: {shown}."
    return text + marks


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_markdown(table: dict, cs: list[Cell]) -> str:
    """Return one decision table as a MyST pipe table: a row per case, a column per column value."""
    if not cs:
        return "*Not measured in this build.*"
    columns = list(dict.fromkeys(c.column for c in cs))
    rows = list(dict.fromkeys(c.case for c in cs))
    at = {(c.case, c.column): c for c in cs}
    head = ["Case"] + [col or "Fastest" for col in columns]
    lines = ["| " + " | ".join(_md(h) for h in head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join([_md(row)] + [_md(cell_text(at[(row, col)])) if (row, col) in at else "not measured"
                                                       for col in columns]) + " |")  # fmt: skip
    return "\n".join(lines)


def page_markdown(path: str | None = None, res: claims.Results | None = None) -> str:
    """Return the decision page's tables as MyST: each question as a heading, then its table."""
    data = load(path)
    res = res or claims.Results()
    parts = []
    for t in data["tables"]:
        cs = cells(t, res, data["words"])
        parts.append(f"## {t['question']}\n\n{table_markdown(t, cs)}")
    return "\n\n".join(parts)


def summary(path: str | None = None, res: claims.Results | None = None) -> dict:
    """Return counts over every cell: how many, how many the fastest wins apart, how many are unstable."""
    data = load(path)
    res = res or claims.Results()
    cs = [c for t in data["tables"] for c in cells(t, res, data["words"])]
    return {"cells": len(cs), "apart": sum(1 for c in cs if c.apart), "unstable": sum(1 for c in cs if c.unstable)}


def show(table_id: str, path: str | None = None, res: claims.Results | None = None) -> str:
    """Return one decision table (by its id in decisions.yaml) as MyST."""
    data = load(path)
    by_id = {t["id"]: t for t in data["tables"]}
    if table_id not in by_id:
        raise DecisionError(f"no decision table {table_id!r}; the tables are {', '.join(by_id)}")
    t = by_id[table_id]
    table = table_markdown(t, cells(t, res or claims.Results(), data["words"]))
    return f"Each number: {t['measures']}; median and 95% interval.\n\n{table}" if t.get("measures") else table


def summary_sentence(path: str | None = None, res: claims.Results | None = None) -> str:
    """Return how many cells this build decides: e.g. "In 16 of the 40 cases the fastest choice's interval is apart
    from the runner-up's; in the other 24 this build names every choice it cannot tell from the fastest." """
    s = summary(path, res)
    n, a = s["cells"], s["apart"]
    if not n:
        return "This build measured none of the cases below."
    if a == n:
        return f"In all {n} cases below, the fastest choice's interval is apart from the runner-up's."
    return (f"In {a} of the {n} cases below, the fastest choice's interval is apart from the runner-up's; in the other "
            f"{n - a}, the case names every choice this build cannot tell from the fastest.")
