"""Pieces every experiment shares: progress bars and the run's metadata record."""

from __future__ import annotations

import sys

from .. import profiles, results
from ..environment import capture_environment


def progress(iterable, desc: str, total: int | None = None):
    """Return ``iterable`` wrapped in a tqdm progress bar on stderr (a widget in Jupyter when ipywidgets is installed)."""
    import importlib.util

    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:  # text bar: tqdm.auto would warn that IProgress is missing
        from tqdm.std import tqdm

    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=True, dynamic_ncols=True)


def run_meta(profile: str | None, cluster, params: dict, started: str, definitions: dict | None = None) -> dict:
    """Return the metadata a chapter writes beside its results (environment, profile, parameters, times, metric definitions)."""
    return {
        "definitions": definitions or {},
        "profile": profiles.profile_name(profile),
        "stopping_rule": profiles.stopping_rule(profile).__dict__,
        "parameters": params,
        "cluster": cluster.describe() if cluster is not None else None,
        "environment": capture_environment(profile),
        "started": started,
        "finished": results.now_iso(),
    }


def run_point(cluster, fn, *args, **kwargs):
    """Run one SPMD point on the cluster; after a failure, remove what killed ranks left behind, then re-raise."""
    try:
        return cluster.run(fn, *args, **kwargs)
    except BaseException:
        from ..backends import reap_stale

        reap_stale()
        raise


def stats_rows(values, labels: dict, metric: str, unit: str, stop_reason: str = "", **extra) -> tuple[dict, list[dict]]:
    """Return one summary row (statistics of ``values``, with ``labels`` and ``extra`` columns) and its raw-sample rows.

    ``stop_reason`` (why a repeated point stopped) is recorded as a column when given.
    """
    from ..measure import summarize

    st = summarize(values, stop_reason)
    lab = {**labels, "metric": metric, "unit": unit}
    if stop_reason:
        extra = {**extra, "stop_reason": st.stop_reason}
    return results.summary_row(st, **lab, **extra), results.sample_rows(values, **lab)


def pick_row(summary, **where):
    """Return the first summary row whose columns equal ``where``; raise ResultsError when none does."""
    q = summary
    for k, v in where.items():
        q = q[q[k] == v]
    if q.empty:
        raise results.ResultsError(f"no row for {where}")
    return q.iloc[0]
