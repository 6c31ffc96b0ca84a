"""Two results trees side by side: two builds, two machines, or a build and the reference shipped with the book.

:func:`compare_trees` matches every summary row present in both trees (by its labels) and gives A, B and B/A with an
interval, and whether B is faster, slower or no different (only where the interval of B/A excludes 1); every claim's
verdict in each tree (both judged by today's rules, so that only the measurements differ); and both environments and
machine states. ``ipcbench compare`` prints it; the book's Reproducibility page shows this build against the
reference.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import claims, results

KEY_EXCLUDE = {"stop_reason", "inputs", "oversubscribed", "unstable", "point", "replicates", "replicates_agree", "outliers",
               "best_allocation", "capacity_runs", "capacity_replicates", "inner", "requests", "groups", "baseline_pss",
               "peak_alloc_bytes", "max_rel_error"}
"""Columns that never identify a summary row (statistics, bookkeeping, or facts of the machine rather than the point)."""
HIGHER_IS_FASTER = {"B/s", "1/s"}
"""Units of rates: a higher value is faster. Times (s) are faster when lower; other units are 'higher' or 'lower'."""


class CompareError(ValueError):
    """A tree cannot be compared: it is missing, holds no results, or was written by a schema this code does not know."""


@dataclass
class Comparison:
    """What :func:`compare_trees` returns: the matched rows, the claims, the environments, and notes on what could not
    be compared (a chapter in one tree only, another schema version)."""

    a: Path
    b: Path
    rows: pd.DataFrame
    claims: pd.DataFrame
    environments: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def flips(self) -> pd.DataFrame:
        """Return the claims confirmed in one tree and refuted in the other."""
        c = self.claims
        mask = ((c["verdict_a"] == claims.CONFIRMED) & (c["verdict_b"] == claims.REFUTED)) | (
            (c["verdict_a"] == claims.REFUTED) & (c["verdict_b"] == claims.CONFIRMED))  # fmt: skip
        return c[mask]

    def claim_counts(self) -> pd.DataFrame:
        """Return per chapter: claims, verdicts that agree, that differ, flips (confirmed against refuted), agreement."""
        c = self.claims.assign(agree=lambda d: d["verdict_a"] == d["verdict_b"])
        flips = set(self.flips()["id"])
        t = c.groupby("chapter", sort=False).agg(claims=("id", "size"), agree=("agree", "sum"))
        t["differ"] = t["claims"] - t["agree"]
        t["flips"] = c.assign(flip=c["id"].isin(flips)).groupby("chapter", sort=False)["flip"].sum()
        t.loc["all"] = t.sum()
        t["agreement"] = (t["agree"] / t["claims"]).round(3)
        return t.reset_index()

    def moved(self) -> pd.DataFrame:
        """Return per chapter: summary rows compared, rows whose B median lies outside A's interval and the reverse,
        rows whose intervals do not overlap, and the share of those."""
        r = self.rows
        t = r.groupby("chapter", sort=False).agg(rows=("metric", "size"), outside_a=("b_outside_a", "sum"),
                                                 outside_b=("a_outside_b", "sum"), apart=("apart", "sum"))  # fmt: skip
        t.loc["all"] = t.sum()
        t["apart_share"] = (t["apart"] / t["rows"]).round(3)
        return t.reset_index()


def _schema(root: Path, chapter: str) -> int:
    p = root / chapter / "meta.json"
    if not p.exists():
        return 1
    return int(results.read_json(p).get("schema", 1))


def _check_tree(root: Path) -> list[str]:
    """Return the chapters a tree holds; raise CompareError naming the problem."""
    if not root.exists():
        raise CompareError(f"the results tree {root} does not exist")
    if not root.is_dir():
        raise CompareError(f"the results tree {root} is not a directory")
    have = [ch for ch in results.CHAPTERS if (root / ch / "summary.csv").exists()]
    if not have:
        raise CompareError(f"{root} holds no chapter's results (no <chapter>/summary.csv): is it a results tree?")
    for ch in have:
        v = _schema(root, ch)
        if v > results.SCHEMA_VERSION:
            raise CompareError(f"{root / ch / 'meta.json'} was written with results schema {v}; this code reads up to "
                               f"{results.SCHEMA_VERSION}: compare it with a newer ipcbench")  # fmt: skip
    return have


@contextmanager
def _tree(root: Path):
    """Point the results module at ``root`` while the block runs."""
    old = os.environ.get("IPCBENCH_RESULTS_DIR")
    os.environ["IPCBENCH_RESULTS_DIR"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("IPCBENCH_RESULTS_DIR", None)
        else:
            os.environ["IPCBENCH_RESULTS_DIR"] = old


def _keys(df: pd.DataFrame, other: pd.DataFrame) -> list[str]:
    """Return the columns that identify a summary row in both tables: labels that are text or whole numbers."""
    stats = set(results.STAT_COLUMNS)
    keys = []
    for c in df.columns:
        if c in stats or c in KEY_EXCLUDE or c not in other.columns:
            continue
        col = pd.concat([df[c], other[c]]).dropna()
        if col.empty or pd.api.types.is_string_dtype(col) or pd.api.types.is_object_dtype(col) or pd.api.types.is_bool_dtype(col):
            keys.append(c)
        elif pd.api.types.is_numeric_dtype(col) and np.allclose(col.astype(float), np.round(col.astype(float))):
            keys.append(c)
    return keys


def _keyed(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out = df.copy()
    for c in keys:  # one spelling for a label in both trees (a whole number read as 10000.0 or 10000)
        out[c] = out[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else
                            (str(int(v)) if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                             and float(v).is_integer() else str(v)))  # fmt: skip
    out["_k"] = out.groupby(keys, sort=False, dropna=False).cumcount()
    return out


def _ratio_interval(a: pd.Series, b: pd.Series) -> tuple[float, float, float]:
    """Return B/A and an interval from the two rows' intervals (the extreme ratios they allow; conservative)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = b["median"] / a["median"] if a["median"] else float("nan")
        ends = [b["ci_low"] / a["ci_high"], b["ci_high"] / a["ci_low"]] if a["ci_low"] > 0 and a["ci_high"] > 0 else [np.nan, np.nan]
    return float(r), float(min(ends)), float(max(ends))


