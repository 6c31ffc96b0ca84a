"""Pieces every experiment shares: progress bars and the run's metadata record."""

from __future__ import annotations

import sys

from .. import profiles, results
from ..environment import capture_environment

# seconds spent per progress-bar section of the chapter that runs now (what `drive` writes to meta.json)
SECTION_TIMES: dict[str, float] = {}


def progress(iterable, desc: str, total: int | None = None):
    """Return ``iterable`` wrapped in a tqdm progress bar: a widget in JupyterLab, a text bar on stderr elsewhere.

    The time from the first item to the last is added to :data:`SECTION_TIMES` under ``desc``.
    """
    import importlib.util
    import os

    # a widget where a person watches: a kernel a Jupyter server started for a notebook (it sets JPY_SESSION_NAME);
    # a text bar in a book build or a test's kernel (a widget there would ask the page for widget scripts from the web)
    if os.environ.get("JPY_SESSION_NAME") and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm

    bar = tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=True, dynamic_ncols=True)
    return _timed(bar, desc)


def add_time(section: str, seconds: float) -> None:
    """Add ``seconds`` to a section of :data:`SECTION_TIMES` (a finer split than the progress bars give)."""
    SECTION_TIMES[section] = SECTION_TIMES.get(section, 0.0) + seconds


def _timed(bar, desc: str):
    import time

    t0 = time.perf_counter()
    try:
        yield from bar
    finally:
        SECTION_TIMES[desc] = SECTION_TIMES.get(desc, 0.0) + time.perf_counter() - t0


class EnginesError(ValueError):
    """A chapter was given fewer MPI engines than its profile needs (it never drops a part silently)."""


def require_engines(cluster, need: int, chapter: str, why: str) -> None:
    """Raise EnginesError unless ``cluster`` has at least ``need`` engines (``why`` says what needs them)."""
    if cluster.size < need:
        raise EnginesError(
            f"chapter {chapter} needs {need} MPI engines ({why}), the cluster has {cluster.size}: "
            f"run it with `ipcbench run {chapter}` (which starts {need}) or give it a cluster of {need} or more"
        )


def _round_trip_calibration(comm, rounds: int = 2000) -> float | None:
    """Return the median one-way time (s) of ``rounds`` empty MPI round trips between ranks 0 and 1 (rank 0)."""
    import numpy as np

    from ..measure import now_ns

    if comm.size < 2:
        return None
    buf = np.zeros(1, dtype=np.uint8)
    times = []
    comm.Barrier()
    for _ in range(rounds):
        if comm.rank == 0:
            t0 = now_ns()
            comm.Send(buf, dest=1)
            comm.Recv(buf, source=1)
            times.append((now_ns() - t0) / 2)
        elif comm.rank == 1:
            comm.Recv(buf, source=0)
            comm.Send(buf, dest=0)
    comm.Barrier()
    return float(np.median(times)) * 1e-9 if comm.rank == 0 else None


def machine_state(cluster) -> dict:
    """Return the machine's state now: CPU counters and load (/proc), a memcpy kernel here, an empty MPI round trip."""
    from ..environment import cpu_ticks, memcpy_calibration

    state = {"time": results.now_iso(), **cpu_ticks(), "memcpy_Bps": memcpy_calibration()}
    if cluster is not None and cluster.size >= 2:
        state["mpi_round_trip_s"] = cluster.run(_round_trip_calibration, ranks=2, timeout=120)[0]
    return state


def run_meta(profile: str | None, cluster, params: dict, started: str, definitions: dict | None = None,
             machine_start: dict | None = None) -> dict:  # fmt: skip
    """Return the metadata a chapter writes beside its results (environment, profile, parameters, times, metric
    definitions, and the machine's state at the start and end when ``machine_start`` was taken)."""
    from ..cluster import usable_cores
    from ..environment import machine_state_record

    state = None
    if machine_start is not None:
        state = machine_state_record(machine_start, machine_state(cluster), usable_cores())
    return {
        "machine_state": state,
        "definitions": definitions or {},
        "profile": profiles.profile_name(profile),
        "stopping_rule": profiles.stopping_rule(profile).__dict__,
        "parameters": params,
        "cluster": cluster.describe() if cluster is not None else None,
        "environment": capture_environment(profile),
        "started": started,
        "finished": results.now_iso(),
    }


