"""The claims ledger: every claim of the source analyses, a rule for each kept as data, and one judge.

``data/seeds/claims.csv`` quotes each claim (id, source, quote, paraphrase, claimed value, unit,
chapter). ``data/seeds/claim_rules.yaml`` gives each claim a rule: which measured summary row it
reads (a selector on a chapter's ``summary.csv``), which comparison it makes (:data:`KINDS`) and,
where the default does not fit, its own tolerance with the reason. :func:`judge` turns a rule and
the rows it selects into a verdict and an evidence sentence built only from the numbers; no chapter
writes a verdict. The claimed value is always read from ``claims.csv``.

The judge decides with confidence intervals (the tolerance policy is in the rules file):

* ``confirmed``: the measured 95% interval lies inside the claimed value's band (the claimed value
  or range widened by the tolerance): every value the measurement allows is within tolerance;
* ``refuted``: the interval lies entirely outside the band;
* ``partly``: outside the band but on the claimed side of the rule's neutral point (the direction
  holds, the size does not), or inside the looser band a rule may give (``partly_within``: a relative
  tolerance wider than the band's, for a claim that also has a rough reading), or the claim holds for
  some of the cases it covers and not others;
* ``inconclusive``: the interval straddles an edge of the band, an ordering's intervals overlap,
  or the interval covers less than 95% (fewer than 6 samples): no difference is shown; also where the
  interval lies outside the band but across the neutral point (or an edge of the looser band), so that
  partly and refuted are not told apart, and where a claim's undecided cases could turn it from one
  verdict to another. Two builds decide one case differently only with intervals that do not overlap;
* ``not testable here``: the rule says why, or every case lies outside a condition the source states.

Scope, applied to every rule: an ordering may carry a strength word (``strength``: "far", "slight"; one numeric
meaning each in the policy); a case whose rows ran with more processes than cores is oversubscribed and never decides
a verdict alone; a case ``beside`` the verdict (a hypothesis of ours, the write-up's own model, another size) is judged
and shown, never counted; a case with a ``precondition`` is judged only where the source's condition holds. Each
claim's regime (data/seeds/regimes.yaml) says in what situation the source's number came from and what is measured
here.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from . import chapters, labels, numbers, results

CONFIRMED, REFUTED, PARTLY, INCONCLUSIVE, NOT_TESTABLE = (
    "confirmed", "refuted", "partly", "inconclusive", "not testable here")  # fmt: skip
VERDICTS = (CONFIRMED, REFUTED, PARTLY, INCONCLUSIVE, NOT_TESTABLE)
PENDING = "not yet measured"
SEED_COLUMNS = ["id", "source", "quote", "paraphrase", "value", "unit", "chapter"]
KINDS = ("value", "ratio", "share", "bound", "same", "order", "identity", "not_testable")
"""Rule kinds: a value near the claimed one; a ratio or percentage difference near the claimed one
(its neutral point, 1 or 0, gives the claim a direction); a share of a total (in %); a bound (at least /
at most the claimed value); "the same" (a measured ratio within the tolerance of 1); an ordering of two
measured rows (by their intervals); an identity on the source's own numbers (checked at the rounding of
its printed figures); not testable here (with the reason). A rule's cases may each have their own kind."""
UNIT_WORDS = {"ranking", "qualitative", "design", "model", "condition", "expected effect", "count", ""}
"""claims.csv units that name a kind of claim, not a unit to print beside a number."""
PLOT_COLUMNS = ["rel", "rel_low", "rel_high", "band_low", "band_high"]
"""The headline case on the forest plot's scale: measured over claimed (an ordering: the first row over the second),
its interval, and the claimed band on the same scale (0 and inf for an open side)."""
REGIME_COLUMNS = ["regime", "regime_source", "regime_here"]
"""Where a claim's number comes from: "same" or "differs: how", the source's situation, and what this build measures
(data/seeds/regimes.yaml)."""
LEDGER_COLUMNS = ["id", "chapter", "verdict", "measured", "unit", "ci_low", "ci_high", "n", "ci_level", "replicates",
                  "claimed", "noisy", "evidence", *PLOT_COLUMNS, *REGIME_COLUMNS]  # fmt: skip
EVIDENCE_COLUMNS = ["claim_id", "measured", "unit", "verdict", "evidence", "ci_low", "ci_high", "n", "ci_level",
                    "replicates", "claimed", "noisy", *PLOT_COLUMNS]  # fmt: skip
_RULE_KEYS = {"kind", "select", "cases", "lower", "higher", "than", "bound", "neutral", "scale", "unit", "tolerance",
              "tolerance_abs", "why", "note", "value_part", "reason", "show", "headline", "claimed_from", "partly_within",
              "absolute", "limits", "strength", "oversubscribed", "beside", "precondition"}  # fmt: skip
STRENGTHS = ("far", "slight")
"""Strength words an ordering may carry (``strength``), with one numeric meaning each in the policy: "far" (far
exceeds, much faster) needs the first at least :attr:`Policy.far` times the second; "slight" (a slight, negligible
disadvantage) needs the two within a factor 1 + :attr:`Policy.slight` of each other. "Comparable", "close" and
"similar" are the ``same`` kind: a ratio within the policy's tolerance of 1."""


class ClaimsError(ValueError):
    """The claims file, the rules file or a rule's selection does not follow the ledger's rules."""


# ------------------------------------------------------------------------------ files


def load_claims() -> pd.DataFrame:
    """Return the hand-curated claims (data/seeds/claims.csv) after checking its columns and ids."""
    p = results.seeds_path("claims.csv")
    if not p.exists():
        raise ClaimsError(f"{p} is missing")
    df = pd.read_csv(p, dtype={"value": str})
    if list(df.columns) != SEED_COLUMNS:
        raise ClaimsError(f"{p} must have columns {SEED_COLUMNS}, has {list(df.columns)}")
    dup = df["id"][df["id"].duplicated()].tolist()
    if dup:
        raise ClaimsError(f"duplicate claim ids in {p}: {dup}")
    bad = set(df["chapter"]) - set(results.CHAPTERS)
    if bad:
        raise ClaimsError(f"unknown chapter(s) {sorted(bad)} in {p}")
    desc = {c.id: c for c in chapters.CHAPTERS.values()}
    wrong = [f"{i} ({ch})" for i, ch in zip(df["id"], df["chapter"], strict=True)
             if not desc[ch].claim_prefix or not str(i).startswith(desc[ch].claim_prefix + "-")]  # fmt: skip
    if wrong:
        raise ClaimsError(f"claim ids in {p} that do not start with their chapter's prefix (ipcbench.chapters): {wrong}")
    elsewhere = [f"{i} ({src})" for i, src, ch in zip(df["id"], df["source"], df["chapter"], strict=True)
                 if not str(src).startswith(f"{desc[ch].seed}_")]  # fmt: skip
    if elsewhere:
        raise ClaimsError(f"claims in {p} whose source is not their chapter's source analysis (its seed): {elsewhere}")
    return df


