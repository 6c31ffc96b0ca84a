"""Things that start on entering a ``with`` block and are always stopped again, SIGTERM and SIGKILL included.

Three layers keep a run from leaving processes behind or measuring beside another run's:

* :class:`AlwaysStopped`: a context manager whose ``stop()`` runs on every way out a process survives (success, an
  exception, Ctrl-C, SIGTERM).
* Ownership: every process a run starts carries its owner in the environment (``IPCBENCH_OWNER=<pid>:<start time>``,
  inherited by the controller, mpiexec, the proxies, the engines and whatever they spawn), and a watchdog process
  (``python -m ipcbench.lifecycle --watch``, one per owner, in a session of its own) kills them within
  :data:`WATCH_PERIOD_S` of the owner's death, which nothing in the owner can catch (SIGKILL, the out-of-memory killer).
* :func:`start_clean`, before a run starts engines: what a dead owner left (processes, shared-memory segments, socket,
  LMDB and FIFO directories, namespaces, MPICH's hwloc files) is removed and named; a live foreign run's cluster is
  never touched, and the run refuses to measure beside it. :func:`busy_processes` names what else uses the cores.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import threading
import time

OWNER_ENV = "IPCBENCH_OWNER"
"""The environment variable that names the process owning a run's processes: ``<pid>:<start time in clock ticks>``."""
WATCHDOG_ENV = "IPCBENCH_WATCHDOG"
"""Set to 0 to start no watchdog (only the tests do: they leave a dead run's cluster for the next run to reap)."""
WATCH_PERIOD_S = 0.5
"""How often the watchdog checks that its owner lives."""
TERM_GRACE_S = 1.0
"""How long the reaper waits after SIGTERM before it sends SIGKILL."""
HYDRA_GLOB = "/tmp/hydra_hwloc_xmlfile_*"
"""The topology files MPICH's mpiexec (hydra) writes and removes at a clean exit; a killed mpiexec leaves its own."""
CLUSTER_WORDS = ("ipyparallel", "ipengine", "ipcontroller", "mpiexec", "hydra_pmi_proxy")
"""Words in a command line that mark a process of an MPI / ipyparallel cluster."""
BUSY_SHARE = 0.25
"""A process outside this run that uses more than this share of one core is 'busy': a run does not measure beside it."""
BUSY_WINDOW_S = 0.5
"""How long :func:`busy_processes` watches the CPU counters."""


class AlwaysStopped:
    """A context manager base: ``__enter__`` calls ``start()``, and ``stop()`` runs on every way out (success, an
    exception, Ctrl-C, and ``kill`` -- SIGTERM becomes KeyboardInterrupt while the block runs). Subclasses define
    ``start`` and an idempotent ``stop``."""

    _old_sigterm = None

    def start(self) -> None:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def __enter__(self):
        self._install_sigterm()
        try:
            self.start()
        except BaseException:
            self.stop()
            self._restore_sigterm()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.stop()
        finally:
            self._restore_sigterm()

    def _install_sigterm(self) -> None:
        """Turn SIGTERM into KeyboardInterrupt while the block runs (main thread only), so `kill` also tears down."""
        self._old_sigterm = None
        if threading.current_thread() is threading.main_thread():

            def _on_term(signum, frame):
                raise KeyboardInterrupt(f"signal {signum}")

            self._old_sigterm = signal.signal(signal.SIGTERM, _on_term)

    def _restore_sigterm(self) -> None:
        old = self._old_sigterm
        if old is not None:
            signal.signal(signal.SIGTERM, old)
            self._old_sigterm = None


# ------------------------------------------------------------------------------------------ ownership


class ForeignRunError(RuntimeError):
    """Another live run's cluster, or another busy process, shares this machine: measuring now would measure both."""


def tag_of(pid: int) -> str | None:
    """Return the owner tag of a live process (``<pid>:<start time>``), or None when it has ended."""
    import psutil

    try:
        return f"{pid}:{psutil.Process(pid).create_time():.2f}"
    except psutil.NoSuchProcess:
        return None


def owner_alive(tag: str) -> bool:
    """Return whether the process an owner tag names still runs (the same pid and start time: a reused pid is not it)."""
    pid, _, _ = tag.partition(":")
    return pid.isdigit() and tag_of(int(pid)) == tag


_WATCHDOG: subprocess.Popen | None = None


