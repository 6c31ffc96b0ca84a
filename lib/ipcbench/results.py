"""Tidy results on disk: the only module that knows paths under data/.

Every experiment writes ``data/results/<chapter>/summary.csv`` (one row per
measured point, columns :data:`SUMMARY_COLUMNS` first, in order), ``samples.csv``
(raw samples, one row each) and ``meta.json`` (environment, profile, parameters,
start/end time, git commit). ``IPCBENCH_RESULTS_DIR`` moves the whole tree (tests
use it to stay out of the repository's data/).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from . import chapters
from .environment import REPO_ROOT

CHAPTERS = chapters.IDS
"""The chapter ids, in the book's order (from :mod:`ipcbench.chapters`)."""

SUMMARY_COLUMNS = [
    "chapter", "experiment", "variant", "payload", "size_bytes", "ranks", "oversubscribed",
    "metric", "unit", "n", "median", "ci_low", "ci_high", "iqr", "min", "p99", "cv", "unstable", "ci_level",
    "replicates",
]  # fmt: skip
STAT_COLUMNS = ("n", "median", "ci_low", "ci_high", "iqr", "min", "p99", "cv", "unstable", "ci_level", "replicates")
SAMPLE_COLUMNS = ["chapter", "experiment", "variant", "payload", "size_bytes", "ranks", "metric", "unit", "sample", "value"]
SCHEMA_VERSION = 2
"""The results' schema (meta.json's ``schema``): 2 added ``replicates`` to the summary (how many independent replicates
an interval rests on; 1 before) and ``replicate`` to the samples."""
UNITS = {"s", "B/s", "1/s", "x", "B", "1", "%"}


class ResultsError(ValueError):
    """Results are missing or do not follow the schema."""


def data_dir() -> Path:
    """Return the repository's data/ directory."""
    return REPO_ROOT / "data"


def results_root() -> Path:
    """Return the results tree: IPCBENCH_RESULTS_DIR, else data/results."""
    env = os.environ.get("IPCBENCH_RESULTS_DIR")
    return Path(env) if env else data_dir() / "results"


def chapter_dir(chapter: str) -> Path:
    """Return (creating it) the directory of one chapter's results."""
    if chapter not in CHAPTERS:
        raise ResultsError(f"unknown chapter {chapter!r}; chapters are {', '.join(CHAPTERS)}")
    d = results_root() / chapter
    d.mkdir(parents=True, exist_ok=True)
    return d


def seeds_path(name: str = "claims.csv") -> Path:
    """Return the path of a hand-curated file under data/seeds/."""
    return data_dir() / "seeds" / name


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def upgrade_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """Return a summary written before schema 2 in today's columns (every interval rested on one replicate)."""
    if "replicates" not in summary.columns and "ci_level" in summary.columns:
        summary = summary.copy()
        summary.insert(list(summary.columns).index("ci_level") + 1, "replicates", 1)
    return summary


def validate_summary(summary: pd.DataFrame) -> None:
    """Raise ResultsError unless the summary has the schema's columns first, in order, and known units."""
    head = list(summary.columns[: len(SUMMARY_COLUMNS)])
    if head != SUMMARY_COLUMNS:
        missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns]
        raise ResultsError(
            f"summary columns must start with {SUMMARY_COLUMNS}; got {head}"
            + (f" (missing {missing})" if missing else "")
        )
    bad = set(summary["unit"]) - UNITS
    if bad:
        raise ResultsError(f"unknown unit(s) {sorted(bad)}; use one of {sorted(UNITS)}")


def now_iso() -> str:
    """Return the current UTC time as ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write(
    chapter: str,
    summary: pd.DataFrame,
    samples: pd.DataFrame | None,
    meta: dict,
    extra: dict[str, pd.DataFrame] | None = None,
) -> Path:
    """Write summary.csv, samples.csv, meta.json (and extra CSVs) for a chapter; return its directory."""
    validate_summary(summary)
    d = chapter_dir(chapter)
    summary.to_csv(d / "summary.csv", index=False)
    if samples is not None:
        samples.to_csv(d / "samples.csv", index=False)
    meta = dict(meta)
    meta.setdefault("chapter", chapter)
    meta.setdefault("written", now_iso())
    meta["schema"] = SCHEMA_VERSION
    (d / "meta.json").write_text(json.dumps(_jsonable(meta), indent=2, sort_keys=True))
    for name, df in (extra or {}).items():
        df.to_csv(d / f"{name}.csv", index=False)
    return d


def update_meta(chapter: str, **fields) -> Path:
    """Add or replace top-level fields of a chapter's ``meta.json`` (which must exist: the chapter has run)."""
    p = chapter_dir(chapter) / "meta.json"
    if not p.exists():
        raise ResultsError(f"chapter {chapter!r} has no meta.json to update: run it first")
    meta = read_json(p)
    meta.update(fields)
    p.write_text(json.dumps(_jsonable(meta), indent=2, sort_keys=True))
    return p


def write_json(chapter: str, name: str, obj: dict) -> Path:
    """Write a chapter's extra JSON document (``<name>.json``, e.g. a report in a source's own format); return its path."""
    p = chapter_dir(chapter) / f"{name}.json"
    p.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False))
    return p


def write_text(chapter: str, name: str, text: str) -> Path:
    """Write a chapter's extra text file (``name`` may hold a subdirectory, e.g. ``logs/x.log``); return its path."""
    p = chapter_dir(chapter) / name
    if ".." in Path(name).parts:
        raise ResultsError(f"{name!r} must stay inside the chapter's directory")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