# ------------------------------------------------------------------ rounds and replicates

REPLICATES = 3
"""Independent replicates of every point a claim or a figure compares: spread over the chapter's run, the last in
fresh engine processes (a restarted cluster), so an interval holds what changes between two builds, not only the
scatter within one run of one process."""
ORDER_SEED = 20261207
"""Seed of the per-round order of the configurations a comparison runs together (recorded in meta.json)."""


def round_order(n: int, round_index: int, seed: int = ORDER_SEED) -> list[int]:
    """Return the order (indices into ``n`` configurations) of one round: a seeded shuffle, rotated by the round's
    index, so that over rounds every configuration runs early and late and after different neighbours."""
    import numpy as np

    base = np.random.default_rng(seed + n).permutation(n).tolist()
    k = round_index % n if n else 0
    return base[k:] + base[:k]


class Replicates:
    """The replicate plan of a chapter's run: ``replicates`` passes over its compared configurations, spread over the
    run, engines restarted (fresh processes) before the last; each pass runs a group's configurations in
    :func:`round_order`. It records the orders and which passes ran in fresh engines (for meta.json)."""

    def __init__(self, cluster, replicates: int = REPLICATES, seed: int = ORDER_SEED):
        self.cluster = cluster
        self.n = max(1, int(replicates))
        self.seed = seed
        self.fresh: list[int] = []
        self.orders: dict[str, list[list[str]]] = {}

    def passes(self):
        """Yield the replicate indices 0..n-1; before the last (of two or more) the engines are restarted where this
        run owns them."""
        import time

        for r in range(self.n):
            if r == self.n - 1 and r > 0 and getattr(self.cluster, "owned", False):
                t0 = time.perf_counter()
                self.cluster.fresh_engines()
                add_time("fresh engines for the last replicate", time.perf_counter() - t0)
                self.fresh.append(r)
            yield r

    def rule(self, rule, replicate: int):
        """Return the stopping rule for one replicate of a point: its share of the samples and budget; a warm-up of one
        call where the engines already ran the point's code in an earlier replicate (only new buffers to touch)."""
        from dataclasses import replace

        share = rule.per_replicate(self.n)
        if replicate == 0 or replicate in self.fresh:
            return share
        return replace(share, warmup=1, warmup_budget_s=None)

    def order(self, group: str, items: list, replicate: int, label=str) -> list:
        """Return ``items`` (one comparison's configurations) in this replicate's order, and record it under ``group``."""
        idx = round_order(len(items), replicate, self.seed)
        out = [items[i] for i in idx]
        self.orders.setdefault(group, []).append([label(x) for x in out])
        return out

    def record(self) -> dict:
        """Return what meta.json records of the plan."""
        return {"replicates": self.n, "fresh_engines": self.fresh, "order_seed": self.seed,
                "order": "a seeded shuffle of each comparison's configurations, rotated by one per replicate",
                "orders": self.orders}  # fmt: skip


def per_message(per_replicate: list[tuple[int, object]]):
    """Return one point's values over its replicates ([(replicate, values), ...]) as one labelled array."""
    import numpy as np

    from ..measure import Replicated

    values = np.concatenate([np.asarray(v, dtype=float) for _, v in per_replicate])
    labels = np.concatenate([np.full(len(v), r) for r, v in per_replicate])
    return Replicated(values, labels)


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
    return results.summary_row(st, **lab, **extra), results.sample_rows(values, **lab, **extra)


def pattern_bytes(size: int):
    """Return ``size`` bytes 0, 1, ..., 255, 0, 1, ... as a uint8 array (a written payload: every page touched,
    contents checkable): the same bytes as ``np.arange(size, dtype=np.uint64).astype(np.uint8)``, without its 8-byte
    temporary."""
    import numpy as np

    return np.resize(np.arange(256, dtype=np.uint8), size)