def load_regimes(path: Path | str | None = None) -> dict[str, dict]:
    """Return each claim's regime (data/seeds/regimes.yaml): the situation the source's number came from (``source``:
    sizes, processes, call sizes, prompt, TP degree, statistic), what this build measures (``here``) and how they
    differ (``differs``: empty where they are the same), checked: one for every claim of claims.csv, no other."""
    import yaml

    p = Path(path) if path is not None else results.seeds_path("regimes.yaml")
    if not p.exists():
        raise ClaimsError(f"{p} is missing")
    doc = (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("regimes") or {}
    ids = list(load_claims()["id"])
    missing, extra = sorted(set(ids) - set(doc)), sorted(set(doc) - set(ids))
    if missing or extra:
        raise ClaimsError(f"{p}: every claim needs one regime ({'missing: ' + str(missing) if missing else ''}"
                          f"{'; ' if missing and extra else ''}{'not claims: ' + str(extra) if extra else ''})")  # fmt: skip
    for cid, r in doc.items():
        if not isinstance(r, dict) or set(r) != {"source", "here", "differs"}:
            raise ClaimsError(f"{p}: the regime of {cid} needs exactly source, here and differs, got {r!r}")
        if not all(isinstance(r[k], str) for k in r) or not r["source"].strip() or not r["here"].strip():
            raise ClaimsError(f"{p}: the regime of {cid} needs source and here in words (differs: '' where the same)")
    return {cid: doc[cid] for cid in ids}


UNJUDGED_KINDS = ("not a claim", "not measured here")


def load_unjudged(path: Path | str | None = None, seeds_dir: Path | str | None = None) -> pd.DataFrame:
    """Return the quotes that read like claims and have no verdict (data/seeds/unjudged_quotes.yaml): source, quote,
    kind (:data:`UNJUDGED_KINDS`) and why, checked; given the source analyses' folder, also that each quote stands in
    its source verbatim (whitespace-normalized) and is no claim's quote."""
    import yaml

    p = Path(path) if path is not None else results.seeds_path("unjudged_quotes.yaml")
    if not p.exists():
        raise ClaimsError(f"{p} is missing")
    items = (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("quotes") or []
    claimed = {normalized(q) for q in load_claims()["quote"]}
    for it in items:
        if not isinstance(it, dict) or set(it) != {"source", "quote", "kind", "why"}:
            raise ClaimsError(f"{p}: each quote needs exactly source, quote, kind and why, got {it!r}")
        if it["kind"] not in UNJUDGED_KINDS:
            raise ClaimsError(f"{p}: kind {it['kind']!r} of {it['quote']!r} is not one of {UNJUDGED_KINDS}")
        if normalized(str(it["quote"])) in claimed:
            raise ClaimsError(f"{p}: {it['quote']!r} is a claim's quote: judge it there")
        if seeds_dir is not None:
            text = normalized((Path(seeds_dir) / it["source"]).read_text(encoding="utf-8"))
            if normalized(str(it["quote"])) not in text:
                raise ClaimsError(f"{p}: {it['quote']!r} is not verbatim in {it['source']}")
    return pd.DataFrame(items, columns=["source", "quote", "kind", "why"])


def regime_text(regime: dict) -> str:
    """Return "same" or "differs: <how>" for a claim's regime."""
    how = regime["differs"].strip()
    return f"differs: {how}" if how else "same"


def with_regimes(led: pd.DataFrame) -> pd.DataFrame:
    """Return the ledger rows (an ``id`` column) with :data:`REGIME_COLUMNS` from the regimes file."""
    reg = load_regimes()
    out = led.copy()
    if "id" not in out.columns:  # no claim at all (nothing selected)
        return out.assign(id=None, **{c: None for c in REGIME_COLUMNS})
    out["regime"] = [regime_text(reg[i]) for i in out["id"]]
    out["regime_source"] = [reg[i]["source"] for i in out["id"]]
    out["regime_here"] = [reg[i]["here"] for i in out["id"]]
    return out


QUOTE_INDEX_COLUMNS = ["id", "source", "source_sha256", "start", "length", "quote_sha256"]


def normalized(text: str) -> str:
    """Return ``text`` with every run of whitespace as one space (how quotes are compared with their sources)."""
    return re.sub(r"\s+", " ", text).strip()


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def locate_quotes(seeds_dir: Path | str, claims_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Return where each claim's quote stands in its source analysis (under ``seeds_dir``), one row per claim
    (:data:`QUOTE_INDEX_COLUMNS`: the source's and the quote's SHA-256 and the quote's character offset and length,
    all of the whitespace-normalized texts); raise ClaimsError for a quote that is not verbatim in its source."""
    df = load_claims() if claims_df is None else claims_df
    texts = {src: normalized((Path(seeds_dir) / src).read_text(encoding="utf-8")) for src in df["source"].unique()}
    rows, missing = [], []
    for r in df.itertuples():
        quote = normalized(r.quote)
        start = texts[r.source].find(quote)
        if start < 0:
            missing.append(r.id)
            continue
        rows.append({"id": r.id, "source": r.source, "source_sha256": _sha256(texts[r.source]), "start": start,
                     "length": len(quote), "quote_sha256": _sha256(quote)})  # fmt: skip
    if missing:
        raise ClaimsError(f"quotes not found verbatim in their source: {missing}")
    return pd.DataFrame(rows, columns=QUOTE_INDEX_COLUMNS)


def quote_index() -> pd.DataFrame:
    """Return the shipped quote index (data/seeds/quote_index.csv: :func:`locate_quotes` of the source analyses), by
    which a checkout without the sources still checks that no quote changed since it was found verbatim."""
    return pd.read_csv(results.seeds_path("quote_index.csv"))


@dataclass(frozen=True)
class Policy:
    """The tolerance policy: one default for every claim; a rule's own tolerance must say why."""

    tolerance: float = 0.25
    identity_tolerance: float = 0.0025
    machine_factor: float = 3.0
    """How far an absolute time or rate measured on another machine may be from the source's and still match it (a
    factor either way): the band of a rule marked ``absolute``."""
    min_ci_level: float = 0.95
    far: float = 2.0
    """"Far exceeds", "much faster": the first at least this many times the second."""
    slight: float = 0.25
    """"Slight", "negligible": the two within a factor 1 + slight of each other."""
    text: str = ""


def rules_path() -> Path:
    """Return the rules file: IPCBENCH_CLAIM_RULES, else data/seeds/claim_rules.yaml."""
    import os

    env = os.environ.get("IPCBENCH_CLAIM_RULES")
    return Path(env) if env else results.seeds_path("claim_rules.yaml")


def load_rules(path: Path | str | None = None) -> tuple[Policy, dict[str, dict]]:
    """Return the tolerance policy and the rule of every claim id, after checking each rule's shape."""
    import yaml

    p = Path(path) if path is not None else rules_path()
    if not p.exists():
        raise ClaimsError(f"{p} is missing")
    doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    pol = doc.get("policy", {})
    policy = Policy(tolerance=float(pol.get("tolerance", 0.25)), identity_tolerance=float(pol.get("identity_tolerance", 0.0025)),
                    min_ci_level=float(pol.get("min_ci_level", 0.95)), text=str(pol.get("text", "")).strip(),
                    machine_factor=float(pol.get("machine_factor", 3.0)),
                    far=float((pol.get("strength") or {}).get("far", 2.0)),
                    slight=float((pol.get("strength") or {}).get("slight", 0.25)))  # fmt: skip
    if not (0 < policy.tolerance and 0 < policy.identity_tolerance and 0 < policy.min_ci_level <= 1
            and policy.machine_factor > 1 and policy.far > 1 and policy.slight > 0):  # fmt: skip
        raise ClaimsError(f"{p}: the policy's tolerances must be above 0, min_ci_level in (0, 1], machine_factor and "
                          f"far above 1, got {pol}")
    rules = doc.get("rules") or {}
    for cid, rule in rules.items():
        check_rule(cid, rule)
    return policy, rules


def check_rule(cid: str, rule: dict, claimed_value: str | float | None = None) -> None:
    """Raise ClaimsError unless ``rule`` is a well-formed rule of one of :data:`KINDS`; given the claim's value
    (claims.csv), also unless every case's band around it has a width (a claimed 0 needs ``tolerance_abs``)."""
    if not isinstance(rule, dict):
        raise ClaimsError(f"rule {cid}: must be a mapping, got {rule!r}")
    kind = rule.get("kind")
    if kind not in KINDS:
        raise ClaimsError(f"rule {cid}: kind {kind!r} is not one of {KINDS}")
    unknown = set(rule) - _RULE_KEYS
    if unknown:
        raise ClaimsError(f"rule {cid}: unknown key(s) {sorted(unknown)}")
    if {"tolerance", "tolerance_abs", "partly_within"} & set(rule) and not str(rule.get("why", "")).strip():
        raise ClaimsError(f"rule {cid}: a tolerance other than the policy's (or a partly_within) needs a 'why'")
    if "note" in rule and re.search(r"\b(confirm|refut|partly|inconclusive|holds|wrong|right)\w*", str(rule["note"]), re.I):
        raise ClaimsError(f"rule {cid}: a note says what was compared, never an outcome: {rule['note']!r}")
    if kind == "not_testable":
        if not str(rule.get("reason", "")).lower().startswith("because"):
            raise ClaimsError(f"rule {cid}: a 'not testable here' rule needs a reason starting with 'because'")
        return
    cases = _cases(rule)
    if all(c.get("beside") or c.get("oversubscribed") for c in cases):
        raise ClaimsError(f"rule {cid}: a verdict needs a case that is neither beside it (a hypothesis) nor oversubscribed")
    for case in cases:
        ck = case["kind"]
        if ck not in KINDS or ck == "not_testable":
            raise ClaimsError(f"rule {cid}: case kind {ck!r} is not one of {KINDS[:-1]}")
        if ck == "order":
            if ("lower" in case) == ("higher" in case) or "than" not in case:
                raise ClaimsError(f"rule {cid}: an order case needs one of 'lower'/'higher' and 'than' (selectors)")
        elif "select" not in case:
            raise ClaimsError(f"rule {cid}: a {ck} case needs 'select'")
        if "limits" in case:
            lim = case["limits"]
            if (not isinstance(lim, list) or len(lim) != 2 or all(x is None for x in lim)
                    or (None not in lim and not float(lim[0]) < float(lim[1]))):  # fmt: skip
                raise ClaimsError(f"rule {cid}: limits must be [low, high] (either may be null, low < high): "
                                  f"the values the measured quantity can take")  # fmt: skip
        if "beside" in case and not (case["beside"] is True or (isinstance(case["beside"], str) and case["beside"].strip())):
            raise ClaimsError(f"rule {cid}: beside is true or says why the case is shown beside the verdict")
        if "strength" in case and (ck != "order" or case["strength"] not in STRENGTHS):
            raise ClaimsError(f"rule {cid}: strength ({STRENGTHS}) is for order cases, got {case['strength']!r} on {ck}")
        if "precondition" in case:
            pre = case["precondition"]
            if (not isinstance(pre, dict) or "select" not in pre or pre.get("bound") not in ("at_least", "at_most")
                    or "value" not in pre or not str(pre.get("says", "")).strip()):  # fmt: skip
                raise ClaimsError(f"rule {cid}: a precondition needs select, bound (at_least | at_most), value and says "
                                  "(the source's condition in words)")  # fmt: skip
        if ck == "bound" and case.get("bound") not in ("at_least", "at_most"):
            raise ClaimsError(f"rule {cid}: a bound case needs bound: at_least | at_most")
        if ck not in ("bound", "same") and "bound" in case:
            raise ClaimsError(f"rule {cid}: only bound and same cases take 'bound'")
        if "partly_within" in case and not float(case["partly_within"]) > float(case.get("tolerance", 0.0)):
            raise ClaimsError(f"rule {cid}: partly_within must be wider than the case's tolerance")
        if ck not in ("order", "same") and "claimed_from" not in case and claimed_value is not None:
            claimed = parse_claimed(claimed_value, case.get("value_part"))
            rel = float(case.get("tolerance", 1.0))  # the policy's tolerance is never 0 (load_rules checks)
            if (claimed is not None and claimed.point and not case.get("bound")
                    and rel * abs(claimed.low) == 0 and not float(case.get("tolerance_abs", 0.0))):  # fmt: skip
                    raise ClaimsError(f"rule {cid}: the claimed value {claimed.text} widened by a relative tolerance "
                                      "is a band of zero width, which no interval lies inside: give it tolerance_abs "
                                      "(with a 'why')")  # fmt: skip


# ------------------------------------------------------------------ claimed values


@dataclass(frozen=True)
class Claimed:
    """A claimed value or range, as written in claims.csv (``text``)."""

    low: float
    high: float
    text: str
    source: str = ""  # where a claimed value read from the results came from (empty: claims.csv)

    @property
    def point(self) -> bool:
        """Return True when the claim is one value, not a range."""
        return self.low == self.high


_NUM = r"[-+]?\d+(?:\.\d+)?"


def parse_claimed(text: str | float | None, part: int | None = None) -> Claimed | None:
    """Return the claimed value of a claims.csv ``value`` cell: ``5``, ``-100``, ``80-90``; ``a vs b`` and ``a -> b`` by ``part``."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or str(text).strip() == "":
        return None
    s = str(text).strip()
    parts = [p.strip() for p in re.split(r"\s+vs\s+|\s*->\s*", s)]
    if len(parts) > 1:
        if part is None:
            raise ClaimsError(f"claimed value {s!r} has {len(parts)} parts: the rule must say which (value_part)")
        s = parts[part]
    m = re.fullmatch(rf"({_NUM})\s*-\s*({_NUM})", s)
    if m:
        lo, hi = float(m.group(1)), float(m.group(2))
        if lo > hi:
            raise ClaimsError(f"the claimed range {text!r} runs downwards: write a range low-high ({_fmt(hi)}-{_fmt(lo)})")
        return Claimed(lo, hi, str(text))
    if re.fullmatch(_NUM, s):
        return Claimed(float(s), float(s), str(text))
    raise ClaimsError(f"cannot read a number or range from the claimed value {text!r}")


# -------------------------------------------------------------------------- selection


@dataclass
class Measured:
    """One selected summary row, in the claim's unit (``scale`` applied)."""

    value: float
    low: float
    high: float
    n: int
    ci_level: float
    label: str
    replicates: int = 1
    replicates_agree: bool = True
    oversubscribed: bool = False

    def text(self, unit: str) -> str:
        """Return e.g. '4.97 ms [4.87, 5.06] (n = 30, 3 replicates)', saying where the replicates disagree."""
        reps = f", {self.replicates} replicates" if self.replicates > 1 else ""
        if self.replicates > 1 and not self.replicates_agree:
            reps += " that disagree beyond their own intervals"
        return f"{numbers.interval(self.value, self.low, self.high, unit)} (n = {self.n}{reps})"


def _fmt(x: float) -> str:
    return numbers.num(x)


def _u(unit: str) -> str:
    return numbers.unit_suffix(unit)


def _same(cell, want) -> bool:
    if isinstance(want, list):
        return any(_same(cell, w) for w in want)
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return want is None
    if isinstance(want, bool) or isinstance(cell, (bool,)):
        return str(cell).lower() == str(want).lower()
    try:
        return math.isclose(float(cell), float(want), rel_tol=1e-9, abs_tol=0.0)
    except (TypeError, ValueError):
        return str(cell) == str(want)


class Results:
    """The chapters' summaries as read from disk once (one results tree)."""

    def __init__(self):
        self._cache: dict[str, pd.DataFrame | None] = {}

    def summary(self, chapter: str) -> pd.DataFrame | None:
        """Return a chapter's summary, or None when it has not run."""
        if chapter not in self._cache:  # a summary that exists but breaks the schema raises (ResultsError names it)
            self._cache[chapter] = results.read(chapter).summary if results.has_run(chapter) else None
        return self._cache[chapter]


def select(res: Results, default_chapter: str, selector: dict) -> pd.Series:
    """Return the one summary row ``selector`` names (column -> value, list of values, or "@max"/"@min": the largest or
    smallest value among the rows the other columns select; ``chapter`` picks the chapter's table)."""
    sel = dict(selector)
    chapter = sel.pop("chapter", default_chapter)
    df = res.summary(chapter)
    if df is None:
        raise results.ResultsError(f"no results for {chapter!r}: run `ipcbench run {chapter}` first")
    missing = [c for c in sel if c not in df.columns]
    if missing:
        raise ClaimsError(f"selector {selector} names column(s) {missing} that {chapter}'s summary does not have")
    mask = pd.Series(True, index=df.index)
    extreme = {c: w for c, w in sel.items() if w in ("@max", "@min")}
    for col, want in sel.items():
        if col not in extreme:
            mask &= df[col].map(lambda c, w=want: _same(c, w))
    got = df[mask]
    for col, want in extreme.items():  # "@max": the largest value of the column among the rows the rest selects
        target = got[col].max() if want == "@max" else got[col].min()
        got = got[got[col] == target]
    if len(got) != 1:
        raise ClaimsError(f"selector {selector} finds {len(got)} rows in {chapter}'s summary, not 1")
    return got.iloc[0]


def _number(row: pd.Series, col: str) -> float:
    v = row.get(col)
    try:
        return float("nan") if v is None or pd.isna(v) else float(v)
    except (TypeError, ValueError):
        return float("nan")


def untrusted(row: pd.Series) -> str | None:
    """Return why a summary row cannot decide a verdict (a value that is not a finite number, an interval that runs
    downwards or leaves out its own median, no samples, a coverage outside 0-1 or unknown), or None when it can."""
    med, lo, hi, n, level = (_number(row, c) for c in ("median", "ci_low", "ci_high", "n", "ci_level"))
    for name, v in (("median", med), ("ci_low", lo), ("ci_high", hi)):
        if not math.isfinite(v):
            return f"its {name} is {v} (not a finite number)"
    if lo > hi:
        return f"its interval runs downwards (ci_low {lo:g} > ci_high {hi:g})"
    slack = 1e-9 * max(abs(lo), abs(hi), abs(med))
    if not lo - slack <= med <= hi + slack:
        return f"its median {med:g} lies outside its own interval [{lo:g}, {hi:g}]"
    if not (math.isfinite(n) and n >= 1 and n == int(n)):
        return f"its sample count n is {n} (a whole number of at least 1 is needed)"
    if not 0.0 <= level <= 1.0:
        return f"its interval's coverage ci_level is {level} (a fraction from 0 to 1 is needed)"
    return None


def _pick(res: Results, chapter: str, selector: dict, scale: float) -> Measured:
    """Return the measured value of the one row ``selector`` names; raise ClaimsError (naming the row) when the row
    cannot decide a verdict (:func:`untrusted`)."""
    row = select(res, chapter, selector)
    why = untrusted(row)
    if why is not None:
        where = selector.get("chapter", chapter)
        raise ClaimsError(f"the {where} summary row {selector} cannot be judged: {why}")
    return _measured(row, scale, selector)


def _measured(row: pd.Series, scale: float, selector: dict | None = None) -> Measured:
    lo, hi = float(row["ci_low"]) * scale, float(row["ci_high"]) * scale
    level = float(row["ci_level"])
    label = labels.label(row, selector)  # plain words (data/seeds/labels.yaml); the selector stays in the rules
    reps = int(row["replicates"]) if "replicates" in row and pd.notna(row["replicates"]) else 1
    agree = row.get("replicates_agree")
    agree = True if agree is None or (isinstance(agree, float) and math.isnan(agree)) else str(agree).lower() == "true"
    over = str(row.get("oversubscribed")).lower() == "true"
    return Measured(float(row["median"]) * scale, min(lo, hi), max(lo, hi), int(row["n"]), level, label, reps, agree,
                    over)  # fmt: skip


# ------------------------------------------------------------------------------ judging


@dataclass
class Judgement:
    """A claim's verdict with the measured value it rests on and the evidence sentence."""

    claim_id: str
    verdict: str
    measured: float | None = None
    unit: str = ""
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    ci_level: float | None = None
    replicates: int | None = None
    claimed: str = ""
    evidence: str = ""
    cases: list[str] = field(default_factory=list)
    noisy: bool = False
    rel: float = math.nan
    rel_low: float = math.nan
    rel_high: float = math.nan
    band_low: float = math.nan
    band_high: float = math.nan

    def row(self) -> dict:
        """Return the evidence row written to a chapter's claims.csv."""
        d = asdict(self)
        return {c: d[c] for c in EVIDENCE_COLUMNS}


def _band(claimed: Claimed, case: dict, tol: float, tol_abs: float, factor: float | None = None) -> tuple[float, float]:
    """Return the claimed value's band: the claimed value or range widened by the tolerance (relative, or absolute),
    or, for an absolute time or rate from the source's machine (``factor``), divided and multiplied by that factor."""
    if factor is not None and claimed.low > 0:
        return _within_limits(case, claimed.low / factor, claimed.high * factor)
    lo = claimed.low - max(tol * abs(claimed.low), tol_abs)
    hi = claimed.high + max(tol * abs(claimed.high), tol_abs)
    if case.get("bound"):
        neutral = case.get("neutral")
        if case["bound"] == "at_least":
            return _within_limits(case, lo, math.inf)
        return _within_limits(case, -math.inf if neutral is None else float(neutral), hi)
    return _within_limits(case, lo, hi)


def _within_limits(case: dict, lo: float, hi: float) -> tuple[float, float]:
    """Return a band clipped to the values the measured quantity can take (the rule's ``limits``: a saving in % cannot
    pass 100), so that a band never promises what no measurement can reach."""
    low, high = case.get("limits") or (None, None)
    return (lo if low is None else max(lo, float(low)), hi if high is None else min(hi, float(high)))


def _neutral(case: dict, unit: str) -> float | None:
    if "neutral" in case:
        return None if case["neutral"] is None else float(case["neutral"])
    if case["kind"] == "ratio":
        return 1.0 if unit in ("x", "") else 0.0
    return None


def _numeric_case(m: Measured, claimed: Claimed, case: dict, tol: float, tol_abs: float, policy: Policy,
                  unit: str) -> tuple[str, str]:  # fmt: skip
    """Return (verdict, clause) for one measured row against the claimed value's band."""
    lo_b, hi_b = _band(claimed, case, tol, tol_abs, policy.machine_factor if case.get("absolute") else None)
    band = (f"at least {_fmt(lo_b)}{_u(unit)}" if math.isinf(hi_b) else f"at most {_fmt(hi_b)}{_u(unit)}"
            if math.isinf(lo_b) else f"{_fmt(lo_b)} to {_fmt(hi_b)}{_u(unit)}")  # fmt: skip
    head = f"{m.label}: {m.text(unit)}, against the band {band}" + (f" around {claimed.text}" if claimed.source else "")
    if not m.ci_level >= policy.min_ci_level:
        return INCONCLUSIVE, (f"{head}; with n = {m.n} the interval covers {m.ci_level:.0%}, less than "
                              f"{policy.min_ci_level:.0%}")  # fmt: skip
    if m.high < lo_b or m.low > hi_b:
        neutral = _neutral(case, unit)
        side = 0
        if neutral is not None:
            side = 1 if claimed.low > neutral else -1 if claimed.high < neutral else 0
        if side and ((side > 0 and m.low > neutral) or (side < 0 and m.high < neutral)):
            return PARTLY, (f"{head}; the interval lies outside the band, on the claimed side of "
                            f"{_fmt(neutral)}{_u(unit)}")  # fmt: skip
        if side:
            if (side > 0 and m.high < neutral) or (side < 0 and m.low > neutral):
                return REFUTED, (f"{head}; the interval lies outside the band, on the other side of "
                                 f"{_fmt(neutral)}{_u(unit)}")  # fmt: skip
            # across the neutral point: the claimed size is ruled out, but whether any effect in the claimed direction
            # exists (partly) or not (refuted) is undecided
            return INCONCLUSIVE, (f"{head}; the interval lies outside the band (the claimed size is ruled out) and "
                                  f"across {_fmt(neutral)}{_u(unit)} (no effect in either direction is shown)")  # fmt: skip
        if "partly_within" in case:  # a rule's looser reading of the claim ("roughly"): outside the band, inside it
            lo_w, hi_w = _band(claimed, case, float(case["partly_within"]), tol_abs)
            if m.low >= lo_w and m.high <= hi_w:
                return PARTLY, (f"{head}; the interval lies outside the band, inside the looser band "
                                f"{_fmt(lo_w)} to {_fmt(hi_w)}{_u(unit)}")  # fmt: skip
            if m.high >= lo_w and m.low <= hi_w:
                return INCONCLUSIVE, (f"{head}; the interval lies outside the band and straddles an edge of the looser "
                                      f"band {_fmt(lo_w)} to {_fmt(hi_w)}{_u(unit)}")  # fmt: skip
        return REFUTED, f"{head}; the interval lies {'below' if m.high < lo_b else 'above'} the band"
    if m.low >= lo_b and m.high <= hi_b:
        return CONFIRMED, f"{head}; the interval lies inside the band"
    return INCONCLUSIVE, f"{head}; the interval straddles an edge of the band"


def _order_case(a: Measured, b: Measured, higher: bool, policy: Policy, unit: str,
                strength: str | None = None) -> tuple[str, str]:  # fmt: skip
    word = "above" if higher else "below"
    head = f"{a.label}: {a.text(unit)} against {b.label}: {b.text(unit)}"
    low = min(a.ci_level, b.ci_level)
    if not low >= policy.min_ci_level:
        return INCONCLUSIVE, f"{head}; an interval covers {low:.0%}, less than {policy.min_ci_level:.0%}"
    if strength is not None:
        return _strength_case(a, b, higher, strength, policy, head)
    if (a.low > b.high) if higher else (a.high < b.low):
        return CONFIRMED, f"{head}; the first interval lies entirely {word} the second"
    if (a.high < b.low) if higher else (a.low > b.high):
        return REFUTED, f"{head}; the first interval lies entirely {'below' if higher else 'above'} the second"
    return INCONCLUSIVE, f"{head}; the intervals overlap"


def _strength_band(strength: str, policy: Policy) -> tuple[float, float]:
    """Return the claimed band of an ordering with a strength word, on the scale of the claimed side's ratio (the
    first over the second where the first is claimed higher, the second over the first where it is claimed lower)."""
    if strength == "far":
        return policy.far, math.inf
    return 1.0 / (1.0 + policy.slight), 1.0 + policy.slight


def _strength_case(a: Measured, b: Measured, higher: bool, strength: str, policy: Policy, head: str) -> tuple[str, str]:
    """Return (verdict, clause) for an ordering that also claims how far apart the two are (:data:`STRENGTHS`), from the
    ratio on the claimed side and the interval the two intervals allow for it."""
    top, bottom = (a, b) if higher else (b, a)
    if not (top.low > 0 and bottom.low > 0):
        return INCONCLUSIVE, f"{head}; a ratio needs two positive intervals"
    q, q_lo, q_hi = top.value / bottom.value, top.low / bottom.high, top.high / bottom.low
    lo_b, hi_b = _strength_band(strength, policy)
    what = "first over second" if higher else "second over first"
    band = (f"at least {_fmt(lo_b)}x (\"far\")" if strength == "far"
            else f"{_fmt(lo_b)}x to {_fmt(hi_b)}x (\"slight\")")  # fmt: skip
    head = f"{head}; {what} {_fmt(q)}x [{_fmt(q_lo)}, {_fmt(q_hi)}], against {band}"
    if q_lo >= lo_b and q_hi <= hi_b:
        return CONFIRMED, f"{head}; the ratio's interval lies inside"
    if strength == "far":
        if q_hi < 1.0:
            return REFUTED, f"{head}; the order is the other way"
        if q_lo > 1.0 and q_hi < lo_b:
            return PARTLY, f"{head}; the order holds, but not by that much"
        return INCONCLUSIVE, f"{head}; the ratio's interval straddles {'1' if q_lo <= 1.0 else _fmt(lo_b) + 'x'}"
    if q_lo > hi_b:
        return PARTLY, f"{head}; the order holds, by more than slightly"
    if q_hi < lo_b:
        return REFUTED, f"{head}; the order is the other way, by more than slightly"
    return INCONCLUSIVE, f"{head}; the ratio's interval straddles an edge"


_NO_PLOT = (math.nan,) * 5


def _rel_band(m: Measured, claimed: Claimed, band: tuple[float, float]) -> tuple[float, ...]:
    """Return a numeric case on the forest plot's scale: measured / claimed (the claimed range's middle; for a claimed
    0, the band's upper edge), its interval, and the band over the same (0 where the band reaches zero or beyond)."""
    c = (claimed.low + claimed.high) / 2
    if c == 0 and math.isfinite(band[1]) and band[1] > 0:  # a claimed 0: against the band's upper edge
        c = band[1]
    if not (math.isfinite(c) and c != 0):
        return _NO_PLOT
    lo, hi = sorted((m.low / c, m.high / c))
    b_lo, b_hi = sorted((band[0] / c, band[1] / c))
    return m.value / c, lo, hi, max(b_lo, 0.0), max(b_hi, 0.0)


def _rel_order(a: Measured, b: Measured, higher: bool, band: tuple[float, float] | None = None) -> tuple[float, ...]:
    """Return an ordering on the forest plot's scale: the first row over the second, with the interval their
    intervals allow, and the claimed side of 1 as the band (or a strength word's band on the claimed side's ratio);
    NaNs where the second can be 0 or a value negative."""
    if not (b.low > 0 and a.low > 0):
        return _NO_PLOT
    if band is None:
        band = (1.0, math.inf) if higher else (0.0, 1.0)
    elif not higher:  # the band is on the second over the first
        band = (0.0 if math.isinf(band[1]) else 1.0 / band[1], 1.0 / band[0])
    return a.value / b.value, a.low / b.high, a.high / b.low, *band


def combine(verdicts: list[str]) -> str:
    """Return one verdict for a claim that covers several cases (every case judged on its own)."""
    s = set(verdicts)
    if len(s) == 1:
        return verdicts[0]
    if CONFIRMED in s and (REFUTED in s or PARTLY in s):
        return PARTLY
    if PARTLY in s:
        return PARTLY
    if INCONCLUSIVE in s:  # undecided cases beside decided ones that all agree: the undecided could make it partly
        return INCONCLUSIVE
    return REFUTED


def _cases(rule: dict) -> list[dict]:
    """Return the rule's cases: each case's keys override the rule's (selectors are merged)."""
    base = {k: v for k, v in rule.items() if k != "cases"}
    out = []
    for case in rule.get("cases") or [{}]:
        if case.get("kind", base["kind"]) != base["kind"]:  # a case of another kind stands on its own
            out.append(dict(case))
            continue
        merged = dict(base)
        for k, v in case.items():
            merged[k] = {**base.get(k, {}), **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        out.append(merged)
    return out


def _claimed_of(claim, case: dict, res: Results, chapter: str, scale: float) -> Claimed | None:
    if case["kind"] == "same":
        return Claimed(1.0, 1.0, "1 (the same)")
    if "claimed_from" in case:
        m = _pick(res, chapter, case["claimed_from"], scale)
        return Claimed(m.value, m.value, f"{m.label} = {_fmt(m.value)}", source=m.label)
    return parse_claimed(claim.get("value"), case.get("value_part"))


def judge(claim: pd.Series | dict, rule: dict, res: Results | None = None, policy: Policy | None = None) -> Judgement:
    """Return the verdict of one claim (a claims.csv row) under ``rule``, from the results on disk (or ``res``).

    ``policy`` defaults to the rules file's tolerance policy.
    """
    res = res or Results()
    policy = policy or load_rules()[0]
    cid, chapter = claim["id"], claim["chapter"]
    check_rule(cid, rule, None if pd.isna(claim.get("value")) else claim.get("value"))
    kind = rule["kind"]
    claim_unit = "" if pd.isna(claim.get("unit")) else str(claim.get("unit"))
    raw_value = "" if pd.isna(claim.get("value")) else str(claim.get("value"))
    note = str(rule.get("note", "")).strip()
    lead = f"{note[0].upper()}{note[1:]}. " if note else ""
    if kind == "not_testable":
        unit = str(rule.get("unit", claim_unit))
        j = Judgement(cid, NOT_TESTABLE, unit=unit, claimed=raw_value)
        shown = ""
        if "show" in rule:
            m = _pick(res, chapter, rule["show"], float(rule.get("scale", 1.0)))
            j.measured, j.ci_low, j.ci_high, j.n, j.ci_level, j.replicates = m.value, m.low, m.high, m.n, m.ci_level, m.replicates
            shown = f" Measured here for reference: {m.label}: {m.text(unit)}."
        j.evidence = f"{lead}Not testable here {rule['reason'].strip().rstrip('.')}.{shown}"
        return j
    verdicts, clauses, heads, units, claimed_texts, tols, plots = [], [], [], [], [], [], []
    roles: list[str] = []  # per case: "counted", "oversubscribed", "beside" (shown only) or "outside" (precondition)
    besides: list[str] = []  # per case: why a case beside the verdict is shown (its rule's words)
    uses_csv = False
    for case in _cases(rule):
        ck = case["kind"]
        scale = float(case.get("scale", 1.0))
        pre = _precondition(res, chapter, case.get("precondition"))
        if pre is not None and pre[0] == "outside":
            verdicts.append(INCONCLUSIVE)
            clauses.append(pre[1])
            heads.append(None)
            units.append("")
            plots.append(_NO_PLOT)
            roles.append("outside")
            besides.append("")
            continue
        from_csv = ck not in ("order", "same") and "claimed_from" not in case
        unit = str(case.get("unit", claim_unit if from_csv and claim_unit not in UNIT_WORDS else ""))
        uses_csv = uses_csv or from_csv
        if ck == "order":
            higher = "higher" in case
            a = _pick(res, chapter, case["higher" if higher else "lower"], scale)
            b = _pick(res, chapter, case["than"], scale)
            strength = case.get("strength")
            v, clause = _order_case(a, b, higher, policy, unit, strength)
            over = a.oversubscribed or b.oversubscribed
            heads.append(a)
            plots.append(_rel_order(a, b, higher, _strength_band(strength, policy) if strength else None))
            if strength:
                tols.append(f'"{strength}" as the policy defines it ' + (f"(at least {_fmt(policy.far)}x)" if strength == "far"
                            else f"(within a factor {_fmt(1 + policy.slight)} either way)"))  # fmt: skip
        else:
            claimed = _claimed_of(claim, case, res, chapter, scale)
            if claimed is None:
                raise ClaimsError(f"rule {cid}: a {ck} case needs a claimed value in claims.csv")
            tol = float(case.get("tolerance", policy.identity_tolerance if ck == "identity" else policy.tolerance))
            tol_abs = float(case.get("tolerance_abs", 0.0))
            m = _pick(res, chapter, case["select"], scale)
            v, clause = _numeric_case(m, claimed, case, tol, tol_abs, policy, unit)
            over = m.oversubscribed
            heads.append(m)
            factor = policy.machine_factor if case.get("absolute") else None
            plots.append(_rel_band(m, claimed, _band(claimed, case, tol, tol_abs, factor)))
            claimed_texts.append(claimed.text)
            if case.get("absolute"):
                tols.append(f"a factor of {policy.machine_factor:g} either way (an absolute time or rate from the "
                            "source's machine: only a difference no machine explains is refuted)")  # fmt: skip
            else:
                tols.append(f"{tol * 100:g}%" + (f" or {_fmt(tol_abs)}{_u(unit)}" if tol_abs else "")
                            + (f" ({case['why'].strip().rstrip('.')})" if "why" in case
                               else " (the policy's, for the source's own arithmetic)" if ck == "identity"
                               else " (the policy's default)"))  # fmt: skip
        if pre is not None and pre[0] == "undecided" and v != INCONCLUSIVE:  # the condition is undecided: so is the case
            v, clause = INCONCLUSIVE, f"{clause}; {pre[1]}"
        elif pre is not None:
            clause = f"{clause}; {pre[1]}"
        verdicts.append(v)
        clauses.append(clause)
        units.append(unit)
        roles.append("beside" if case.get("beside") else "oversubscribed" if case.get("oversubscribed") or over
                     else "counted")  # a row measured with more processes than cores is oversubscribed  # fmt: skip
        besides.append(case["beside"] if isinstance(case.get("beside"), str) else "a hypothesis of ours")
    return _verdict_of_cases(cid, claim_unit, raw_value, lead, uses_csv, rule, verdicts, clauses, heads, units, tols,
                             plots, roles, besides)  # fmt: skip


def _precondition(res: Results, chapter: str, pre: dict | None) -> tuple[str, str] | None:
    """Return None where a case has no precondition; ("holds", what), ("outside", what) or ("undecided", what) where the
    measured interval lies wholly on the source's condition's side, wholly on the other or across it."""
    if not pre:
        return None
    m = _pick(res, chapter, pre["select"], float(pre.get("scale", 1.0)))
    value, unit, says = float(pre["value"]), str(pre.get("unit", "")), str(pre["says"]).strip()
    at_least = pre["bound"] == "at_least"
    what = f"{m.label}: {m.text(unit)}"
    if (m.low >= value) if at_least else (m.high <= value):
        return "holds", f"the source's condition holds ({says}): {what}"
    if (m.high < value) if at_least else (m.low > value):
        return "outside", f"outside the source's condition ({says}): {what}"
    return "undecided", f"whether the source's condition holds ({says}) is undecided: {what}"


def _verdict_of_cases(cid, claim_unit, raw_value, lead, uses_csv, rule, verdicts, clauses, heads, units, tols, plots,
                      roles, besides) -> Judgement:  # fmt: skip
    """Return the claim's judgement from its judged cases. Only counted and oversubscribed cases enter the verdict, and
    an oversubscribed case never decides it alone; a case beside the verdict is shown only; a claim whose every case
    lies outside the source's condition is not testable here."""
    counted = [v for v, r in zip(verdicts, roles, strict=True) if r in ("counted", "oversubscribed")]
    notes = []
    if not counted:
        verdict = NOT_TESTABLE
        notes.append("Not testable here where measured: every case lies outside the condition the source states")
    else:
        verdict = combine(counted)
        own = [v for v, r in zip(verdicts, roles, strict=True) if r == "counted"]
        over = [v for v, r in zip(verdicts, roles, strict=True) if r == "oversubscribed"]
        if all(v == INCONCLUSIVE for v in own) and any(v != INCONCLUSIVE for v in over):
            verdict = INCONCLUSIVE
            notes.append("Only oversubscribed runs decide a case, and an oversubscribed run never decides a verdict alone")
    k = int(rule.get("headline", 0))
    if heads[k] is None or roles[k] == "beside":
        k = next((i for i, r in enumerate(roles) if r in ("counted", "oversubscribed") and heads[i] is not None), None)
        if k is None:
            k = next((i for i, h in enumerate(heads) if h is not None), None)
    tag = {"counted": "", "oversubscribed": "oversubscribed, "}

    def part(c: str, v: str, r: str, why: str) -> str:
        if r == "outside":
            return f"{c} [not judged]"
        return f"{c} [{f'beside the verdict, {why}: ' if r == 'beside' else tag[r]}{v}]"

    parts = [part(*x) for x in zip(clauses, verdicts, roles, besides, strict=True)]
    for i in range(1, len(parts)):  # a case outside the same condition as an earlier one: said once
        if roles[i] == "outside" and clauses[i] in clauses[:i]:
            parts[i] = f"outside the same condition as ({clauses.index(clauses[i]) + 1}) [not judged]"
    body = "; ".join(f"({i + 1}) {p}" for i, p in enumerate(parts)) if len(parts) > 1 else clauses[0]
    claimed_txt = f"Claimed: {raw_value}{_u(claim_unit)}. " if raw_value and uses_csv else ""
    tol_txt = f" Tolerance: {'; '.join(sorted(set(tols)))}." if tols else ""
    note_txt = "".join(f" {n}." for n in notes)
    ev = f"{lead}{claimed_txt}Measured: {body}.{tol_txt}{note_txt}"
    if k is None:
        return Judgement(cid, verdict, claimed=raw_value, evidence=ev, cases=verdicts)
    head = heads[k]
    j = Judgement(cid, verdict, head.value, units[k], head.low, head.high, head.n, head.ci_level, head.replicates,
                  raw_value, ev, verdicts)  # fmt: skip
    j.rel, j.rel_low, j.rel_high, j.band_low, j.band_high = plots[k]
    return j


# ------------------------------------------------------------------------------ ledger


def judge_all(chapters: list[str] | None = None, rules_file: Path | str | None = None) -> pd.DataFrame:
    """Return the ledger: every claim (of ``chapters``) judged from the results on disk, one row each.

    A claim whose chapter has not run is 'not yet measured'. A rule whose selection fails on results
    that exist raises: a build must never publish a claim without its verdict.
    """
    seeds = load_claims()
    policy, rules = load_rules(rules_file)
    wanted = seeds if chapters is None else seeds[seeds["chapter"].isin(chapters)]
    missing = sorted(set(wanted["id"]) - set(rules))
    if missing:
        raise ClaimsError(f"claims without a rule in {rules_path()}: {missing}")
    extra = sorted(set(rules) - set(seeds["id"]))
    if extra:
        raise ClaimsError(f"rules for claims that are not in claims.csv: {extra}")
    res = Results()
    rows = []
    for claim in seeds.to_dict("records"):
        if chapters is not None and claim["chapter"] not in chapters:
            continue
        if res.summary(claim["chapter"]) is None:
            rows.append({**claim, "verdict": PENDING, "evidence": f"the {claim['chapter']} chapter has not run"})
            continue
        j = judge(claim, rules[claim["id"]], res, policy)
        noise = noisy_state(claim["chapter"])
        # (the source's own arithmetic and exact counts are no measurement: noise cannot change them)
        timed = rules[claim["id"]].get("kind") != "identity" and not (j.ci_low is not None and j.ci_low == j.ci_high)
        if noise and j.verdict != NOT_TESTABLE and timed:
            j.noisy = True
            j.evidence += (f" The chapter ran while the machine was noisy ({noise}): a quieter build may not give this "
                           "verdict again.")  # fmt: skip
        rows.append({**claim, **{k: v for k, v in j.row().items() if k != "claim_id"}, "claimed": j.claimed or claim["value"]})
    out = with_regimes(pd.DataFrame(rows))
    for c in [*LEDGER_COLUMNS, "source", "quote", "paraphrase"]:
        if c not in out.columns:
            out[c] = None
    out["unit"] = [r.get("unit") if isinstance(r.get("unit"), str) else "" for r in rows]
    return out[LEDGER_COLUMNS + ["source", "quote", "paraphrase"]]


def noisy_state(chapter: str) -> str:
    """Return why the machine was noisy while a chapter ran (its machine-state record's flags), or '' where it was
    quiet or nothing was recorded."""
    p = results.results_root() / chapter / "meta.json"
    if not p.exists():
        return ""
    state = results.read_json(p).get("machine_state") or {}
    if state.get("quiet", True):
        return ""
    return "; ".join(state.get("flags") or ["flagged noisy"])


ACROSS_HOSTS_CHAPTER = next(c.id for c in chapters.CHAPTERS.values() if c.across_hosts)
"""The chapter whose results the ``across_hosts`` rules read (the emulated hosts of chapter 6)."""


def load_across_hosts_rules(path: Path | str | None = None) -> dict[str, dict]:
    """Return the rules that judge source claims again on the runs across emulated hosts (``across_hosts`` in the rules
    file), after checking their shape; every id must be a claim of claims.csv."""
    import yaml

    p = Path(path) if path is not None else rules_path()
    doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    rules = doc.get("across_hosts") or {}
    unknown = sorted(set(rules) - set(load_claims()["id"]))
    if unknown:
        raise ClaimsError(f"across_hosts rules for claims that are not in claims.csv: {unknown}")
    for cid, rule in rules.items():
        check_rule(cid, rule)
    return rules


def judge_across_hosts(rules_file: Path | str | None = None) -> pd.DataFrame:
    """Return the source claims judged again on chapter 6's runs across emulated hosts, one row per claim.

    The same judge and policy as the ledger; the claim's own verdict (its chapter's, on one host) is not replaced: the
    two are shown side by side. Empty when chapter 6 has not run.
    """
    rules = load_across_hosts_rules(rules_file)
    policy = load_rules(rules_file)[0]
    res = Results()
    if res.summary(ACROSS_HOSTS_CHAPTER) is None:
        return pd.DataFrame(columns=["claim_id", "chapter", *EVIDENCE_COLUMNS[1:], "paraphrase"])
    seeds = load_claims().set_index("id")
    rows = []
    for cid, rule in rules.items():
        claim = {**seeds.loc[cid].to_dict(), "id": cid, "chapter": ACROSS_HOSTS_CHAPTER}
        j = judge(claim, rule, res, policy)
        rows.append({**j.row(), "chapter": seeds.loc[cid, "chapter"], "paraphrase": seeds.loc[cid, "paraphrase"]})
    return pd.DataFrame(rows)


def record(chapter: str) -> pd.DataFrame:
    """Judge a chapter's claims from its results on disk and write them as its evidence (claims.csv); return them."""
    led = judge_all([chapter])
    ev = led.rename(columns={"id": "claim_id"})[EVIDENCE_COLUMNS]
    results.write_table(chapter, "claims", ev)
    return ev


def ledger() -> pd.DataFrame:
    """Return every seed claim with the evidence chapters wrote (verdict 'not yet measured' where none)."""
    seeds = load_claims()
    parts = [e for ch in results.CHAPTERS if (e := results.read_table(ch, "claims")) is not None]
    if parts:
        ev = pd.concat(parts, ignore_index=True).rename(columns={"unit": "measured_unit"})
        out = seeds.merge(ev, left_on="id", right_on="claim_id", how="left").drop(columns=["claim_id"])
    else:
        out = seeds.assign(measured=None, measured_unit=None, verdict=None, evidence=None)
    out["verdict"] = out["verdict"].fillna(PENDING)
    return with_regimes(out)


def verdict_counts(led: pd.DataFrame | None = None) -> pd.DataFrame:
    """Return verdict counts per source chapter (rows) and verdict (columns), with totals."""
    led = ledger() if led is None else led
    cols = [v for v in (*VERDICTS, PENDING) if v in set(led["verdict"])]
    t = pd.crosstab(led["chapter"], led["verdict"]).reindex(columns=cols, fill_value=0)
    t.loc["all"] = t.sum()
    t["claims"] = t.sum(axis=1)
    return t


def markdown_table(df: pd.DataFrame) -> str:
    """Return ``df`` as a GitHub-flavoured Markdown table (cells with '|' escaped, numbers at 3 significant digits)."""

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return _fmt(v)
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


# ------------------------------------------------------------------------ for the pages


def measured_text(r: dict) -> str:
    """Return 'value unit [low, high] (n = N)' for a ledger row ('' where nothing was measured)."""
    if pd.isna(r.get("measured")):
        return ""
    u = r.get("measured_unit") if isinstance(r.get("measured_unit"), str) else ""
    lo, hi = r.get("ci_low"), r.get("ci_high")
    lo, hi = (None, None) if pd.isna(lo) or pd.isna(hi) else (float(lo), float(hi))
    reps = r.get("replicates")
    reps = f", {int(reps)} replicates" if reps is not None and not pd.isna(reps) and int(reps) > 1 else ""
    n = "" if pd.isna(r.get("n")) else f" (n = {int(r['n'])}{reps})"
    return f"{numbers.interval(float(r['measured']), lo, hi, u if u != '%' else '%')}{n}"


def chapter_table(chapter: str) -> pd.DataFrame:
    """Return a chapter's ledger for its page: quote, verdict, measured value with its interval and n, claimed, evidence."""
    led = ledger().query("chapter == @chapter")

    return pd.DataFrame({
        "id": led["id"], "quote": led["quote"], "verdict": led["verdict"],
        "measured [95% CI]": [measured_text(r) for r in led.to_dict("records")],
        "claimed": [("" if pd.isna(v) else f"{v}{_u(u) if isinstance(u, str) and u not in UNIT_WORDS else ''}")
                    for v, u in zip(led["value"], led["unit"], strict=True)],
        "evidence": led["evidence"],
    }).set_index("id")  # fmt: skip


def counts_text(chapter: str | None = None) -> str:
    """Return e.g. 'Of 27 claims this build finds 4 confirmed, 12 refuted, 3 partly, 6 inconclusive and 2 not testable here.'"""
    led = ledger()
    if chapter is not None:
        led = led.query("chapter == @chapter")
    c = led["verdict"].value_counts()
    parts = [f"{int(c.get(v, 0))} {v}" for v in (*VERDICTS, PENDING) if v != PENDING or c.get(v, 0)]
    return f"Of {len(led)} claims this build finds " + ", ".join(parts[:-1]) + f" and {parts[-1]}."