@dataclass
class Results:
    """One chapter's results as read back from disk."""

    chapter: str
    summary: pd.DataFrame
    samples: pd.DataFrame | None
    meta: dict

    def json(self, name: str) -> dict:
        """Return an extra JSON document the chapter wrote (``<name>.json``)."""
        p = results_root() / self.chapter / f"{name}.json"
        if not p.exists():
            raise ResultsError(f"{p} does not exist; run `ipcbench run {self.chapter}` first")
        return read_json(p)

    def text(self, name: str) -> str:
        """Return an extra text file the chapter wrote (e.g. ``logs/baseline.log``)."""
        p = results_root() / self.chapter / name
        if not p.exists():
            raise ResultsError(f"{p} does not exist; run `ipcbench run {self.chapter}` first")
        return p.read_text(encoding="utf-8")

    def extra(self, name: str) -> pd.DataFrame:
        """Return an extra table the chapter wrote (``<name>.csv``)."""
        p = results_root() / self.chapter / f"{name}.csv"
        if not p.exists():
            raise ResultsError(f"{p} does not exist; run `ipcbench run {self.chapter}` first")
        return read_csv(p)


def has_run(chapter: str) -> bool:
    """Return whether a chapter has written its summary under the results tree (it may still break the schema)."""
    return (results_root() / chapter / "summary.csv").exists()


def read_csv(path: Path, **kw) -> pd.DataFrame:
    """Return a CSV file of the results as a DataFrame; raise ResultsError naming the file when it is empty, not text
    or not a table."""
    try:
        return pd.read_csv(path, **kw)
    except pd.errors.EmptyDataError:
        raise ResultsError(f"{path} is empty: run its chapter again") from None
    except UnicodeDecodeError as exc:
        raise ResultsError(f"{path} is not a text CSV file ({exc.reason} at byte {exc.start}): run its chapter again") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise ResultsError(f"{path} is not a readable table: {str(exc).strip()}") from None


def read_json(path: Path) -> dict:
    """Return a JSON document of the results; raise ResultsError naming the file when it is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path} is not valid JSON ({exc}): it was cut short or overwritten; run its chapter again") from None


def read(chapter: str) -> Results:
    """Return a chapter's summary, samples and metadata; raise ResultsError if it has not been run, or naming the file
    that breaks the schema."""
    d = results_root() / chapter
    if not (d / "summary.csv").exists():
        raise ResultsError(
            f"no results for {chapter!r} under {d}; run `ipcbench run {chapter}` or its notebook first"
        )
    summary = upgrade_summary(read_csv(d / "summary.csv", dtype={"unit": str, "ranks": "Int64"}))
    try:
        validate_summary(summary)
    except ResultsError as exc:
        raise ResultsError(f"{d / 'summary.csv'} breaks the results schema: {exc}") from None
    samples = read_csv(d / "samples.csv") if (d / "samples.csv").exists() else None
    meta = read_json(d / "meta.json") if (d / "meta.json").exists() else {}
    return Results(chapter, summary, samples, meta)


def write_table(chapter: str, name: str, table: pd.DataFrame) -> Path:
    """Write one more table of a chapter (``<name>.csv``, e.g. the ledger's evidence ``claims.csv``); return its path."""
    p = chapter_dir(chapter) / f"{name}.csv"
    table.to_csv(p, index=False)
    return p


def read_table(chapter: str, name: str) -> pd.DataFrame | None:
    """Return a chapter's extra table ``<name>.csv``, or None when the chapter has not written it."""
    p = results_root() / chapter / f"{name}.csv"
    return read_csv(p) if p.exists() else None


def summary_row(stats, **labels) -> dict:
    """Return one summary row: the schema's label columns from ``labels``, statistics from ``stats``.

    ``stats`` is a :class:`ipcbench.measure.Summary` (or anything with its fields; ``ci_level`` is the
    coverage its interval really has);
    labels not in the schema become extra columns after it.
    """
    row = {c: labels.pop(c, None) for c in SUMMARY_COLUMNS[:8]}
    row["unit"] = labels.pop("unit")
    for c in STAT_COLUMNS:
        row[c] = getattr(stats, c) if c != "replicates" else int(getattr(stats, c, 1))
    row.update(labels)
    if getattr(stats, "replicates_agree", None) is not None:  # (a column after the chapter's own)
        row["replicates_agree"] = bool(stats.replicates_agree)
    return row


def sample_rows(values, **labels) -> list[dict]:
    """Return raw-sample rows (one per value) carrying the point's labels.

    Labels beyond the schema's (a chapter's own columns, e.g. ``tokens=128``) that are integers or
    strings go into one ``point`` column (``"k=v;k=v"``), so two points that share the schema's labels
    still have their own samples.
    """
    base = {c: labels.get(c) for c in SAMPLE_COLUMNS if c not in ("sample", "value")}
    own = sorted((k, v) for k, v in labels.items() if k not in SAMPLE_COLUMNS and k not in STAT_COLUMNS
                 and isinstance(v, (int, str, np.integer)) and not isinstance(v, bool))  # fmt: skip
    point = ";".join(f"{k}={v}" for k, v in own)
    reps = getattr(values, "replicate", None)
    if reps is None or np.shape(reps) != np.shape(values):
        reps = np.zeros(len(values), dtype=int)
    return [{**base, "point": point, "sample": i, "value": float(v), "replicate": int(r)}
            for i, (v, r) in enumerate(zip(values, reps, strict=True))]


def frame(rows: list[dict]) -> pd.DataFrame:
    """Return summary rows as a DataFrame with the schema's columns first."""
    df = upgrade_summary(pd.DataFrame(rows))
    extra = [c for c in df.columns if c not in SUMMARY_COLUMNS]
    df = df[SUMMARY_COLUMNS + extra]
    df["ranks"] = df["ranks"].astype("Int64")  # whole numbers, empty for derived rows that span several
    return df