def within_target(row, target: float) -> bool | None:
    """Whether a ratio is within ``target``: True where its whole interval is at or below it, False where its whole
    interval is above it, None where the interval holds the target (not shown either way)."""
    if row["ci_high"] <= target:
        return True
    return False if row["ci_low"] > target else None


def pick_row(summary, **where):
    """Return the first summary row whose columns equal ``where``; raise ResultsError when none does."""
    q = summary
    for k, v in where.items():
        q = q[q[k] == v]
    if q.empty:
        raise results.ResultsError(f"no row for {where}")
    return q.iloc[0]


# ------------------------------------------------------------------ derived quantities

_SAMPLE_KEYS = ("experiment", "variant", "payload", "size_bytes", "ranks", "metric")


def _eq(series, value):
    """Return a mask of ``series == value`` where NaN equals NaN (summary cells are often empty)."""
    import pandas as pd

    if value is None or (isinstance(value, float) and value != value):
        return series.isna()
    return series == value if not pd.api.types.is_numeric_dtype(series) else (series == value) & series.notna()


def one_row(summary, **where):
    """Return the one summary row whose columns equal ``where``; raise ResultsError when none or several do."""
    q = summary
    for k, v in where.items():
        q = q[_eq(q[k], v)]
    if len(q) != 1:
        raise results.ResultsError(f"{len(q)} summary rows match {where}, need exactly 1")
    return q.iloc[0]


def _point_matches(point, row) -> bool:
    """Return whether a sample's ``point`` labels ("k=v;...") equal the summary row's columns of those names."""
    if not isinstance(point, str) or not point:
        return False
    for kv in point.split(";"):
        k, _, v = kv.partition("=")
        cell = row.get(k)
        try:
            if float(cell) != float(v):
                return False
        except (TypeError, ValueError):
            if str(cell) != v:
                return False
    return True


def any_oversubscribed(rows) -> bool:
    """Return whether any of the summary rows ran oversubscribed (a derived row from them is labelled so)."""
    return bool(rows["oversubscribed"].astype(str).str.lower().eq("true").any())


def sample_values(summary, samples, **where):
    """Return (as a numpy array, in sample order) the raw samples behind the one summary row ``where`` selects; labelled
    with their replicates (:class:`ipcbench.measure.Replicated`) where the samples record several."""
    row = one_row(summary, **where)
    q = samples
    for k in _SAMPLE_KEYS:
        q = q[_eq(q[k], row[k])]
    if "point" in q and q["point"].nunique() > 1:  # several points share the schema's labels: the chapter's own tell
        q = q[q["point"].map(lambda pt: _point_matches(pt, row))]
    if q.empty:
        raise results.ResultsError(f"no raw samples behind the summary row {where}")
    if len(q) != int(row["n"]):
        raise results.ResultsError(f"{len(q)} raw samples behind {where}, whose summary says n = {int(row['n'])}")
    q = q.sort_values("sample")
    if "replicate" in q and q["replicate"].nunique() > 1:
        from ..measure import Replicated

        return Replicated(q["value"].to_numpy(), q["replicate"].to_numpy())
    return q["value"].to_numpy()


