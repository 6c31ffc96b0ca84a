"""The claims ledger: claims quoted verbatim, a rule for every claim, one judge whose every rule kind reaches every outcome."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, SHARED
from ipcbench import claims, results
from ipcbench.claims import CONFIRMED, INCONCLUSIVE, NOT_TESTABLE, PARTLY, REFUTED


def test_claims_file_shape():
    df = claims.load_claims()
    assert len(df) >= 40
    assert df["id"].is_unique
    assert set(df["chapter"]) == set(results.CHAPTERS) - {"machine_limits", "scale_out"}  # (no source analysis of their own)
    assert (df.groupby("chapter").size() >= 5).all()
    assert df["quote"].str.len().min() > 3 and df["paraphrase"].str.len().min() > 10
    assert df["source"].str.fullmatch(r"00[0-4]_[0-9a-f]{16}\.txt").all()


def test_every_quote_is_the_one_found_verbatim_in_its_source():
    """The shipped quote index records where each quote stands in its source; a quote edited since (or a claim added
    without its place) fails here, with or without the sources beside the checkout."""
    df = claims.load_claims()
    index = claims.quote_index().set_index("id")
    assert list(claims.quote_index().columns) == claims.QUOTE_INDEX_COLUMNS
    assert set(index.index) == set(df["id"]), "every claim needs its row in data/seeds/quote_index.csv"
    for row in df.itertuples():
        q = claims.normalized(row.quote)
        assert index.loc[row.id, "source"] == row.source, row.id
        assert index.loc[row.id, "quote_sha256"] == claims._sha256(q), f"{row.id}: its quote changed since it was located"
        assert index.loc[row.id, "length"] == len(q), row.id


def test_the_quote_index_is_what_the_sources_give_where_they_are_beside_the_checkout(tmp_path):
    if (SHARED / "seeds").is_dir():
        assert claims.locate_quotes(SHARED / "seeds").equals(claims.quote_index())
    # and the check itself: a source whose text no longer holds a quote is refused, naming the claim
    df = claims.load_claims().head(2)
    (tmp_path / df["source"].iloc[0]).write_text("a source that says something else", encoding="utf-8")
    with pytest.raises(claims.ClaimsError, match=df["id"].iloc[0]):
        claims.locate_quotes(tmp_path, df)
    text = "Intro.  " + "\n".join(df["quote"]) + " end"
    (tmp_path / df["source"].iloc[0]).write_text(text, encoding="utf-8")
    got = claims.locate_quotes(tmp_path, df)
    norm = claims.normalized(text)
    for r in got.itertuples():
        assert norm[r.start:r.start + r.length] == claims.normalized(df.set_index("id").loc[r.id, "quote"])


def test_every_claim_has_a_wellformed_rule_and_its_claimed_value_parses():
    policy, rules = claims.load_rules()
    seeds = claims.load_claims()
    assert set(rules) == set(seeds["id"])
    assert 0 < policy.tolerance < 1 and policy.min_ci_level == 0.95 and policy.text
    for claim in seeds.to_dict("records"):
        rule = rules[claim["id"]]
        for case in claims._cases(rule) if rule["kind"] != "not_testable" else []:
            if case["kind"] in ("value", "ratio", "share", "bound", "identity") and "claimed_from" not in case:
                assert claims.parse_claimed(claim["value"], case.get("value_part")) is not None, claim["id"]


def test_no_verdict_is_typed_in_the_experiments():
    words = re.compile(r"[\"'](confirmed|refuted|partly|inconclusive|not testable here)[\"']")
    typed = {p.name: words.findall(p.read_text()) for p in (REPO / "lib/ipcbench/experiments").glob("*.py")}
    assert not any(typed.values()), typed
    assert not any("ledger_evidence" in p.read_text() for p in (REPO / "lib/ipcbench/experiments").glob("*.py"))


def test_ledger_lists_every_claim_pending_until_measured(results_tmp):
    led = claims.ledger()
    assert len(led) == len(claims.load_claims())
    assert set(led["verdict"]) == {claims.PENDING}
    assert set(claims.judge_all()["verdict"]) == {claims.PENDING}


# ------------------------------------------------------------------ claimed values


@pytest.mark.parametrize(
    "text, part, low, high",
    [("5", None, 5, 5), ("-100", None, -100, -100), ("80-90", None, 80, 90), ("0.0057", None, 0.0057, 0.0057),
     ("4000 vs 30", 0, 4000, 4000), ("40 vs 30", 1, 30, 30), ("6 -> 1-2", 1, 1, 2), ("10-50", None, 10, 50)],
)  # fmt: skip
def test_claimed_values_parse(text, part, low, high):
    c = claims.parse_claimed(text, part)
    assert (c.low, c.high) == (low, high)


def test_a_range_written_downwards_is_refused():
    with pytest.raises(claims.ClaimsError, match="downwards"):
        claims.parse_claimed("5-3")


def test_claimed_value_with_parts_needs_the_rule_to_choose():
    with pytest.raises(claims.ClaimsError, match="value_part"):
        claims.parse_claimed("7 vs 4")
    assert claims.parse_claimed(None) is None and claims.parse_claimed(float("nan")) is None


# ------------------------------------------------------------- the judge, synthetic


def _row(variant: str, median: float, lo: float, hi: float, n: int = 20, level: float = 0.96, unit: str = "s") -> dict:
    return {"chapter": "pipeline", "experiment": "synthetic", "variant": variant, "payload": None, "size_bytes": None,
            "ranks": 2, "oversubscribed": False, "metric": "m", "unit": unit, "n": n, "median": median, "ci_low": lo,
            "ci_high": hi, "iqr": 0.0, "min": lo, "p99": hi, "cv": 0.01, "unstable": False, "ci_level": level}  # fmt: skip


@pytest.fixture
def synthetic(results_tmp):
    """Write a synthetic 'pipeline' summary; return a function judging a claim value + rule against it."""

    def judge(rows: list[dict], rule: dict, value: str | None = None, unit: str = "ms"):
        summary = results.frame(rows)
        results.write("pipeline", summary, None, {"synthetic": True})
        claim = {"id": "pl-99", "chapter": "pipeline", "value": value, "unit": unit}
        return claims.judge(claim, rule, claims.Results(), claims.Policy())

    return judge


def _sel(v: str) -> dict:
    return {"experiment": "synthetic", "variant": v}


@pytest.mark.parametrize(
    "kind, rows, value, extra, expected",
    [
        # value: claimed 10 ms, band 7.5-12.5 ms (25%); measured in s, scaled to ms
        ("value", [_row("a", 0.010, 0.0095, 0.0105)], "10", {}, CONFIRMED),
        ("value", [_row("a", 0.030, 0.029, 0.031)], "10", {}, REFUTED),
        ("value", [_row("a", 0.012, 0.011, 0.016)], "10", {}, INCONCLUSIVE),  # straddles 12.5
        ("value", [_row("a", 0.010, 0.008, 0.012, n=4, level=0.875)], "10", {}, INCONCLUSIVE),  # too few samples
        ("value", [_row("a", 0.030, 0.029, 0.031)], "10", {"neutral": 0}, PARTLY),  # right sign, wrong size
        ("value", [_row("a", -0.030, -0.031, -0.029)], "10", {"neutral": 0}, REFUTED),  # wrong sign
        # a range claim: 80-90 -> band 60-112.5
        ("value", [_row("a", 0.1, 0.095, 0.105)], "80-90", {}, CONFIRMED),
    ],
)  # fmt: skip
def test_value_rule_reaches_every_outcome(synthetic, kind, rows, value, extra, expected):
    j = synthetic(rows, {"kind": kind, "select": _sel("a"), "scale": 1e3, **extra}, value)
    assert j.verdict == expected, j.evidence
    assert j.n == rows[0]["n"] and j.measured == pytest.approx(rows[0]["median"] * 1e3)


@pytest.mark.parametrize(
    "rows, value, expected",
    [
        ([_row("r", -20, -22, -18, unit="%")], "-22", CONFIRMED),  # pkl5 22% slower: measured 20% slower
        ([_row("r", -60, -65, -55, unit="%")], "-22", PARTLY),  # slower, but much more than claimed
        ([_row("r", 8, 5, 11, unit="%")], "-22", REFUTED),  # the wrong sign: faster
        ([_row("r", -2, -6, 3, unit="%")], "-22", INCONCLUSIVE),  # far from -22, but slower or faster: not shown
        ([_row("r", -4, -6.5, -2, unit="%")], "-5", INCONCLUSIVE),  # straddles the band's edge
    ],
)  # fmt: skip
def test_ratio_rule_has_a_direction(synthetic, rows, value, expected):
    j = synthetic(rows, {"kind": "ratio", "select": _sel("r")}, value, unit="%")
    assert j.verdict == expected, j.evidence


@pytest.mark.parametrize(
    "rows, expected",
    [([_row("r", 2.6, 2.5, 2.7, unit="x")], CONFIRMED), ([_row("r", 1.5, 1.45, 1.55, unit="x")], PARTLY),
     ([_row("r", 0.5, 0.45, 0.55, unit="x")], REFUTED), ([_row("r", 1.8, 1.6, 2.2, unit="x")], INCONCLUSIVE)],
)  # fmt: skip
def test_ratio_rule_in_x_uses_1_as_neutral(synthetic, rows, expected):
    assert synthetic(rows, {"kind": "ratio", "select": _sel("r")}, "2.5", unit="x").verdict == expected


@pytest.mark.parametrize(
    "rows, expected",
    [([_row("s", 40, 38, 42, unit="%")], CONFIRMED), ([_row("s", 5, 4, 6, unit="%")], REFUTED),
     ([_row("s", 30, 28, 36, unit="%")], INCONCLUSIVE)],
)  # fmt: skip
def test_share_rule(synthetic, rows, expected):
    assert synthetic(rows, {"kind": "share", "select": _sel("s")}, "40.9", unit="%").verdict == expected


def test_share_rule_reaches_partly_through_its_cases(synthetic):
    rows = [_row("s", 40, 38, 42, unit="%"), _row("t", 5, 4, 6, unit="%")]
    rule = {"kind": "share", "select": _sel("s"), "cases": [{}, {"select": {"variant": "t"}}]}
    j = synthetic(rows, rule, "40.9", unit="%")
    assert j.verdict == PARTLY and j.cases == [CONFIRMED, REFUTED]


@pytest.mark.parametrize(
    "rows, bound, neutral, expected",
    [
        ([_row("b", 3, 2, 4, unit="%")], "at_most", None, CONFIRMED),  # within 5%
        ([_row("b", 40, 30, 50, unit="%")], "at_most", None, REFUTED),
        ([_row("b", 6, 4, 8, unit="%")], "at_most", None, INCONCLUSIVE),  # straddles 6.25
        ([_row("b", 40, 30, 50, unit="%")], "at_most", 0, PARTLY),  # a lead, but larger than claimed
        ([_row("b", -10, -12, -8, unit="%")], "at_most", 0, REFUTED),  # no lead at all
        ([_row("b", 200, 180, 220, unit="%")], "at_least", None, CONFIRMED),
        ([_row("b", 40, 30, 50, unit="%")], "at_least", 0, PARTLY),  # up, but less than claimed
        ([_row("b", -40, -50, -30, unit="%")], "at_least", 0, REFUTED),
    ],
)  # fmt: skip
def test_bound_rule(synthetic, rows, bound, neutral, expected):
    value = "5" if bound == "at_most" else "150"
    rule = {"kind": "bound", "bound": bound, "select": _sel("b"), **({"neutral": neutral} if neutral is not None else {})}
    assert synthetic(rows, rule, value, unit="%").verdict == expected


@pytest.mark.parametrize(
    "rows, expected",
    [([_row("q", 1.05, 1.0, 1.1, unit="x")], CONFIRMED), ([_row("q", 1.6, 1.5, 1.7, unit="x")], REFUTED),
     ([_row("q", 1.2, 1.1, 1.4, unit="x")], INCONCLUSIVE)],
)  # fmt: skip
def test_same_rule(synthetic, rows, expected):
    assert synthetic(rows, {"kind": "same", "select": _sel("q")}).verdict == expected


def test_same_rule_reaches_partly_through_its_cases(synthetic):
    rows = [_row("q", 1.05, 1.0, 1.1, unit="x"), _row("w", 1.6, 1.5, 1.7, unit="x")]
    rule = {"kind": "same", "select": _sel("q"), "cases": [{}, {"select": {"variant": "w"}}]}
    assert synthetic(rows, rule).verdict == PARTLY


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ((1.0, 0.9, 1.1), (2.0, 1.9, 2.1), CONFIRMED),
        ((2.0, 1.9, 2.1), (1.0, 0.9, 1.1), REFUTED),  # the claim's wrong sign: A is measured slower
        ((1.0, 0.9, 1.5), (1.2, 1.1, 1.3), INCONCLUSIVE),  # overlapping intervals: no difference shown
    ],
)
def test_order_rule(synthetic, a, b, expected):
    rows = [_row("a", *a), _row("b", *b)]
    assert synthetic(rows, {"kind": "order", "lower": _sel("a"), "than": _sel("b")}).verdict == expected
    flipped = {CONFIRMED: REFUTED, REFUTED: CONFIRMED, INCONCLUSIVE: INCONCLUSIVE}[expected]
    assert synthetic(rows, {"kind": "order", "higher": _sel("a"), "than": _sel("b")}).verdict == flipped


def test_order_rule_with_too_few_samples_is_inconclusive(synthetic):
    rows = [_row("a", 1.0, 0.9, 1.1, n=3, level=0.75), _row("b", 2.0, 1.9, 2.1)]
    assert synthetic(rows, {"kind": "order", "lower": _sel("a"), "than": _sel("b")}).verdict == INCONCLUSIVE


def test_order_rule_reaches_partly_through_its_cases(synthetic):
    rows = [_row("a", 1.0, 0.9, 1.1), _row("b", 2.0, 1.9, 2.1), _row("c", 0.5, 0.4, 0.6)]
    rule = {"kind": "order", "lower": _sel("a"), "than": _sel("b"), "cases": [{}, {"than": {"variant": "c"}}]}
    j = synthetic(rows, rule)
    assert j.verdict == PARTLY and j.cases == [CONFIRMED, REFUTED]


@pytest.mark.parametrize(
    "computed, expected", [(3.75, REFUTED), (3750.5, CONFIRMED)],
)
def test_identity_rule_checks_the_sources_arithmetic_at_its_rounding(synthetic, computed, expected):
    rows = [_row("id", computed, computed, computed, n=1, level=1.0, unit="1")]
    assert synthetic(rows, {"kind": "identity", "select": _sel("id")}, "3750.23", unit="MB").verdict == expected


# every kind, every outcome, in one case: a kind without a direction reaches 'partly' through a rule's neutral point
# or its looser band (partly_within); an ordering has no size, so it holds in part only across its cases (below)
_EXACT = {"n": 1, "level": 1.0}


@pytest.mark.parametrize(
    "kind, rows, value, extra, expected",
    [
        ("share", [_row("s", 40, 38, 42, unit="%")], "40.9", {}, CONFIRMED),
        ("share", [_row("s", 5, 4, 6, unit="%")], "40.9", {}, REFUTED),
        ("share", [_row("s", 30, 28, 36, unit="%")], "40.9", {}, INCONCLUSIVE),
        ("share", [_row("s", 12, 10, 14, unit="%")], "40.9", {"neutral": 0}, PARTLY),  # a share, far smaller
        ("same", [_row("s", 1.05, 1.0, 1.1, unit="x")], None, {}, CONFIRMED),
        ("same", [_row("s", 2.6, 2.5, 2.7, unit="x")], None, {"partly_within": 1.0, "why": "t"}, REFUTED),
        ("same", [_row("s", 1.2, 1.1, 1.4, unit="x")], None, {}, INCONCLUSIVE),
        ("same", [_row("s", 1.5, 1.4, 1.6, unit="x")], None, {"partly_within": 1.0, "why": "t"}, PARTLY),
        ("identity", [_row("s", 3750.2, 3750.2, 3750.2, **_EXACT)], "3750.23", {}, CONFIRMED),
        ("identity", [_row("s", 3.75, 3.75, 3.75, **_EXACT)], "3750.23", {}, REFUTED),
        # computed from the source's rounded figures: the rounding's interval straddles the band's edge
        ("identity", [_row("s", 3745, 3735, 3755, **_EXACT)], "3750.23", {}, INCONCLUSIVE),
        ("identity", [_row("s", 3700, 3700, 3700, **_EXACT)], "3750.23", {"neutral": 0}, PARTLY),
        ("bound", [_row("s", 3, 2, 4, unit="%")], "5", {"bound": "at_most"}, CONFIRMED),
        ("bound", [_row("s", -10, -12, -8, unit="%")], "5", {"bound": "at_most", "neutral": 0}, REFUTED),
        ("bound", [_row("s", 6, 4, 8, unit="%")], "5", {"bound": "at_most"}, INCONCLUSIVE),
        ("bound", [_row("s", 40, 30, 50, unit="%")], "5", {"bound": "at_most", "neutral": 0}, PARTLY),
    ],
)  # fmt: skip
def test_every_kind_reaches_every_outcome_in_one_case(synthetic, kind, rows, value, extra, expected):
    j = synthetic(rows, {"kind": kind, "select": _sel("s"), **extra}, value, unit="%")
    assert j.verdict == expected and j.cases == [expected], j.evidence


def test_a_looser_band_must_be_wider_than_the_band():
    with pytest.raises(claims.ClaimsError, match="wider"):
        claims.check_rule("x-1", {"kind": "same", "select": {}, "partly_within": 0.2, "tolerance": 0.3, "why": "t"})
    with pytest.raises(claims.ClaimsError, match="why"):
        claims.check_rule("x-1", {"kind": "same", "select": {}, "partly_within": 0.5})


def test_identity_rule_reaches_partly_through_its_cases(synthetic):
    rows = [_row("x", 3750.2, 3750.2, 3750.2, n=1, level=1.0), _row("y", 3.75, 3.75, 3.75, n=1, level=1.0)]
    rule = {"kind": "identity", "select": _sel("x"), "cases": [{}, {"select": {"variant": "y"}}]}
    assert synthetic(rows, rule, "3750.23").verdict == PARTLY


def test_claimed_from_a_measured_row(synthetic):
    rows = [_row("got", 10, 10, 10, n=1, level=1.0), _row("sent", 30, 30, 30, n=1, level=1.0)]
    rule = {"kind": "identity", "select": _sel("got"), "claimed_from": _sel("sent")}
    assert synthetic(rows, rule).verdict == REFUTED
    rule["claimed_from"] = _sel("got")
    assert synthetic(rows, rule).verdict == CONFIRMED


def test_absolute_tolerance_around_zero(synthetic):
    rule = {"kind": "value", "select": _sel("z"), "tolerance_abs": 0.5, "why": "half a copy"}
    assert synthetic([_row("z", 0.1, 0.05, 0.2, unit="1")], rule, "0").verdict == CONFIRMED
    assert synthetic([_row("z", 1.0, 0.9, 1.1, unit="1")], rule, "0").verdict == REFUTED


def test_not_testable_says_why_and_may_show_a_measurement(synthetic):
    j = synthetic([_row("a", 1.0, 0.9, 1.1)], {"kind": "not_testable", "reason": "because no GPU", "show": _sel("a")}, "3")
    assert j.verdict == NOT_TESTABLE and j.evidence.startswith("Not testable here because no GPU") and j.measured == 1.0


@pytest.mark.parametrize(
    "rule, match",
    [
        ({"kind": "guess", "select": {}}, "kind"),
        ({"kind": "value"}, "select"),
        ({"kind": "order", "lower": {}}, "than"),
        ({"kind": "bound", "select": {}}, "at_least"),
        ({"kind": "value", "select": {}, "tolerance": 0.5}, "why"),
        ({"kind": "not_testable", "reason": "no GPU"}, "because"),
        ({"kind": "value", "select": {}, "note": "this is confirmed"}, "outcome"),
        ({"kind": "value", "select": {}, "colour": 1}, "unknown"),
    ],
)
def test_malformed_rules_are_refused(rule, match):
    with pytest.raises(claims.ClaimsError, match=match):
        claims.check_rule("x-1", rule)


def test_a_selector_that_finds_no_row_or_several_fails_loudly(synthetic):
    with pytest.raises(claims.ClaimsError, match="finds 0 rows"):
        synthetic([_row("a", 1, 1, 1)], {"kind": "value", "select": _sel("nope")}, "1")
    with pytest.raises(claims.ClaimsError, match="finds 2 rows"):
        synthetic([_row("a", 1, 1, 1), _row("a", 2, 2, 2)], {"kind": "value", "select": _sel("a")}, "1")


def test_combine():
    assert claims.combine([CONFIRMED, CONFIRMED]) == CONFIRMED
    assert claims.combine([CONFIRMED, REFUTED]) == PARTLY
    assert claims.combine([CONFIRMED, INCONCLUSIVE]) == INCONCLUSIVE
    assert claims.combine([REFUTED, INCONCLUSIVE]) == INCONCLUSIVE  # the undecided case could make it partly
    assert claims.combine([REFUTED, REFUTED]) == REFUTED and claims.combine([PARTLY, INCONCLUSIVE]) == PARTLY
    assert claims.combine([CONFIRMED, REFUTED, INCONCLUSIVE]) == PARTLY  # partly whatever the undecided case is
    assert claims.combine([PARTLY, REFUTED]) == PARTLY


def test_a_rules_own_tolerance_changes_a_verdict(synthetic):
    rows = [_row("a", 0.014, 0.0135, 0.0145)]
    assert synthetic(rows, {"kind": "value", "select": _sel("a"), "scale": 1e3}, "10").verdict == REFUTED
    rule = {"kind": "value", "select": _sel("a"), "scale": 1e3, "tolerance": 0.5, "why": "a test"}
    assert synthetic(rows, rule, "10").verdict == CONFIRMED


def test_a_band_stops_at_what_a_measurement_can_reach(synthetic):
    """A saving claimed at 80-90% is widened to 60-112.5%; with limits [null, 100] the band stops at 100%, so a
    measurement above 100% (which no saving can be) lies outside it: the right direction, not the claimed size."""
    rows = [_row("s", 105.0, 103.0, 107.0, unit="%")]
    loose = synthetic(rows, {"kind": "ratio", "select": _sel("s")}, "80-90", unit="%")
    capped = synthetic(rows, {"kind": "ratio", "select": _sel("s"), "limits": [None, 100]}, "80-90", unit="%")
    assert loose.verdict == CONFIRMED and "60 to 112" in loose.evidence
    assert capped.verdict == PARTLY and "60 to 100" in capped.evidence
    inside = synthetic([_row("s", 95.0, 94.0, 96.0, unit="%")], {"kind": "ratio", "select": _sel("s"), "limits": [None, 100]},
                       "80-90", unit="%")  # fmt: skip
    assert inside.verdict == CONFIRMED
    for bad in ([100], [None, None], [100, 0], "100"):
        with pytest.raises(claims.ClaimsError, match="limits"):
            claims.check_rule("pl-99", {"kind": "ratio", "select": _sel("s"), "limits": bad}, "80-90")


def _rules_copy(tmp_path, tolerance: float) -> Path:
    """Write the shipped rules file with another policy tolerance; return its path."""
    import yaml

    doc = yaml.safe_load(claims.rules_path().read_text(encoding="utf-8"))
    doc["policy"]["tolerance"] = tolerance
    p = tmp_path / f"rules_{tolerance}.yaml"
    p.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return p


def test_the_rules_file_can_be_swapped_and_the_judge_follows_its_policy(results_tmp, tmp_path, monkeypatch):
    """A reader writes a rules file of their own (here: the shipped one with a 50% tolerance); loaded by path or
    through IPCBENCH_CLAIM_RULES, its policy decides the verdict."""
    assert claims.rules_path().name == "claim_rules.yaml" and claims.rules_path().exists()
    loose = _rules_copy(tmp_path, 0.5)
    shipped_policy, shipped_rules = claims.load_rules()
    policy, rules = claims.load_rules(loose)
    assert (shipped_policy.tolerance, policy.tolerance) == (0.25, 0.5) and rules == shipped_rules
    results.write("pipeline", results.frame([_row("a", 0.014, 0.0135, 0.0145)]), None, {"synthetic": True})
    claim = {"id": "pl-99", "chapter": "pipeline", "value": "10", "unit": "ms"}
    rule = {"kind": "value", "select": _sel("a"), "scale": 1e3}
    assert claims.judge(claim, rule, claims.Results(), shipped_policy).verdict == REFUTED  # 14 ms against 7.5-12.5
    assert claims.judge(claim, rule, claims.Results(), policy).verdict == CONFIRMED  # against 5-15
    monkeypatch.setenv("IPCBENCH_CLAIM_RULES", str(loose))
    assert claims.rules_path() == loose
    assert claims.judge(claim, rule, claims.Results()).verdict == CONFIRMED  # the policy read from the file in use
    monkeypatch.setenv("IPCBENCH_CLAIM_RULES", str(tmp_path / "nope.yaml"))
    with pytest.raises(claims.ClaimsError, match="nope.yaml is missing"):
        claims.load_rules()


def test_a_policy_without_a_tolerance_is_refused(tmp_path):
    with pytest.raises(claims.ClaimsError, match="above 0"):
        claims.load_rules(_rules_copy(tmp_path, 0.0))


# ------------------------------------------------------- rows and rules the judge must refuse


_UNTRUSTED = [
    ({"median": float("nan")}, "median is nan"),
    ({"median": 0.030}, "outside its own interval"),  # 30 ms with [9.5, 10.5]
    ({"ci_low": float("nan")}, "ci_low is nan"),
    ({"ci_high": float("nan")}, "ci_high is nan"),
    ({"ci_low": 0.0105, "ci_high": 0.0095}, "runs downwards"),
    ({"median": float("inf"), "ci_high": float("inf")}, "median is inf"),
    ({"ci_high": float("inf")}, "ci_high is inf"),
    ({"ci_low": float("-inf")}, "ci_low is -inf"),
    ({"n": 0}, "sample count"),
    ({"ci_level": float("nan")}, "coverage"),
    ({"ci_level": 1.5}, "coverage"),
]


@pytest.mark.parametrize("change, match", _UNTRUSTED, ids=[m for _, m in _UNTRUSTED])
@pytest.mark.parametrize("kind", ["value", "order", "not_testable"])
def test_a_row_the_judge_cannot_trust_is_an_error_naming_it(synthetic, change, match, kind):
    row = {**_row("bad", 0.010, 0.0095, 0.0105), **change}
    rows = [row, _row("ok", 0.020, 0.019, 0.021)]
    rule = {"value": {"kind": "value", "select": _sel("bad"), "scale": 1e3},
            "order": {"kind": "order", "lower": _sel("ok"), "than": _sel("bad")},
            "not_testable": {"kind": "not_testable", "reason": "because a test", "show": _sel("bad")}}[kind]  # fmt: skip
    with pytest.raises(claims.ClaimsError, match=rf"pipeline summary row .*'bad'.* cannot be judged: .*{match}"):
        synthetic(rows, rule, "10")


def test_a_claimed_zero_needs_an_absolute_tolerance(synthetic):
    rule = {"kind": "value", "select": _sel("z")}
    with pytest.raises(claims.ClaimsError, match="zero width.*tolerance_abs"):
        synthetic([_row("z", 0.0, 0.0, 0.0, n=1, level=1.0)], rule, "0")
    with pytest.raises(claims.ClaimsError, match="zero width"):
        claims.check_rule("x-1", rule, "0")
    claims.check_rule("x-1", {**rule, "tolerance_abs": 0.1, "why": "t"}, "0")  # with one it is judged
    claims.check_rule("x-1", {**rule, "kind": "bound", "bound": "at_most"}, "0")  # a bound has a side, not a width


def test_every_shipped_rule_has_a_band_with_a_width():
    _policy, rules = claims.load_rules()
    for claim in claims.load_claims().to_dict("records"):
        claims.check_rule(claim["id"], rules[claim["id"]], None if pd.isna(claim["value"]) else claim["value"])


def test_judge_all_refuses_a_claim_without_a_rule_and_a_rule_without_a_claim(results_tmp, tmp_path):
    import yaml

    doc = yaml.safe_load(claims.rules_path().read_text(encoding="utf-8"))
    dropped = dict(doc, rules={k: v for k, v in doc["rules"].items() if k != "fs-01"})
    p = tmp_path / "fewer.yaml"
    p.write_text(yaml.safe_dump(dropped, allow_unicode=True), encoding="utf-8")
    with pytest.raises(claims.ClaimsError, match=r"claims without a rule .*\['fs-01'\]"):
        claims.judge_all(rules_file=p)
    extra = dict(doc, rules={**doc["rules"], "zz-01": {"kind": "not_testable", "reason": "because a test"}})
    p.write_text(yaml.safe_dump(extra, allow_unicode=True), encoding="utf-8")
    with pytest.raises(claims.ClaimsError, match=r"rules for claims that are not in claims.csv: \['zz-01'\]"):
        claims.judge_all(rules_file=p)
    assert set(claims.judge_all()["verdict"]) == {claims.PENDING}  # the shipped pair is whole


@pytest.mark.parametrize("damage, match", [
    (lambda p: p.write_text(""), "is empty"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" * 20), "not a text CSV"),
    (lambda p: p.write_text(p.read_text().replace("chapter,", "", 1)), "breaks the results schema"),
])  # fmt: skip
def test_a_damaged_summary_is_an_error_naming_the_file_never_a_chapter_that_has_not_run(synthetic, damage, match):
    synthetic([_row("a", 0.010, 0.0095, 0.0105)], {"kind": "value", "select": _sel("a"), "scale": 1e3}, "10")
    path = results.results_root() / "pipeline" / "summary.csv"
    damage(path)
    with pytest.raises(results.ResultsError, match=rf"{path}.*{match}|{match}"):
        claims.Results().summary("pipeline")
    with pytest.raises(results.ResultsError, match=str(path)):
        claims.judge_all(["pipeline"])


def test_a_truncated_meta_json_is_an_error_naming_the_file(synthetic):
    synthetic([_row("a", 0.010, 0.0095, 0.0105)], {"kind": "value", "select": _sel("a"), "scale": 1e3}, "10")
    meta = results.results_root() / "pipeline" / "meta.json"
    meta.write_text(meta.read_text()[:10])
    with pytest.raises(results.ResultsError, match=rf"{meta} is not valid JSON"):
        results.read("pipeline")


@pytest.mark.parametrize(
    "rows, expected",
    [([_row("q", 0.4, 0.3, 0.5, unit="x")], CONFIRMED), ([_row("q", 1.6, 1.5, 1.7, unit="x")], REFUTED),
     ([_row("q", 1.2, 1.1, 1.4, unit="x")], INCONCLUSIVE)],
)  # fmt: skip
def test_same_rule_bounded_above_means_no_worse(synthetic, rows, expected):
    """'A negligible disadvantage': at most the tolerance worse; being better does not contradict it."""
    assert synthetic(rows, {"kind": "same", "bound": "at_most", "select": _sel("q")}).verdict == expected


def test_a_case_of_another_kind_does_not_inherit_the_rules_scale(synthetic):
    rows = [_row("a", 0.010, 0.0095, 0.0105), _row("b", 0.020, 0.019, 0.021), _row("r", 1.0, 0.95, 1.05, unit="x")]
    rule = {"kind": "order", "lower": _sel("a"), "than": _sel("b"), "scale": 1e3, "unit": "ms",
            "cases": [{}, {"kind": "same", "select": _sel("r")}]}  # fmt: skip
    j = synthetic(rows, rule)
    assert j.cases == [CONFIRMED, CONFIRMED] and "1.00 [0.95, 1.05]" in j.evidence


def test_selector_can_take_the_largest_size_measured(synthetic):
    rows = [{**_row("a", 1.0, 0.9, 1.1), "size_bytes": 10}, {**_row("a", 3.0, 2.9, 3.1), "size_bytes": 1000}]
    rule = {"kind": "value", "select": {"variant": "a", "size_bytes": "@max"}}
    assert synthetic(rows, rule, "3").verdict == CONFIRMED
    rule["select"]["size_bytes"] = "@min"
    assert synthetic(rows, rule, "3").verdict == REFUTED


def test_a_verdict_measured_in_a_noisy_machine_state_says_so(results_tmp, tmp_path):
    """A chapter whose machine-state record is noisy keeps its computed verdicts, each marked and explained."""
    import yaml

    doc = yaml.safe_load(claims.rules_path().read_text(encoding="utf-8"))
    ids = claims.load_claims().query("chapter == 'pipeline'")["id"]
    doc["rules"] = {cid: {"kind": "not_testable", "reason": "because a test"} for cid in ids}
    doc["rules"]["pl-01"] = {"kind": "ratio", "select": _sel("a")}
    doc["rules"]["pl-03"] = {"kind": "ratio", "select": _sel("exact")}  # a count or formula: no interval to move
    p = tmp_path / "rules.yaml"
    p.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    for state, noisy in (({"quiet": True, "flags": []}, False),
                         ({"quiet": False, "flags": ["memcpy calibration drifted -30% from start to end"]}, True)):  # fmt: skip
        rows = [_row("a", 2.5, 2.4, 2.6, unit="x"), _row("exact", 2.5, 2.5, 2.5, n=1, level=1.0, unit="x")]
        results.write("pipeline", results.frame(rows), None, {"machine_state": state})
        led = claims.judge_all(["pipeline"], rules_file=p).set_index("id")
        assert led.loc["pl-01", "verdict"] == CONFIRMED and bool(led.loc["pl-01", "noisy"]) == noisy
        assert ("drifted -30%" in led.loc["pl-01", "evidence"]) == noisy
        assert not bool(led.loc["pl-02", "noisy"])  # a claim not judged here is not marked
        assert led.loc["pl-03", "verdict"] == CONFIRMED and not bool(led.loc["pl-03", "noisy"])


def test_evidence_says_where_replicates_disagree(synthetic):
    from ipcbench.measure import Replicated, summarize

    rng = np.random.default_rng(1)
    for factors, agree in (((1.0, 1.0, 1.0), True), ((0.9, 1.0, 1.1), False)):
        vals = Replicated(np.concatenate([f * 0.010 * rng.lognormal(0, 0.005, 10) for f in factors]), np.repeat([0, 1, 2], 10))
        row = results.summary_row(summarize(vals), **{k: v for k, v in _row("a", 0, 0, 0).items()
                                                      if k not in results.STAT_COLUMNS})  # fmt: skip
        assert row["replicates"] == 3 and row["replicates_agree"] is agree
        j = synthetic([row], {"kind": "value", "select": _sel("a"), "scale": 1e3}, "10")
        assert "3 replicates" in j.evidence and ("disagree" in j.evidence) == (not agree), j.evidence
        if not agree:  # the interval spans them: 9 to 11 ms against the band 7.5 to 12.5 is still decided
            assert j.verdict == CONFIRMED and j.ci_low <= 9.05 and j.ci_high >= 10.95


@pytest.mark.parametrize(
    "row, expected",
    [(_row("a", 0.007, 0.0068, 0.0072), CONFIRMED),  # 7 ms against a claimed 10: within a machine's difference
     (_row("a", 0.040, 0.038, 0.042), REFUTED),  # 40 ms: a factor of 4, beyond any machine's difference
     (_row("a", 0.030, 0.028, 0.034), INCONCLUSIVE)],  # straddles 30 ms, the band's edge
)  # fmt: skip
def test_an_absolute_value_from_the_sources_machine_is_judged_within_a_machine_factor(synthetic, row, expected):
    rule = {"kind": "value", "absolute": True, "select": _sel("a"), "scale": 1e3}
    j = synthetic([row], rule, "10")
    assert j.verdict == expected, j.evidence
    assert "factor of 3" in j.evidence
    assert synthetic([_row("a", 0.007, 0.0068, 0.0072)], {**rule, "absolute": False}, "10").verdict == REFUTED


def test_every_rule_case_reads_in_plain_words_on_the_shipped_reference_build(monkeypatch):
    """Each row a rule reads (every case, both sides of an ordering, a claimed value read from the results, a not
    testable claim's reference row) gets a label from data/seeds/labels.yaml without an internal name left in it."""
    from ipcbench import compare, labels

    ref = compare.reference_dir()
    if ref is None:
        pytest.skip("no reference build is shipped")
    monkeypatch.setenv("IPCBENCH_RESULTS_DIR", str(ref))
    _policy, rules = claims.load_rules()
    chapter_of = claims.load_claims().set_index("id")["chapter"]
    res = claims.Results()
    gaps, seen = {}, 0
    for cid, rule in rules.items():
        if rule["kind"] == "not_testable":
            selectors = [rule["show"]] if "show" in rule else []
        else:
            selectors = [c[k] for c in claims._cases(rule) for k in ("select", "lower", "higher", "than", "claimed_from")
                         if k in c]  # fmt: skip
        for sel in selectors:
            row = claims.select(res, chapter_of[cid], sel)
            seen += 1
            if labels.missing(row, sel):
                gaps[cid] = labels.missing(row, sel)
            text = labels.label(row, sel)
            assert text and "_" not in text.replace("from_dict", ""), (cid, text)
    assert seen > 150 and gaps == {}, gaps


# ------------------------------------------------------------- scope: strength words, oversubscription, hypotheses


@pytest.mark.parametrize(
    "strength, a, b, expected",
    [
        # "far": the first at least 2x the second (the policy's far)
        ("far", (5.0, 4.8, 5.2), (1.0, 0.95, 1.05), CONFIRMED),
        ("far", (1.3, 1.25, 1.35), (1.0, 0.95, 1.05), PARTLY),  # higher, not by far
        ("far", (0.5, 0.45, 0.55), (1.0, 0.95, 1.05), REFUTED),  # the other way
        ("far", (1.9, 1.6, 2.4), (1.0, 0.95, 1.05), INCONCLUSIVE),  # straddles 2x
        ("far", (1.0, 0.8, 1.2), (1.0, 0.95, 1.05), INCONCLUSIVE),  # straddles 1
        # "slight": within a factor 1.25 either way
        ("slight", (1.1, 1.08, 1.12), (1.0, 0.98, 1.02), CONFIRMED),
        ("slight", (2.0, 1.9, 2.1), (1.0, 0.95, 1.05), PARTLY),  # higher, by more than slightly
        ("slight", (0.14, 0.13, 0.15), (1.0, 0.95, 1.05), REFUTED),  # 7x the other way
        ("slight", (1.2, 1.1, 1.4), (1.0, 0.98, 1.02), INCONCLUSIVE),  # straddles 1.25
    ],
)  # fmt: skip
def test_an_ordering_with_a_strength_word_reaches_every_outcome(synthetic, strength, a, b, expected):
    rows = [_row("a", *a), _row("b", *b)]
    j = synthetic(rows, {"kind": "order", "higher": _sel("a"), "than": _sel("b"), "strength": strength})
    assert j.verdict == expected, j.evidence
    assert f'"{strength}"' in j.evidence
    # the same claim written from the other side ("b lower than a, by far") gives the same verdict
    j2 = synthetic(rows, {"kind": "order", "lower": _sel("b"), "than": _sel("a"), "strength": strength})
    assert j2.verdict == expected, j2.evidence


def test_a_strength_word_is_only_for_orderings_and_known_words():
    with pytest.raises(claims.ClaimsError, match="strength"):
        claims.check_rule("x-1", {"kind": "order", "lower": {}, "than": {}, "strength": "vast"})
    with pytest.raises(claims.ClaimsError, match="strength"):
        claims.check_rule("x-1", {"kind": "value", "select": {}, "strength": "far"})


def test_an_oversubscribed_run_never_decides_a_verdict_alone(synthetic):
    rows = [_row("a", 1.0, 0.8, 1.2), _row("b", 1.0, 0.9, 1.1), _row("c", 2.0, 1.9, 2.1)]
    rule = {"kind": "order", "lower": _sel("a"), "than": _sel("b"),
            "cases": [{}, {"than": {"variant": "c"}, "oversubscribed": True}]}  # fmt: skip
    j = synthetic(rows, rule)
    assert j.verdict == INCONCLUSIVE and j.cases == [INCONCLUSIVE, CONFIRMED]
    assert "never decides a verdict alone" in j.evidence and "oversubscribed, confirmed" in j.evidence
    rows[0] = _row("a", 0.5, 0.45, 0.55)  # once the own case decides, the oversubscribed one counts beside it
    assert synthetic(rows, rule).verdict == CONFIRMED
    rows[2] = _row("c", 0.2, 0.15, 0.25)
    assert synthetic(rows, rule).verdict == PARTLY
    with pytest.raises(claims.ClaimsError, match="neither beside"):
        claims.check_rule("x-1", {"kind": "order", "lower": {}, "than": {}, "oversubscribed": True})


def test_a_case_beside_the_verdict_is_shown_never_counted(synthetic):
    rows = [_row("a", 1.0, 0.9, 1.1), _row("b", 2.0, 1.9, 2.1), _row("c", 0.5, 0.4, 0.6)]
    rule = {"kind": "order", "lower": _sel("a"), "than": _sel("b"),
            "cases": [{}, {"than": {"variant": "c"}, "beside": True}]}  # fmt: skip
    j = synthetic(rows, rule)
    assert j.verdict == CONFIRMED and j.cases == [CONFIRMED, REFUTED]  # without "beside" it would be partly
    assert "beside the verdict, a hypothesis of ours: refuted" in j.evidence
    rule["headline"] = 1  # a headline never points at a hypothesis
    assert synthetic(rows, rule).measured == pytest.approx(1.0)


@pytest.mark.parametrize(
    "share, expected",
    [
        ((40.0, 35.0, 45.0), CONFIRMED),  # the condition holds: judged
        ((2.5, 2.1, 2.9), NOT_TESTABLE),  # wholly outside the condition: not judged
        ((31.0, 25.0, 36.0), INCONCLUSIVE),  # the condition itself is undecided
    ],
)  # fmt: skip
def test_a_claim_is_judged_only_where_the_sources_condition_holds(synthetic, share, expected):
    rows = [_row("a", 1.0, 0.9, 1.1), _row("b", 2.0, 1.9, 2.1), _row("share", *share, unit="%")]
    pre = {"select": _sel("share"), "bound": "at_least", "value": 30, "unit": "%", "says": "serialization over 30%"}
    j = synthetic(rows, {"kind": "order", "lower": _sel("a"), "than": _sel("b"), "precondition": pre})
    assert j.verdict == expected, j.evidence
    assert "serialization over 30%" in j.evidence
    with pytest.raises(claims.ClaimsError, match="precondition"):
        claims.check_rule("x-1", {"kind": "order", "lower": {}, "than": {}, "precondition": {"select": {}}})


def test_a_row_measured_oversubscribed_marks_its_case_without_the_rule_saying_so(synthetic):
    over = {**_row("c", 2.0, 1.9, 2.1), "oversubscribed": True}
    rows = [_row("a", 1.0, 0.8, 1.2), _row("b", 1.0, 0.9, 1.1), over]
    rule = {"kind": "order", "lower": _sel("a"), "than": _sel("b"), "cases": [{}, {"than": {"variant": "c"}}]}
    j = synthetic(rows, rule)
    assert j.verdict == INCONCLUSIVE and "oversubscribed, confirmed" in j.evidence
    with pytest.raises(claims.ClaimsError, match="neither beside"):  # a rule must have a case that can decide
        claims.check_rule("x-1", {"kind": "order", "lower": {}, "than": {}, "cases": [{"beside": True}]})


# ------------------------------------------------------------- regimes: where each claim's number comes from


def test_every_claim_has_a_regime_in_plain_words():
    reg = claims.load_regimes()
    assert list(reg) == list(claims.load_claims()["id"])
    internal = re.compile(r"`|\bmpi_|\bpkl5\b|\bzmq_|_over_|\bshm\b")
    for cid, r in reg.items():
        for field in ("source", "here", "differs"):
            assert not internal.search(r[field]), f"{cid} {field}: {r[field]!r} names an internal id"
        assert claims.regime_text(r) == ("same" if not r["differs"].strip() else f"differs: {r['differs'].strip()}")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["regimes"].pop("fs-01"), "missing"),
        (lambda d: d["regimes"].__setitem__("zz-01", {"source": "a", "here": "b", "differs": ""}), "not claims"),
        (lambda d: d["regimes"]["fs-01"].pop("differs"), "exactly source, here and differs"),
        (lambda d: d["regimes"]["fs-01"].__setitem__("here", ""), "in words"),
    ],
)  # fmt: skip
def test_a_malformed_regimes_file_is_refused_naming_the_claim(tmp_path, edit, match):
    import yaml

    doc = yaml.safe_load(results.seeds_path("regimes.yaml").read_text(encoding="utf-8"))
    edit(doc)
    p = tmp_path / "regimes.yaml"
    p.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(claims.ClaimsError, match=match):
        claims.load_regimes(p)


def test_quotes_without_a_verdict_are_listed_with_a_reason_and_are_no_claims_quote(tmp_path):
    df = claims.load_unjudged(seeds_dir=SHARED / "seeds" if (SHARED / "seeds").exists() else None)
    assert not df.empty and set(df["kind"]) <= set(claims.UNJUDGED_KINDS)
    assert all(len(w.split()) >= 8 for w in df["why"]), "each says why in words"
    import yaml

    quote = claims.load_claims()["quote"].iloc[0]
    for bad, match in (({"source": "000_x.txt", "quote": quote, "kind": "not a claim", "why": "w"}, "a claim's quote"),
                       ({"source": "000_x.txt", "quote": "q", "kind": "maybe", "why": "w"}, "not one of"),
                       ({"source": "000_x.txt", "quote": "q"}, "exactly source, quote, kind and why")):  # fmt: skip
        p = tmp_path / "unjudged.yaml"
        p.write_text(yaml.safe_dump({"quotes": [bad]}, allow_unicode=True), encoding="utf-8")
        with pytest.raises(claims.ClaimsError, match=match):
            claims.load_unjudged(p)
