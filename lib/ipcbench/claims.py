"""The claims ledger: every testable claim of the source analyses, with measured evidence and a verdict.

Claims are quoted by hand in ``data/seeds/claims.csv`` (one row each: id, source
file, the quote in its original language, an English paraphrase, value, unit,
chapter). Each chapter writes its evidence (``claims.csv`` in its results:
claim_id, measured, unit, verdict, evidence); :func:`ledger` joins the two.
"""

from __future__ import annotations

import pandas as pd

from . import results

VERDICTS = ("confirmed", "refuted", "partly", "not testable here")
PENDING = "not yet measured"
SEED_COLUMNS = ["id", "source", "quote", "paraphrase", "value", "unit", "chapter"]


class ClaimsError(ValueError):
    """The claims file or a chapter's evidence does not follow the ledger's rules."""


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
    return df


def evidence(
    claim_id: str, measured: float | str | None, unit: str, verdict: str, evidence: str
) -> dict:
    """Return one evidence row for a claim, checking its verdict and that the claim exists."""
    if verdict not in VERDICTS:
        raise ClaimsError(f"verdict {verdict!r} for {claim_id} is not one of {VERDICTS}")
    if verdict == "not testable here" and "because" not in evidence.lower():
        raise ClaimsError(f"{claim_id}: a 'not testable here' verdict must say why ('because ...')")
    known = set(load_claims()["id"])
    if claim_id not in known:
        raise ClaimsError(f"claim {claim_id!r} is not in data/seeds/claims.csv")
    return {"claim_id": claim_id, "measured": measured, "unit": unit, "verdict": verdict, "evidence": evidence}


def record(chapter: str, rows: list[dict]) -> pd.DataFrame:
    """Write a chapter's evidence rows (from :func:`evidence`) to its results; return them as a table."""
    df = pd.DataFrame(rows, columns=results.CLAIM_COLUMNS)
    own = set(load_claims().query("chapter == @chapter")["id"])
    foreign = sorted(set(df["claim_id"]) - own)
    if foreign:
        raise ClaimsError(f"chapter {chapter} gave evidence for claims of other chapters: {foreign}")
    results.write_claims(chapter, df)
    return df


def ledger() -> pd.DataFrame:
    """Return every seed claim joined with the evidence chapters have written (verdict 'not yet measured' if none)."""
    seeds = load_claims()
    parts = [e for ch in results.CHAPTERS if (e := results.read_claims(ch)) is not None]
    if parts:
        ev = pd.concat(parts, ignore_index=True).rename(columns={"unit": "measured_unit"})
        out = seeds.merge(ev, left_on="id", right_on="claim_id", how="left").drop(columns=["claim_id"])
    else:
        out = seeds.assign(measured=None, measured_unit=None, verdict=None, evidence=None)
    out["verdict"] = out["verdict"].fillna(PENDING)
    return out


def verdict_counts() -> pd.Series:
    """Return how many claims have each verdict (including 'not yet measured')."""
    return ledger()["verdict"].value_counts()