def _key(v) -> str:
    """Return a label cell as text that compares equal across a summary and a samples table ('' for empty)."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    try:
        return repr(float(v))
    except (TypeError, ValueError):
        return str(v)


def reinterval(summary, samples):
    """Return the summary with the interval (and ``replicates_agree``) of every measured row whose raw samples carry
    several replicates computed again from those samples by today's :func:`ipcbench.measure.summarize`, and how many
    rows it recomputed. Rows without such samples (one replicate, derived rows, values not kept as samples) are kept."""
    from ..measure import Replicated, hierarchical_ci, replicate_groups
    from ..measure import _replicates_agree as agree_of

    if samples is None or "replicate" not in samples.columns or "replicates" not in summary.columns:
        return summary, 0
    index: dict[tuple, list] = {}
    for key, g in samples.groupby([*_SAMPLE_KEYS, "point"], dropna=False, sort=False):
        index.setdefault(tuple(_key(k) for k in key[:-1]), []).append((key[-1], g))
    out = summary.copy()
    done = 0
    for i, row in out.iterrows():
        if row["experiment"] in ("derived", "capacity") or not row["replicates"] > 1:
            continue
        cands = index.get(tuple(_key(row[k]) for k in _SAMPLE_KEYS), [])
        cands = [g for point, g in cands if (not isinstance(point, str) or not point) or _point_matches(point, row)]
        if len(cands) != 1 or len(cands[0]) != int(row["n"]):
            continue
        g = cands[0].sort_values("sample")
        values = Replicated(g["value"].to_numpy(), g["replicate"].to_numpy())
        groups = replicate_groups(values)
        if len(groups) != int(row["replicates"]):
            continue
        lo, hi = hierarchical_ci(groups)
        if done == 0:  # the column is added only where some row has replicates
            out["replicates_agree"] = (out["replicates_agree"] if "replicates_agree" in out.columns else None)
            out["replicates_agree"] = out["replicates_agree"].astype(object)
        out.at[i, "ci_low"], out.at[i, "ci_high"] = lo, hi
        out.at[i, "replicates_agree"] = agree_of(groups)
        done += 1
    return out, done


def derived_row(fn, sample_sets, name: str, unit: str, chapter: str, paired: bool = False, inputs: str = "",
                **labels) -> dict:  # fmt: skip
    """Return a summary row (experiment 'derived', variant and metric ``name``) for ``fn`` of the sets' medians.

    The interval is a percentile bootstrap (:func:`ipcbench.measure.derived`); ``inputs`` says in
    words which rows it combines. ``fn`` must work element-wise on numpy arrays.
    """
    from ..measure import derived

    st = derived(fn, *sample_sets, paired=paired)
    lab = {"chapter": chapter, "experiment": "derived", "variant": name, "metric": name, "unit": unit,
           "ranks": None, "oversubscribed": False, **labels}  # fmt: skip
    return results.summary_row(st, **lab, inputs=inputs, stop_reason="bootstrap")


def exact_row(value: float, name: str, unit: str, chapter: str, inputs: str = "", **labels) -> dict:
    """Return a summary row for a counted or computed value (no sampling: its interval is the value, coverage 1)."""
    from ..measure import exact

    lab = {"chapter": chapter, "experiment": "derived", "variant": name, "metric": name, "unit": unit,
           "ranks": None, "oversubscribed": False, **labels}  # fmt: skip
    return results.summary_row(exact(value), **lab, inputs=inputs, stop_reason="exact")


def compare(a, b) -> dict:
    """Return how summary row ``a`` stands to row ``b`` for prose: the ratio of medians and the intervals' relation.

    ``relation`` is 'below' or 'above' only where the 95% intervals do not overlap (and both cover 95%),
    else 'no different from' ('not shown different from' when an interval covers less): prose built on it
    claims a difference only where the data show one.
    """
    ratio = float(a["median"]) / float(b["median"]) if float(b["median"]) else float("nan")
    enough = min(float(a.get("ci_level", 1.0)), float(b.get("ci_level", 1.0))) >= 0.95
    if enough and float(a["ci_high"]) < float(b["ci_low"]):
        rel = "below"
    elif enough and float(a["ci_low"]) > float(b["ci_high"]):
        rel = "above"
    else:
        rel = "no different from" if enough else "not shown different from"
    return {"ratio": ratio, "relation": rel, "clear": rel in ("below", "above")}


def relation_words(a, b, below: str, above: str, neither: str = "not shown different from") -> str:
    """Return the words for how summary row ``a`` stands to row ``b`` (:func:`compare`): ``below`` or ``above`` only
    where the 95% intervals are apart, else ``neither``. Prose reads "<a> {words} <b>"."""
    rel = compare(a, b)["relation"]
    return below if rel == "below" else above if rel == "above" else neither