def own_children() -> str:
    """Make this process the owner of every process it starts from now on (the tag goes into its environment, which
    they inherit) and start its watchdog once; return the tag."""
    global _WATCHDOG
    tag = tag_of(os.getpid())
    os.environ[OWNER_ENV] = tag
    if os.environ.get(WATCHDOG_ENV, "1") != "0" and (_WATCHDOG is None or _WATCHDOG.poll() is not None):
        env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}  # the watchdog outlives its owner: not tagged
        _WATCHDOG = subprocess.Popen([sys.executable, "-m", "ipcbench.lifecycle", "--watch", tag], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)  # fmt: skip
    return tag


def _family() -> set[int]:
    """Return this process, its ancestors and its descendants (never reaped, never 'foreign')."""
    import psutil

    me = psutil.Process()
    out = {me.pid} | {p.pid for p in me.parents()}
    try:
        out |= {p.pid for p in me.children(recursive=True)}
    except psutil.Error:
        pass
    return out


def _processes() -> list[dict]:
    """Return every process this user may read: pid, name, command line, and its owner tag (None: untagged)."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            env = p.environ()
        except (psutil.AccessDenied, psutil.ZombieProcess, psutil.NoSuchProcess, OSError):
            continue
        out.append({"pid": p.info["pid"], "name": p.info["name"] or "", "cmdline": " ".join(p.info["cmdline"] or []),
                    "owner": env.get(OWNER_ENV)})  # fmt: skip
    return out


def _is_cluster(proc: dict) -> bool:
    return any(w in proc["cmdline"] or w in proc["name"] for w in CLUSTER_WORDS)


def _kind(proc: dict) -> str:
    """Return a process's kind for a message: the module a Python process runs, else the program's name."""
    words = proc["cmdline"].split()
    if not words:
        return proc["name"]
    program = os.path.basename(words[0])
    if program.startswith("python") and "-m" in words[:-1]:
        return words[words.index("-m") + 1]
    return program


def _describe(procs: list[dict]) -> str:
    """Return e.g. '15 processes (9 ipyparallel.controller, 2 ipyparallel.engine, mpiexec, ...): pids 17309, ...'."""
    from collections import Counter

    kinds = Counter(_kind(p) for p in procs)
    what = ", ".join(f"{n} {k}" if n > 1 else k for k, n in kinds.most_common())
    return f"{len(procs)} process{'es' if len(procs) != 1 else ''} ({what}): pids {', '.join(str(p['pid']) for p in procs)}"


def kill_all(pids: list[int], grace_s: float = TERM_GRACE_S) -> list[int]:
    """SIGTERM ``pids``, SIGKILL those still running after ``grace_s``; return the pids that were running."""
    import psutil

    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            p.send_signal(signal.SIGTERM)
            procs.append(p)
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5.0)
    return [p.pid for p in procs]


def reap_hydra_files() -> list[str]:
    """Remove MPICH's hwloc topology files that no live mpiexec can own (written before every live mpiexec started, or
    with none running); return them."""
    import psutil

    starts = []
    for p in psutil.process_iter(["name", "create_time"]):
        if p.info["name"] and "mpiexec" in p.info["name"]:
            starts.append(p.info["create_time"])
    oldest_live = min(starts) if starts else float("inf")
    removed = []
    for path in glob.glob(HYDRA_GLOB):
        try:
            if os.path.getmtime(path) < oldest_live - 1.0:
                os.unlink(path)
                removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def reap_files() -> list[str]:
    """Remove what dead runs left on the file system and the network: the library's segments, sockets, LMDB and FIFO
    directories (their names carry the creator's pid), unmapped MPICH segments, hydra's files, namespaces of dead
    creators (where this process may remove them); return what was removed."""
    from . import backends, hosts

    removed = backends.reap_stale() + reap_hydra_files()
    if hosts.requirements_problem() is None:
        removed += hosts.reap_stale()
    return removed


def start_clean() -> list[str]:
    """Prepare the machine for a run: kill the processes of dead owners and remove what dead runs left (named in the
    returned list); raise ForeignRunError naming the cluster processes of a live foreign run, which it never touches."""
    family = _family()
    procs = [p for p in _processes() if p["pid"] not in family]
    dead = [p for p in procs if p["owner"] and not owner_alive(p["owner"])]
    removed = []
    if dead:
        kill_all([p["pid"] for p in dead])
        for owner in sorted({p["owner"] for p in dead}):
            removed.append(f"{_describe([p for p in dead if p['owner'] == owner])} of the dead run {owner.split(':')[0]}")
    removed += reap_files()
    mine = os.environ.get(OWNER_ENV)
    foreign = [p for p in procs if p["owner"] and p["owner"] != mine and owner_alive(p["owner"]) and _is_cluster(p)]
    if foreign:
        owners = sorted({p["owner"].split(":")[0] for p in foreign})
        raise ForeignRunError(
            f"another live run (owner pid {', '.join(owners)}) has a cluster on this machine: {_describe(foreign)}. "
            "Measuring beside it would measure both: wait for it to end, or stop it (kill its owner; its cluster goes "
            "with it)"
        )
    return removed


def busy_processes(window_s: float = BUSY_WINDOW_S, share: float = BUSY_SHARE) -> list[dict]:
    """Return the processes outside this run (not this process, its ancestors, descendants or processes it owns) that
    used more than ``share`` of one core over ``window_s``: pid, name, command line and the share, busiest first."""
    import psutil

    family = _family()
    mine = os.environ.get(OWNER_ENV)
    before = {}
    for p in psutil.process_iter(["pid"]):
        if p.pid in family:
            continue
        try:
            t = p.cpu_times()
            before[p.pid] = (p, t.user + t.system)
        except psutil.Error:
            continue
    t0 = time.monotonic()
    time.sleep(window_s)
    elapsed = time.monotonic() - t0
    out = []
    for pid, (p, cpu0) in before.items():
        try:
            t = p.cpu_times()
            used = (t.user + t.system - cpu0) / elapsed
            if used <= share:
                continue
            if mine and p.environ().get(OWNER_ENV) == mine:
                continue  # this run's own processes
            out.append({"pid": pid, "name": p.name(), "cmdline": " ".join(p.cmdline())[:120], "cpu_share": round(used, 2)})
        except psutil.Error:
            continue
    return sorted(out, key=lambda d: -d["cpu_share"])


ON_BUSY_ENV = "IPCBENCH_ON_BUSY"
"""What a run does when another process is busy: ``refuse`` (the default: stop before measuring) or ``wait`` (what the
book build does: wait up to ``IPCBENCH_BUSY_WAIT_S`` seconds, default :data:`BUSY_WAIT_S`, then measure and say so)."""
BUSY_WAIT_S = 60.0


def wait_for_quiet(policy: str | None = None, max_wait_s: float | None = None) -> dict:
    """Check that no process outside this run is busy before it measures; return the record of the check (policy,
    the busy processes still there, seconds waited, threshold). Raise ForeignRunError where the policy is 'refuse' and
    some process is busy."""
    policy = policy or os.environ.get(ON_BUSY_ENV, "refuse")
    if policy not in ("refuse", "wait"):
        raise ValueError(f"{ON_BUSY_ENV} must be 'refuse' or 'wait', got {policy!r}")
    max_wait_s = float(os.environ.get("IPCBENCH_BUSY_WAIT_S", BUSY_WAIT_S)) if max_wait_s is None else max_wait_s
    t0 = time.monotonic()
    busy = busy_processes()
    while busy and policy == "wait" and time.monotonic() - t0 < max_wait_s:
        time.sleep(min(5.0, max(0.0, max_wait_s - (time.monotonic() - t0))))
        busy = busy_processes()
    if busy and policy == "refuse":
        raise ForeignRunError(
            f"other processes are busy on this machine: {busy_text(busy)} (more than {BUSY_SHARE:.0%} of a core each). "
            f"Measuring beside them would measure them too: stop them, or set {ON_BUSY_ENV}=wait to wait up to "
            f"{BUSY_WAIT_S:.0f} s and then measure with the results marked"
        )
    return {"policy": policy, "busy": busy, "waited_s": round(time.monotonic() - t0, 2), "threshold_share": BUSY_SHARE}


def busy_text(busy: list[dict]) -> str:
    """Return e.g. '1234 python (97% of a core)' for each busy process."""
    return ", ".join(f"{b['pid']} {b['name']} ({b['cpu_share']:.0%} of a core)" for b in busy)


# ------------------------------------------------------------------------------------------ watchdog


def watch(tag: str, period_s: float = WATCH_PERIOD_S) -> int:
    """Wait while the owner ``tag`` names runs; then kill every process it owned and remove what it left. Returns 0."""
    while owner_alive(tag):
        time.sleep(period_s)
    owned = [p["pid"] for p in _processes() if p["owner"] == tag and p["pid"] != os.getpid()]
    if owned:
        kill_all(owned)
    try:
        reap_files()
    except Exception:  # noqa: BLE001 - nothing to report to: the owner is gone; the next run reaps what is left
        pass
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--watch":
        sys.exit(watch(sys.argv[2]))
    print("usage: python -m ipcbench.lifecycle --watch <pid>:<start time>", file=sys.stderr)
    sys.exit(2)
