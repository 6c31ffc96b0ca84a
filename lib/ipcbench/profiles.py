"""Run profiles: quick (tests, < 1 min per notebook), standard (the published book), full (big machines)."""

from __future__ import annotations

import os

from .measure import StoppingRule

PROFILES = ("quick", "standard", "full")
DEFAULT_PROFILE = "standard"

_RULES = {
    # quick: shortened sweeps and budgets, never skipped work
    # (warm-up: the count, or fewer calls once they took a quarter of the point's budget: at least one call)
    "quick": StoppingRule(rel_ci=0.05, min_samples=10, max_samples=300, time_budget_s=0.25, warmup=3, warmup_budget_s=0.0625),
    "standard": StoppingRule(rel_ci=0.05, min_samples=20, max_samples=2000, time_budget_s=1.0, warmup=5, warmup_budget_s=0.25),
    "full": StoppingRule(rel_ci=0.02, min_samples=30, max_samples=10000, time_budget_s=4.0, warmup=10, warmup_budget_s=1.0),
}


class ProfileError(ValueError):
    """An unknown profile name was given."""


def profile_name(profile: str | None = None) -> str:
    """Return the profile to use: the argument, else IPCBENCH_PROFILE, else 'standard'."""
    name = profile or os.environ.get("IPCBENCH_PROFILE") or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ProfileError(
            f"unknown profile {name!r}: use one of {', '.join(PROFILES)} "
            "(argument --profile or IPCBENCH_PROFILE)"
        )
    return name


def stopping_rule(profile: str | None = None) -> StoppingRule:
    """Return the profile's stopping rule for one measured point."""
    return _RULES[profile_name(profile)]