def _bootstrap_ratio(a_vals, b_vals) -> tuple[float, float, float]:
    from .measure import derived

    st = derived(lambda x, y: y / x, a_vals, b_vals)
    return st.median, st.ci_low, st.ci_high


def _direction(unit: str, lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 1.0 <= hi:
        return "no different"
    up = lo > 1.0
    if unit == "s":
        return "slower" if up else "faster"
    if unit in HIGHER_IS_FASTER:
        return "faster" if up else "slower"
    return "higher" if up else "lower"


def _rows(a_root: Path, b_root: Path, chapter: str, bootstrap: bool) -> pd.DataFrame:
    from .experiments._common import sample_values

    with _tree(a_root):
        ra = results.read(chapter)
    with _tree(b_root):
        rb = results.read(chapter)
    sa, sb = ra.summary, rb.summary
    keys = _keys(sa, sb)
    ka, kb = _keyed(sa, keys).assign(_i=range(len(sa))), _keyed(sb, keys).assign(_i=range(len(sb)))
    m = ka.merge(kb, on=keys + ["_k"], suffixes=("_a", "_b"), how="inner")
    out = []
    for _, row in m.iterrows():
        a = pd.Series({c: row[f"{c}_a"] for c in ("median", "ci_low", "ci_high", "n")})
        b = pd.Series({c: row[f"{c}_b"] for c in ("median", "ci_low", "ci_high", "n")})
        ratio, lo, hi = _ratio_interval(a, b)
        how = "from the two intervals"
        if bootstrap and ra.samples is not None and rb.samples is not None and row["experiment"] != "derived":
            try:
                ia, ib = int(row["_i_a"]), int(row["_i_b"])
                ratio, lo, hi = _bootstrap_ratio(sample_values(sa.iloc[[ia]], ra.samples),
                                                 sample_values(sb.iloc[[ib]], rb.samples))  # fmt: skip
                how = "bootstrap over both trees' samples"
            except (results.ResultsError, IndexError, ValueError):
                pass
        unit = row["unit"]
        out.append({"chapter": chapter, **{k: row[k] for k in keys if k != "chapter"},
                    "a": float(a["median"]), "a_low": float(a["ci_low"]), "a_high": float(a["ci_high"]),
                    "b": float(b["median"]), "b_low": float(b["ci_low"]), "b_high": float(b["ci_high"]),
                    "b_over_a": ratio, "ratio_low": lo, "ratio_high": hi, "ratio_interval": how,
                    "b_is": _direction(unit, lo, hi),
                    "b_outside_a": not (a["ci_low"] <= b["median"] <= a["ci_high"]),
                    "a_outside_b": not (b["ci_low"] <= a["median"] <= b["ci_high"]),
                    "apart": bool(b["ci_low"] > a["ci_high"] or a["ci_low"] > b["ci_high"])})  # fmt: skip
    return pd.DataFrame(out)


def _environment(root: Path, chapters: list[str]) -> dict:
    """Return one tree's environment and machine states, as comparable facts."""
    out: dict[str, object] = {}
    for ch in chapters:
        p = root / ch / "meta.json"
        if not p.exists():
            continue
        meta = results.read_json(p)
        env = meta.get("environment") or {}
        for k in ("cpu_model", "cores", "python", "platform"):
            if k in env and k not in out:
                out[k] = env[k]
        for k, v in (env.get("versions") or {}).items():
            out.setdefault(f"version: {k}", v)
        if "git_commit" in env:
            out.setdefault("git commit", env["git_commit"])
        out.setdefault("profile", meta.get("profile"))
        state = meta.get("machine_state") or {}
        out[f"{ch}: machine state"] = ("quiet" if state.get("quiet") else "noisy: " + "; ".join(state.get("flags", []))) if state else "not recorded"
        out[f"{ch}: started"] = meta.get("started")
    return out


def compare_trees(a: str | Path, b: str | Path, bootstrap: bool = True, rules_file: Path | str | None = None,
                  names: tuple[str, str] | None = None) -> Comparison:  # fmt: skip
    """Return the comparison of results trees ``a`` and ``b`` (see the module's docstring); raise CompareError on a tree
    that cannot be compared. ``bootstrap``: ratio intervals from both trees' samples where both have them (else from
    the two rows' intervals). ``names``: how notes call the two trees (default: their paths)."""
    a, b = Path(a), Path(b)
    na, nb = names or (str(a), str(b))
    have_a, have_b = _check_tree(a), _check_tree(b)
    notes = []
    for ch in sorted(set(have_a) ^ set(have_b), key=results.CHAPTERS.index):
        notes.append(f"chapter {ch} has results in {na if ch in have_a else nb} only: not compared")
    common = [ch for ch in results.CHAPTERS if ch in have_a and ch in have_b]
    for ch in common:
        va, vb = _schema(a, ch), _schema(b, ch)
        if va != vb:
            notes.append(f"chapter {ch}: {na} has results schema {va}, {nb} schema {vb}; compared on what both record "
                         "(an interval of schema 1 rests on one replicate)")  # fmt: skip
    rows = pd.concat([_rows(a, b, ch, bootstrap) for ch in common], ignore_index=True) if common else pd.DataFrame()
    verdicts = []
    for root, name in ((a, na), (b, nb)):
        with _tree(root):
            try:
                led = claims.judge_all(common, rules_file=rules_file)
            except claims.ClaimsError as exc:  # rules that read rows this tree does not have (an older tree)
                notes.append(f"{name} cannot be judged by these rules ({exc}): its verdicts are not compared")
                led = claims.judge_all([], rules_file=rules_file)
        verdicts.append(led.set_index("id"))
    va, vb = verdicts
    both = va.index.intersection(vb.index)
    va, vb = va.loc[both], vb.loc[both]
    cl = pd.DataFrame({"id": va.index, "chapter": va["chapter"].to_numpy(), "verdict_a": va["verdict"].to_numpy(),
                       "verdict_b": vb.loc[va.index, "verdict"].to_numpy(),
                       "measured_a": [claims.measured_text({**r, "measured_unit": r.get("unit")}) for r in va.reset_index().to_dict("records")],
                       "measured_b": [claims.measured_text({**r, "measured_unit": r.get("unit")})
                                      for r in vb.loc[va.index].reset_index().to_dict("records")]})  # fmt: skip
    cl = cl[cl["chapter"].isin(common)].reset_index(drop=True)
    ea, eb = _environment(a, common), _environment(b, common)
    env = pd.DataFrame({"fact": list(dict.fromkeys([*ea, *eb]))})
    env["a"] = env["fact"].map(lambda k: ea.get(k, ""))
    env["b"] = env["fact"].map(lambda k: eb.get(k, ""))
    env["same"] = env["a"].astype(str) == env["b"].astype(str)
    return Comparison(a, b, rows, cl, env, notes)


def as_text(c: Comparison, fmt: str = "table") -> str:
    """Return the comparison as text: 'table' (plain), 'markdown', or 'csv' (the row table alone)."""
    if fmt == "csv":
        return c.rows.to_csv(index=False)
    shown = c.rows[c.rows["b_is"] != "no different"] if not c.rows.empty else c.rows
    cols = [k for k in ("chapter", "experiment", "variant", "metric", "unit") if k in shown.columns]
    cols += ["a", "b", "b_over_a", "ratio_low", "ratio_high", "b_is"]
    differing = c.claims[c.claims["verdict_a"] != c.claims["verdict_b"]]
    parts = [f"A: {c.a}", f"B: {c.b}", *[f"note: {n}" for n in c.notes]]
    if fmt == "markdown":
        parts += ["", "## Claims", "", claims.markdown_table(c.claim_counts()), "",
                  claims.markdown_table(differing) if not differing.empty else "Every claim has the same verdict in both.",
                  "", "## Summary rows that moved beyond their intervals, per chapter", "", claims.markdown_table(c.moved()),
                  "", f"## Rows where B is faster, slower, higher or lower ({len(shown)} of {len(c.rows)})", "",
                  claims.markdown_table(shown[cols]) if not shown.empty else "None.",
                  "", "## Environments and machine states", "", claims.markdown_table(c.environments)]  # fmt: skip
        return "\n".join(parts) + "\n"
    with pd.option_context("display.max_rows", None, "display.max_colwidth", 80, "display.width", 200):
        parts += ["", "Claims per chapter:", c.claim_counts().to_string(index=False), "",
                  "Claims whose verdicts differ:", differing.to_string(index=False) if not differing.empty else "none", "",
                  "Summary rows that moved beyond their intervals:", c.moved().to_string(index=False), "",
                  f"Rows where B is faster, slower, higher or lower ({len(shown)} of {len(c.rows)}):",
                  shown[cols].to_string(index=False) if not shown.empty else "none", "",
                  "Environments and machine states:", c.environments.to_string(index=False)]  # fmt: skip
    return "\n".join(parts) + "\n"


def reference_dir(root: Path | None = None) -> Path | None:
    """Return the reference results shipped with the book for this machine kind (data/reference/<machine>/), the only
    one where there is one, or None where none is shipped."""
    base = root or (results.data_dir() / "reference")
    if not base.is_dir():
        return None
    trees = sorted(d for d in base.iterdir() if d.is_dir() and any((d / ch / "summary.csv").exists() for ch in results.CHAPTERS))
    if not trees:
        return None
    mine = machine_kind()
    return next((d for d in trees if d.name == mine), trees[0])


def machine_kind() -> str:
    """Return a name for this kind of machine: its cores and CPU model, as a directory name."""
    import re

    from .cluster import usable_cores
    from .environment import cpu_model

    return re.sub(r"[^a-z0-9]+", "-", f"{usable_cores()}core-{cpu_model()}".lower()).strip("-")[:60]


def describe_reference(ref: Path) -> dict:
    """Return what the reference records of itself (reference.json beside its chapters), or {}."""
    p = ref / "reference.json"
    return json.loads(p.read_text()) if p.exists() else {}
