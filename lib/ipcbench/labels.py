"""Plain words for a measured summary row, as the judge's evidence, the findings and the ledger show it.

The words are data (``data/seeds/labels.yaml``): a row's label is its metric's words (keyed ``experiment.metric``
or ``metric``; ``{variant}`` and ``{payload}`` fill in those columns' words), then the words of every other column
its selector names (``n_records`` 10000 reads "10 000 records"). :func:`label` falls back to the internal names
where a word is missing, and :func:`missing` says which are, so that a test can hold every rule to plain words.
"""

from __future__ import annotations

import functools
import math
import string
from pathlib import Path

import pandas as pd
import yaml

from .numbers import num

LABELS_FILE = Path(__file__).resolve().parents[2] / "data" / "seeds" / "labels.yaml"
_OWN = ("chapter", "experiment", "variant", "metric")  # columns the metric's words already stand for


@functools.lru_cache(maxsize=4)
def vocabulary(path: str | None = None) -> dict:
    """Return the words (metrics, variants, qualifiers, values) from ``labels.yaml``."""
    data = yaml.safe_load(Path(path or LABELS_FILE).read_text()) or {}
    for key in ("metrics", "variants", "qualifiers", "values"):
        data.setdefault(key, {})
    return data


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v) != ""


def byte_words(v) -> str:
    """Write a byte count in words: binary units where it is a whole number of them ("64 KiB"), else decimal ("2 MB")."""
    n = float(v)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale and (n / scale).is_integer():
            return f"{int(n / scale)} {unit}"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{num(n / scale)} {unit}"
    return f"{num(n)} B"


class _Words:
    """Collects the words of one label, noting every internal name it had to keep."""

    def __init__(self, voc: dict):
        self.voc, self.unknown = voc, []

    def value(self, v) -> str:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, (int, float)):
            return num(v)
        text = str(v)
        if text in self.voc["values"]:
            return str(self.voc["values"][text])
        try:
            return num(float(text))
        except ValueError:
            self.unknown.append(f"value {text!r}")
            return text

    def variant(self, v) -> str:
        if not _present(v):
            return ""
        if str(v) in self.voc["variants"]:
            return str(self.voc["variants"][str(v)])
        self.unknown.append(f"variant {v!r}")
        return str(v)

    def qualifier(self, key: str, v) -> str:
        tmpl = self.voc["qualifiers"].get(key)
        if tmpl is None:
            self.unknown.append(f"qualifier {key!r}")
            return f"{key} {self.value(v)}"
        fields = {"value": self.value(v), "s": "" if str(v) in ("1", "1.0") else "s"}
        if "{bytes}" in tmpl:
            fields["bytes"] = byte_words(v)
        return tmpl.format(**fields)


def _label(row: pd.Series | dict, selector: dict | None, voc: dict) -> tuple[str, list[str]]:
    w = _Words(voc)
    get = row.get
    exp, metric, variant = get("experiment"), get("metric"), get("variant")
    mwords = voc["metrics"].get(f"{exp}.{metric}", voc["metrics"].get(str(metric)))
    used = set(_OWN)
    if mwords is None:
        w.unknown.append(f"metric {exp}.{metric}")
        mwords = " / ".join(str(x) for x in (exp, variant, metric) if _present(x))
        used.add("payload")
    else:
        names = {f for _, f, _, _ in string.Formatter().parse(mwords) if f}
        fill = {"variant": w.variant(variant)} if "variant" in names else {}
        if "payload" in names:
            fill["payload"] = w.value(get("payload"))
            used.add("payload")
        mwords = mwords.format(**fill)
        if "variant" not in names and _present(variant) and exp != "derived":
            mwords = f"{mwords}, {w.variant(variant)}"
    parts = [mwords]
    for key, want in (selector or {}).items():
        if key in used:
            continue
        v = get(key)
        if not _present(v):
            v = want if want not in ("@max", "@min") and _present(want) else None
        if v is None:
            continue
        parts.append(w.qualifier(key, v))
    return ", ".join(p for p in parts if p), w.unknown


def variant_words(variant, path: str | None = None) -> str:
    """Return a variant's plain words (labels.yaml's ``variants``), or the variant itself where it has none: what a
    figure's legend or tick label shows."""
    return str(vocabulary(path)["variants"].get(str(variant), variant))


def label(row: pd.Series | dict, selector: dict | None = None, path: str | None = None) -> str:
    """Return a summary row's plain-words label, with the qualifiers ``selector`` picks it by."""
    return _label(row, selector, vocabulary(path))[0]


def missing(row: pd.Series | dict, selector: dict | None = None, path: str | None = None) -> list[str]:
    """Return the internal names :func:`label` had to keep for this row (empty when every word is known)."""
    return _label(row, selector, vocabulary(path))[1]
