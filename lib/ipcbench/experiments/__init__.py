"""One module per chapter, each exposing ``engines(profile) -> int`` and ``run(cluster, profile) -> DataFrame``.

Notebooks and the command line both call :func:`drive`, so a headless run and the book run the same
experiment on the same number of engines; nothing else does the sweeping.
"""

from __future__ import annotations

import importlib

from .. import chapters
from ._common import EnginesError, compare, pick_row, relation_words  # noqa: F401 - for the notebooks: prose built on comparisons

CHAPTERS = {c.id: c.module for c in chapters.CHAPTERS.values()}
"""Chapter id -> its experiment module's name (from :mod:`ipcbench.chapters`)."""


def get(chapter: str):
    """Return the experiment module of a chapter id."""
    return importlib.import_module(chapters.get(chapter).module)


def engines(chapter: str, profile: str | None = None) -> int:
    """Return how many MPI engines a chapter needs in a profile."""
    return int(get(chapter).engines(profile))


def plan(chapter: str, profile: str | None = None) -> dict:
    """Return what a run of ``chapter`` in ``profile`` measures, without running it: the chapter, the profile, the MPI
    engines it needs and its sweep's parameters (as its meta.json records them)."""
    from .. import profiles, results

    module = get(chapter)
    profile = profiles.profile_name(profile)
    return {"chapter": chapter, "profile": profile, "engines": int(module.engines(profile)),
            "parameters": results._jsonable(module.parameters(profile))}  # fmt: skip


class RequirementsError(EnginesError):
    """A chapter reads the results of chapters that have not run in this results tree (it would measure for nothing)."""


def check_requirements(chapter: str) -> None:
    """Raise :class:`RequirementsError` unless every chapter that ``chapter`` reads (its descriptor's ``requires``)
    has readable results in the current results tree. Cheap: it starts nothing."""
    from .. import results

    missing = []
    for req in chapters.get(chapter).requires:
        try:
            results.read(req)
        except results.ResultsError as exc:
            missing.append(str(exc))
    if missing:
        raise RequirementsError(f"chapter {chapter} reads the results of the chapters it builds on, and nothing was "
                                f"started: {'; '.join(missing)}")


def drive(chapter: str, profile: str | None = None, engines_n: int | None = None, cluster_profile: str | None = None):
    """Run one chapter on a cluster of the engines it needs (started here, or an existing ipyparallel profile, or the
    chapter's own ``make_cluster(profile)``); return its summary.

    ``engines_n`` may ask for more engines than the chapter needs, never fewer: a run that cannot have
    what it needs stops with :class:`~ipcbench.experiments._common.EnginesError` instead of dropping a part.
    """
    import sys
    import time

    from .. import profiles, results
    from ..cluster import Cluster
    from ._common import SECTION_TIMES, require_engines

    module = get(chapter)
    profile = profiles.profile_name(profile)
    check_requirements(chapter)  # before any engine starts: a sweep whose analysis cannot run is not started
    need = int(module.engines(profile))
    if engines_n is not None and engines_n < need:
        raise EnginesError(f"chapter {chapter} needs {need} MPI engines in the {profile} profile; --engines {engines_n} is too few")
    SECTION_TIMES.clear()
    t0 = time.perf_counter()
    from ..lifecycle import wait_for_quiet

    quiet = wait_for_quiet()  # another busy process: refuse before any engine starts (or wait, in a book build)
    t_quiet = time.perf_counter()
    make_cluster = getattr(module, "make_cluster", None)  # a chapter that needs its own kind of cluster (chapter 6)
    if make_cluster is not None and (engines_n is not None or cluster_profile is not None):
        raise EnginesError(f"chapter {chapter} starts its own engines (make_cluster): --engines and --cluster-profile "
                           "do not apply")  # fmt: skip
    cluster_cm = make_cluster(profile) if make_cluster else Cluster(n=engines_n or need, profile=cluster_profile)
    with cluster_cm as cluster:
        t_up = time.perf_counter()
        require_engines(cluster, need, chapter, f"the {profile} profile")
        d = cluster.describe()
        print(f"ipcbench: chapter {chapter}, profile {profile}, {d['engines']} engines "
              f"({d['source']}, oversubscribed={d['oversubscribed']})", file=sys.stderr)  # fmt: skip
        summary = module.run(cluster, profile)
        t_run = time.perf_counter()
    t_end = time.perf_counter()
    # what else ran on the machine: processes busy before the run are a cause the machine-state record names
    results.update_meta(chapter, quiet_check=quiet)
    state = results.read(chapter).meta.get("machine_state")
    if state is not None:
        if quiet["busy"]:
            from ..lifecycle import busy_text

            state["flags"] = [*state.get("flags", []), f"busy processes beside it: {busy_text(quiet['busy'])}"]
            state["quiet"] = False
            results.update_meta(chapter, machine_state=state)
    # where the chapter's time went, beside its results (the environment appendix shows it)
    results.update_meta(chapter, run_time_s={
        "total": t_end - t0, "quiet_check": t_quiet - t0, "cluster_start": t_up - t_quiet, "experiments": t_run - t_up,
        "cluster_stop": t_end - t_run,
        "sections": {k: round(v, 3) for k, v in SECTION_TIMES.items()},
        "cluster_stop_parts": {k: round(v, 3) for k, v in getattr(cluster, "stop_times", {}).items()},
    })  # fmt: skip
    return summary


def reanalyze(chapter: str) -> int:
    """Recompute a chapter's derived rows from its results on disk, rewrite its summary and re-judge its claims.

    The measurement is not repeated: this is the analysis half of a chapter (pure functions from its
    tables), for when the analysis or the claim rules change. The intervals of measured rows whose samples carry
    several replicates are computed again from those samples first. Returns the number of derived rows.
    """
    from dataclasses import replace

    from .. import claims, results
    from ._common import reinterval

    res = results.read(chapter)
    summary, _ = reinterval(res.summary, res.samples)
    res = replace(res, summary=summary)
    own = getattr(get(chapter), "reanalyze", None)  # a chapter without derived rows of its own has none
    rows = own(res) if own is not None else []
    kept = res.summary[~res.summary["experiment"].isin(["derived", "capacity"])] if rows else res.summary
    summary = results.frame(kept.to_dict("records") + rows) if rows else kept
    results.write(chapter, summary, res.samples, res.meta)
    if chapter != "machine_limits":
        claims.record(chapter)
    return len(rows)
