"""data/seeds/claims.csv: every testable claim of the five sources, quoted verbatim, one row each."""

import re

import pytest

from conftest import SHARED
from ipcbench import claims, results


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def test_claims_file_shape():
    df = claims.load_claims()
    assert len(df) >= 40
    assert df["id"].is_unique
    assert set(df["chapter"]) == set(results.CHAPTERS) - {"machine_limits"}
    assert (df.groupby("chapter").size() >= 5).all()
    assert df["quote"].str.len().min() > 3 and df["paraphrase"].str.len().min() > 10
    assert df["source"].str.fullmatch(r"00[0-4]_[0-9a-f]{16}\.txt").all()


@pytest.mark.skipif(not (SHARED / "seeds").is_dir(), reason="../shared/seeds is not beside this checkout")
def test_every_quote_is_verbatim_in_its_source():
    df = claims.load_claims()
    texts = {src: _norm((SHARED / "seeds" / src).read_text()) for src in df["source"].unique()}
    missing = [row.id for row in df.itertuples() if _norm(row.quote) not in texts[row.source]]
    assert missing == [], f"quotes not found verbatim in their source: {missing}"


def test_ledger_lists_every_claim_pending_until_measured(results_tmp):
    led = claims.ledger()
    assert len(led) == len(claims.load_claims())
    assert set(led["verdict"]) == {claims.PENDING}
