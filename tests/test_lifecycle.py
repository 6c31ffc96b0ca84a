"""A run that dies leaves nothing running; the next run reaps what a dead one left; no run measures beside another's."""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from ipcbench import lifecycle
from ipcbench.cluster import MPICH_SHM_GLOB, Cluster, ClusterError

HOLDER = textwrap.dedent("""
    import sys, time
    from ipcbench.cluster import Cluster
    with Cluster(n=2) as c:
        print("up", *sorted(c.pids()), flush=True)
        time.sleep(300)
""")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != lifecycle.OWNER_ENV}
    return {**env, "PYTHONPATH": os.pathsep.join(sys.path), **extra}


def _detached(code: str, out, **env) -> int:
    """Start ``python -c code`` outside this process's family (its parent exits at once, so init adopts it), with
    stdout to ``out``; return its pid."""
    launcher = f'"{sys.executable}" -c "$CODE" > "{out}" 2>&1 < /dev/null & echo $!'
    p = subprocess.run(["bash", "-c", launcher], env=_env(CODE=code, **env), capture_output=True, text=True, check=True)
    return int(p.stdout.strip())


def _wait_for_line(path, timeout_s: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        for line in text.splitlines():
            if line.startswith("up"):
                return line.split()[1:]
        time.sleep(0.2)
    raise AssertionError(f"the holder did not start its cluster: {path.read_text() if path.exists() else ''}")


def _rank(comm) -> int:
    return comm.rank


def _alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE:
                out.append(int(pid))
        except psutil.NoSuchProcess:
            pass
    return out


def _owned_by(pid: int) -> list[str]:
    """Return ``ps`` lines of the processes whose owner tag names ``pid``."""
    return [f"{p['pid']} {p['cmdline'][:80]}" for p in lifecycle._processes()
            if p["owner"] and p["owner"].split(":")[0] == str(pid)]  # fmt: skip


def _kill(pid: int, sig=signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def holder(tmp_path):
    """Start a run holding a two-engine cluster, outside this process's family; yield a starter, kill what is left."""
    started = []

    def start(**env) -> tuple[int, list[int]]:
        out = tmp_path / f"holder{len(started)}.out"
        pid = _detached(HOLDER, out, **env)
        started.append(pid)
        return pid, [int(x) for x in _wait_for_line(out)]

    yield start
    for pid in started:
        _kill(pid)
        leftover = [int(line.split()[0]) for line in _owned_by(pid)]
        if leftover:
            lifecycle.kill_all(leftover)


def test_a_run_killed_halfway_by_sigkill_leaves_no_process_of_its_own(holder):
    segments = set(glob.glob(MPICH_SHM_GLOB))
    pid, cluster = holder()
    assert len(cluster) >= 4 and _owned_by(pid)  # controller, mpiexec, proxy, engines: all carry the owner's tag
    _kill(pid)  # nothing in the run can catch this: its watchdog tears the cluster down
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_alive(cluster) or _owned_by(pid)):
        time.sleep(0.2)
    assert _alive(cluster) == [] and _owned_by(pid) == []
    time.sleep(1.0)
    assert set(glob.glob(MPICH_SHM_GLOB)) - segments == set(), "the killed run's MPICH segment is still there"


def test_a_stale_cluster_is_reaped_by_the_next_run_which_says_so(holder, capfd):
    pid, cluster = holder(**{lifecycle.WATCHDOG_ENV: "0"})  # no watchdog: the dead run's cluster stays behind
    _kill(pid)
    time.sleep(2.0)
    stale = _alive(cluster)
    assert stale and _owned_by(pid), "the premise: a dead run's cluster left running"
    with Cluster(n=2) as c:
        named = " ".join(c.reaped)
        assert all(re.search(rf"\b{p}\b", named) for p in stale), (stale, c.reaped)
        assert f"of the dead run {pid}" in named and "ipyparallel.engine" in named and "mpiexec" in named
        assert c.run(_rank) == [0, 1]
    assert _alive(cluster) == [] and _owned_by(pid) == []
    assert "removed what a dead run left" in capfd.readouterr().err


def test_a_live_foreign_cluster_is_not_touched_and_the_run_refuses_naming_it(holder):
    pid, cluster = holder()
    with pytest.raises(ClusterError, match=rf"owner pid {pid}\b.*{cluster[-1]}|owner pid {pid}\b"):
        with Cluster(n=2):
            pass
    assert sorted(_alive(cluster)) == sorted(cluster), "a live run's cluster was touched"
    _kill(pid, signal.SIGTERM)  # its owner stops it cleanly
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(cluster):
        time.sleep(0.2)
    assert _alive(cluster) == []


def test_a_busy_foreign_process_makes_a_run_refuse_before_measuring(tmp_path):
    out = tmp_path / "busy.out"
    busy = _detached("while True: pass", out)
    try:
        time.sleep(0.5)
        found = lifecycle.busy_processes()
        assert busy in [b["pid"] for b in found] and f"{busy} " in lifecycle.busy_text(found)
        results = tmp_path / "results"
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "ipcbench.cli", "run", "machine_limits", "--profile", "quick"],
                           env=_env(IPCBENCH_RESULTS_DIR=str(results)), capture_output=True, text=True, timeout=120)  # fmt: skip
        assert p.returncode == 2 and str(busy) in p.stderr and "busy" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
        assert not (results / "machine_limits" / "summary.csv").exists()  # it measured nothing
        assert time.monotonic() - t0 < 30  # it stopped before starting engines
        # a book build waits (a bounded time), then measures and says so
        rec = lifecycle.wait_for_quiet(policy="wait", max_wait_s=1.0)
        assert rec["waited_s"] >= 1.0 and busy in [b["pid"] for b in rec["busy"]]
    finally:
        _kill(busy)
    time.sleep(0.2)
    assert busy not in [b["pid"] for b in lifecycle.busy_processes()]  # it went with its process


def test_hydra_files_of_dead_mpiexecs_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    old = tmp_path / "hydra_hwloc_xmlfile_old"
    new = tmp_path / "hydra_hwloc_xmlfile_new"
    monkeypatch.setattr(lifecycle, "HYDRA_GLOB", str(tmp_path / "hydra_hwloc_xmlfile_*"))
    with Cluster(n=2):  # a live mpiexec: a file older than it is a dead one's, a newer one may be its own
        old.write_text("x")
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        new.write_text("x")
        removed = lifecycle.reap_hydra_files()
        assert removed == [str(old)] and new.exists()
    assert not new.exists()  # the cluster's stop removed it: no mpiexec runs any more
