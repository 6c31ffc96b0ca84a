"""MPI engines driven by ipyparallel: start, run SPMD functions on every rank, always tear down.

``Cluster`` is a context manager. By default it starts N MPI engines on this
machine (``engines="mpi"``, N = the cores this process may use) and stops them on
exit, whether the body succeeded, raised, or was interrupted. Given an
ipyparallel profile (argument or ``IPCBENCH_CLUSTER_PROFILE``) it connects to
engines someone else started (how a user scales out) and leaves them running.

``cluster.run(fn, *args)`` calls ``fn(comm, *args)`` on every engine, where
``comm`` is the engines' ``MPI.COMM_WORLD``, and returns the results ordered by
rank. An MPI collective cannot be interrupted, so when one rank fails while the
others wait in a collective, ``run`` raises :class:`RankError` with the failing
rank's traceback and restarts the engines it started, so the next call works and
nothing is left spinning.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import psutil

from .lifecycle import AlwaysStopped

__all__ = ["Cluster", "ClusterError", "RankError", "OversubscribedWarning", "usable_cores", "reap_mpich_segments"]

ENV_PROFILE = "IPCBENCH_CLUSTER_PROFILE"
HEARTBEAT_MS = 500
"""The controller's heartbeat period for clusters started here (ipyparallel's default: 3000 ms)."""
HEARTBEAT_MISSES = 60
"""Missed heartbeats before the controller drops an engine: 30 s at :data:`HEARTBEAT_MS`, as ipyparallel's default."""


class ClusterError(RuntimeError):
    """The engines could not be started, reached, or were left in a broken state."""


class RankError(RuntimeError):
    """A function raised on one or more MPI ranks; ``ranks`` lists them, ``remote`` their tracebacks."""

    def __init__(self, message: str, ranks: list[int], remote: list[str]):
        super().__init__(message)
        self.ranks = ranks
        self.remote = remote


class OversubscribedWarning(UserWarning):
    """More busy MPI ranks than cores: MPICH spins while waiting, so timings are inflated."""


def usable_cores() -> int:
    """Return the number of cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


MPICH_SHM_GLOB = "/dev/shm/mpich_shm_*"
"""The segments MPICH's shared-memory transport creates at MPI_Init (one per node and job)."""


def _mapped_paths() -> set[str]:
    """Return every file some live process of this machine has mapped (from /proc/*/maps)."""
    out: set[str] = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/maps", encoding="utf-8", errors="replace") as f:
                for line in f:
                    i = line.find("/dev/shm/")
                    if i >= 0:
                        out.add(line[i:].strip().removesuffix(" (deleted)"))
        except OSError:  # the process ended, or is not ours to read
            continue
    return out


def reap_mpich_segments(min_age_s: float = 5.0) -> list[str]:
    """Remove MPICH shared-memory segments that no live process maps any more; return their paths.

    MPICH removes its segment at MPI_Finalize; a job that is aborted or whose ranks are killed (a rank
    stuck in a collective, a test that kills one on purpose) leaves it behind in /dev/shm. A segment
    still mapped by any process belongs to a live job and is kept, and so is one younger than
    ``min_age_s`` (its job may be between creating and mapping it).
    """
    import glob
    import time

    candidates = [p for p in glob.glob(MPICH_SHM_GLOB) if time.time() - os.path.getmtime(p) >= min_age_s]
    if not candidates:
        return []
    mapped = _mapped_paths()
    removed = []
    for p in candidates:
        if p in mapped:
            continue
        try:
            os.unlink(p)
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def machine_id() -> str:
    """Return an id of the machine (kernel) this process runs on: its boot id, the same in every network namespace or
    container of one machine; the hostname where there is none."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        import socket

        return socket.gethostname()


def _rank_and_pid() -> tuple[int, int, int, str, int, str]:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return comm.rank, comm.size, os.getpid(), MPI.Get_processor_name(), usable_cores(), machine_id()


def _pin(comm, cores: list[int]) -> list[int]:
    """Pin this rank to one core (rank modulo the usable cores); return its new affinity."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cores[comm.rank % len(cores)]})
        return sorted(os.sched_getaffinity(0))
    return []


_SUBCOMMS: dict[int, object] = {}


def _exited(p: psutil.Process) -> bool:
    """Return whether ``p`` has exited; a zombie has (one of ours is reaped here, another's by its parent)."""
    try:
        if p.status() != psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return True
    try:
        p.wait(timeout=0)
    except (psutil.TimeoutExpired, psutil.NoSuchProcess, ChildProcessError):
        pass
    return True


def _wait_exited(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait up to ``timeout_s`` until every process has exited (or is a zombie); return those still running."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if not _exited(p)]
    delay = 0.005
    while alive and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
        alive = [p for p in alive if not _exited(p)]
    return alive


def _spmd_entry(fn: Callable, args: tuple, kwargs: dict, nranks: int | None = None):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if nranks is not None and nranks != comm.size:
        # a communicator of the first nranks ranks; created only by them (MPI_Comm_create_group)
        if nranks not in _SUBCOMMS:
            _SUBCOMMS[nranks] = comm.Create_group(comm.group.Incl(list(range(nranks))), tag=nranks)
        comm = _SUBCOMMS[nranks]
    return fn(comm, *args, **kwargs)


class Cluster(AlwaysStopped):
    """A set of MPI engines (ipyparallel) to run SPMD experiment functions on; a context manager that always stops
    the engines it started (:class:`~ipcbench.lifecycle.AlwaysStopped`)."""

    def __init__(
        self,
        n: int | None = None,
        profile: str | None = None,
        start_timeout_s: float = 120.0,
        failure_grace_s: float = 3.0,
        log_level: int = logging.ERROR,
        pin: bool = True,
        hosts=None,
        ranks_per_host: list[int] | None = None,
    ):
        """``hosts`` (an entered :class:`ipcbench.hosts.EmulatedHosts`) starts the engines on emulated hosts, ranks
        in blocks of ``ranks_per_host`` (default: spread evenly), with MPICH's bytes on the emulated links."""
        self.emulated = hosts
        self.ranks_per_host = ranks_per_host
        if hosts is not None and profile is not None:
            raise ClusterError("engines on emulated hosts are started here; an ipyparallel profile cannot be given too")
        # (on emulated hosts IPCBENCH_CLUSTER_PROFILE does not apply: those engines are always started here)
        self.profile = profile if profile is not None or hosts is not None else os.environ.get(ENV_PROFILE) or None
        self.requested_n = n
        self.start_timeout_s = start_timeout_s
        self.failure_grace_s = failure_grace_s
        self.log_level = log_level
        self.pin = pin
        self._ipp_cluster = None
        self._client = None
        self._view = None
        self._owned_pids: set[int] = set()
        self.ranks: list[dict] = []
        self.reaped: list[str] = []

    # ------------------------------------------------------------------ lifecycle
    def _per_host(self, n: int) -> list[int]:
        """Return the engines per emulated host for ``n`` engines (given, or spread round the hosts)."""
        if self.ranks_per_host is not None:
            if sum(self.ranks_per_host) != n or len(self.ranks_per_host) != self.emulated.n:
                raise ClusterError(f"ranks_per_host={self.ranks_per_host} does not place {n} engines on "
                                   f"{self.emulated.n} hosts")  # fmt: skip
            return list(self.ranks_per_host)
        return [n // self.emulated.n + (1 if i < n % self.emulated.n else 0) for i in range(self.emulated.n)]

    @property
    def owned(self) -> bool:
        """Return True when this object started the engines (and so must stop them)."""
        return self.profile is None

    @property
    def size(self) -> int:
        """Return the number of MPI ranks (engines)."""
        return len(self.ranks)

    @property
    def hosts(self) -> dict[str, dict]:
        """Return per host the engines' ranks on it and the cores an engine there may use (before pinning)."""
        out: dict[str, dict] = {}
        for r in self.ranks:
            h = out.setdefault(r["host"], {"ranks": [], "cores": r.get("host_cores", usable_cores())})
            h["ranks"].append(r["rank"])
        return out

    @property
    def single_host(self) -> bool:
        """Return True when every engine runs on one host (one shared clock, shared memory, local files)."""
        return len(self.hosts) <= 1

    @staticmethod
    def _per_machine(ranks: list[dict]) -> dict[str, list[dict]]:
        """Return the ranks grouped by the machine they run on (hosts that share a kernel share its cores: emulated
        hosts, containers), by host where the machine is not known."""
        out: dict[str, list[dict]] = {}
        for r in ranks:
            out.setdefault(r.get("machine") or r["host"], []).append(r)
        return out

    @property
    def oversubscribed(self) -> bool:
        """Return True when some machine runs more engines than it has usable cores (local and external clusters,
        emulated hosts: those share one machine's cores)."""
        if not self.ranks:
            return self.owned and (self.requested_n or 0) > usable_cores()
        return self.oversubscribed_at(len(self.ranks))

    def oversubscribed_at(self, ranks: int) -> bool:
        """Return True when the first ``ranks`` engines (a run on a subset: the others idle) put more busy processes
        on some machine than it has cores."""
        busy = self._per_machine(self.ranks[:ranks])
        if not busy:
            return ranks > usable_cores()
        return any(len(rs) > max(r.get("host_cores", usable_cores()) for r in rs) for rs in busy.values())

    def require_one_host(self, why: str) -> None:
        """Raise ClusterError unless every engine is on one host; ``why`` says what needs one host and one clock."""
        if not self.single_host:
            raise ClusterError(
                f"this experiment needs every engine on one host ({why}), but the engines run on "
                f"{', '.join(sorted(self.hosts))}: run it on a single-host cluster (e.g. `ipcbench run` on one machine)"
            )

    def start(self) -> None:
        """Start (or connect to) the engines and wait until every one answers with its MPI rank."""
        import ipyparallel as ipp

        os.environ.setdefault("IPP_NONINTERACTIVE", "1")
        if self.owned:
            from .lifecycle import ForeignRunError, own_children, start_clean

            try:  # what a dead run left goes; a live foreign run's cluster stops this one before it starts
                reaped = start_clean()
            except ForeignRunError as exc:
                raise ClusterError(str(exc)) from None
            if reaped:
                print(f"ipcbench: removed what a dead run left: {'; '.join(reaped)}", file=sys.stderr)
            self.reaped = reaped
            own_children()  # the controller, mpiexec and the engines die with this process, even by SIGKILL
            n = self.requested_n or usable_cores()
            if n < 1:
                raise ClusterError(f"need at least one engine, got n={n}")
            if n > usable_cores():
                warnings.warn(
                    f"{n} MPI engines on {usable_cores()} cores: oversubscribed; results are labelled so",
                    OversubscribedWarning,
                    stacklevel=2,
                )
            # mpiexec from the mpich wheel sits beside this interpreter
            bindir = str(Path(sys.executable).parent)
            if bindir not in os.environ.get("PATH", "").split(os.pathsep):
                os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
            before = {p.pid for p in psutil.Process().children(recursive=True)}
            kw = {}
            if self.emulated is not None:
                from traitlets.config import Config

                # the controller listens on the emulated hosts' bridge; mpiexec enters each host's namespace
                env = self.emulated.transport_env()
                kw = {"controller_ip": self.emulated.bridge_address,
                      "config": Config({"MPILauncher": {"mpi_args": self.emulated.mpiexec_args(self._per_host(n)),
                                                        "environment": env}})}  # fmt: skip
            # The hub registers a connected engine at its next heartbeat, every 3 s by default, so every start waited
            # for the next beat; a 0.5 s heartbeat registers them sooner, and 60 missed beats keep ipyparallel's 30 s
            # before an engine counts as dead. (A ping is answered by the
            # engine's heart thread in C, outside Python: nothing a timed loop waits for.) And no task database: by
            # default the hub keeps every request and result in memory (DictDB), work on the ranks' cores for
            # records nothing here reads back (results come straight to this client).
            kw["controller_args"] = [f"--HeartMonitor.period={HEARTBEAT_MS}",
                                     f"--HeartMonitor.max_heartmonitor_misses={HEARTBEAT_MISSES}", "--nodb"]  # fmt: skip
            self._ipp_cluster = ipp.Cluster(engines="mpi", n=n, log_level=self.log_level, **kw)
            try:
                self._client = self._ipp_cluster.start_and_connect_sync(activate=False)
                self._client.wait_for_engines(n, timeout=self.start_timeout_s, block=True)
            finally:
                after = {p.pid for p in psutil.Process().children(recursive=True)}
                self._owned_pids |= after - before
        else:
            try:
                self._client = ipp.Client(profile=self.profile, timeout=self.start_timeout_s)
            except Exception as exc:  # ipyparallel raises several types here
                raise ClusterError(
                    f"cannot connect to ipyparallel profile {self.profile!r}: {exc}. "
                    f"Start it first, e.g. `ipcluster start --profile={self.profile} --engines=mpi -n N`."
                ) from exc
            if self.requested_n:
                self._client.wait_for_engines(self.requested_n, timeout=self.start_timeout_s)
        self._discover_ranks()

    def _discover_ranks(self) -> None:
        ids = list(self._client.ids)
        if not ids:
            raise ClusterError("no engines are connected")
        infos = self._client[ids].apply_sync(_rank_and_pid)
        by_rank = sorted(zip(infos, ids, strict=True), key=lambda x: x[0][0])
        sizes = {info[1] for info in infos}
        ranks = [info[0] for info in infos]
        if sizes != {len(ids)} or sorted(ranks) != list(range(len(ids))):
            raise ClusterError(
                f"the {len(ids)} engines do not form one MPI world (ranks {sorted(ranks)}, sizes {sizes}); "
                "start them with engines='mpi'"
            )
        self.ranks = [
            {"rank": info[0], "engine_id": eid, "pid": info[2], "host": info[3], "host_cores": info[4], "machine": info[5]}
            for info, eid in by_rank
        ]
        self._view = self._client.direct_view(targets=[eid for _, eid in by_rank])
        self._view.block = False
        if self.owned:
            self._owned_pids |= {r["pid"] for r in self.ranks}
            if self.pin and hasattr(os, "sched_getaffinity"):
                # one rank per core: unpinned ranks sometimes share a core and MPI latency jumps several-fold
                cores = sorted(os.sched_getaffinity(0))
                for r, aff in zip(self.ranks, self._view.apply_sync(_spmd_entry, _pin, (cores,), {}), strict=True):
                    r["cores"] = aff

    def stop(self) -> None:
        """Stop engines, controller and mpiexec that this object started; close the client. Idempotent."""
        t0 = time.perf_counter()
        times = self.stop_times = {}
        client, self._client, self._view = self._client, None, None
        if client is not None:
            try:
                if self.owned and self.ranks:
                    # a clean engine exit (instead of a signal) keeps their logs out of notebooks;
                    # engines that do not exit in time are signalled below
                    client.shutdown(targets="all", hub=False, block=False)
                    self._reap({r["pid"] for r in self.ranks}, timeout_s=5.0, kill=False)
                    # mpiexec exits by itself once its ranks have; signalled by ipyparallel before that, it sometimes
                    # took seconds to go
                    self._reap(self._mpiexec_pids(), timeout_s=2.0, kill=False)
            except Exception:  # noqa: BLE001 - engines may already be gone
                pass
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing must never mask the original error
                pass
        times["engines_exit"] = time.perf_counter() - t0
        ipp_cluster, self._ipp_cluster = self._ipp_cluster, None
        if ipp_cluster is not None:
            try:
                ipp_cluster.stop_cluster_sync()
            except Exception:  # noqa: BLE001
                pass
        times["stop_cluster"] = time.perf_counter() - t0 - times["engines_exit"]
        self._reap(self._owned_pids)
        times["reap"] = time.perf_counter() - t0 - times["engines_exit"] - times["stop_cluster"]
        if self._owned_pids:  # killed ranks leave MPICH's segment and a killed mpiexec its hwloc file behind
            from .lifecycle import reap_hydra_files

            reap_mpich_segments(min_age_s=2.0)
            reap_hydra_files()
        self._owned_pids = set()
        self.ranks = []

    @staticmethod
    def _reap(pids: set[int], timeout_s: float = 10.0, kill: bool = True) -> None:
        """Wait up to ``timeout_s`` for ``pids`` to exit; SIGKILL the survivors when ``kill``.

        A zombie counts as exited: it holds no memory, file or socket any more, only its entry until its parent
        reaps it (``psutil.wait_procs`` waits on such a process until its timeout).
        """
        procs = []
        for pid in pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        alive = _wait_exited(procs, timeout_s)
        if not kill:
            return
        for p in alive:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        _wait_exited(alive, timeout_s)

    def _mpiexec_pids(self) -> set[int]:
        """Return the pids of the mpiexec processes this object started."""
        out = set()
        for pid in self._owned_pids:
            try:
                if "mpiexec" in psutil.Process(pid).name():
                    out.add(pid)
            except psutil.NoSuchProcess:
                pass
        return out

    def pids(self) -> set[int]:
        """Return the process ids this object started (controller, mpiexec, proxies, engines)."""
        return set(self._owned_pids)

    def fresh_engines(self) -> None:
        """Replace the engines with new processes, the controller kept: a new MPI world of the same size, pinned as
        before (a fresh interpreter, allocator and MPI state on every rank). Only for engines this object started."""
        if not self.owned:
            raise ClusterError(f"the engines of profile {self.profile!r} are not ours to replace")
        if self._ipp_cluster is None or self._client is None:
            return self.restart()
        n = self.size
        old = {r["pid"] for r in self.ranks} | self._mpiexec_pids()
        try:
            self._client.shutdown(targets="all", hub=False, block=False)
        except Exception:  # noqa: BLE001 - engines that do not exit in time are killed below
            pass
        self._reap(old, timeout_s=5.0)
        self._owned_pids -= old
        try:
            self._ipp_cluster.stop_engines_sync()
        except Exception:  # noqa: BLE001 - the launcher's own clean-up of engines already gone
            pass
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        try:
            self._ipp_cluster.start_engines_sync(n)
            self._client.wait_for_engines(n, timeout=self.start_timeout_s, block=True)
        finally:
            self._owned_pids |= {p.pid for p in psutil.Process().children(recursive=True)} - before
        self.ranks = []
        self._discover_ranks()
        from .lifecycle import reap_hydra_files

        reap_hydra_files()

    def restart(self) -> None:
        """Stop and start the engines again (only for engines this object started)."""
        if not self.owned:
            raise ClusterError(
                f"the engines of profile {self.profile!r} are not ours to restart; restart that cluster by hand"
            )
        self.stop()
        self.start()

    # ----------------------------------------------------------------------- run
    def run(self, fn: Callable, *args, timeout: float | None = None, ranks: int | None = None, **kwargs) -> list:
        """Return ``[fn(comm, *args, **kwargs) on rank r for r in ranks]``; raise RankError if a rank failed.

        ``ranks=k`` runs on the first k ranks only, with ``comm`` a communicator of
        just those ranks; the other engines stay idle (they do not spin).
        """
        if self._view is None:
            raise ClusterError("the cluster is not running: use it inside `with Cluster() as cluster:`")
        view = self._view
        if ranks is not None:
            if not 1 <= ranks <= self.size:
                raise ClusterError(f"ranks={ranks} but the cluster has {self.size} engines")
            view = self._client.direct_view(targets=[r["engine_id"] for r in self.ranks[:ranks]])
            view.block = False
        ar = view.apply_async(_spmd_entry, fn, args, kwargs, ranks)
        started = time.monotonic()
        first_failure = None
        while not ar.ready():
            ar.wait(0.05)
            if first_failure is None and self._failed(ar):
                first_failure = time.monotonic()
            if first_failure is not None and time.monotonic() - first_failure > self.failure_grace_s:
                self._raise_partial(ar, fn)
            if timeout is not None and time.monotonic() - started > timeout:
                self._recover()
                raise ClusterError(
                    f"{getattr(fn, '__name__', fn)} did not finish on every rank within {timeout:.0f} s; "
                    "the engines were restarted"
                )
        if self._failed(ar):
            self._raise_partial(ar, fn)
        return ar.get()

    @staticmethod
    def _statuses(ar) -> list[str | None]:
        """Return per-rank 'ok', 'error' or None (still running) for the task ``ar``."""
        out: list[str | None] = []
        for child in ar._children:  # one future per engine, in target (= rank) order
            if not child.done():
                out.append(None)
            else:
                out.append("error" if Cluster._child_error(child) is not None else "ok")
        return out

    @staticmethod
    def _child_error(child) -> BaseException | None:
        exc = child.exception()
        if exc is None:
            value = child.result()
            exc = value if isinstance(value, BaseException) else None
        return exc

    def _failed(self, ar) -> bool:
        return any(s == "error" for s in self._statuses(ar))

    def _raise_partial(self, ar, fn) -> None:
        statuses = self._statuses(ar)
        failed = [i for i, s in enumerate(statuses) if s == "error"]
        hung = [i for i, s in enumerate(statuses) if s is None]
        errors = [self._child_error(ar._children[i]) for i in failed]
        remote = [getattr(e, "traceback", None) or repr(e) for e in errors]
        name = getattr(fn, "__name__", repr(fn))
        msg = f"{name} raised on rank(s) {failed}"
        if errors:
            msg += f": {getattr(errors[0], 'ename', type(errors[0]).__name__)}: {getattr(errors[0], 'evalue', errors[0])}"
        if hung:
            msg += f"; rank(s) {hung} were left waiting (in a collective) and the engines were restarted"
            self._recover()
        raise RankError(msg, failed, remote)

    def _recover(self) -> None:
        if self.owned:
            # ranks stuck in an MPI collective cannot be interrupted: kill them, then start afresh
            self._reap({r["pid"] for r in self.ranks}, timeout_s=0)
            self.ranks = []
            self.restart()
        else:
            raise ClusterError(
                f"ranks of the external cluster {self.profile!r} are stuck; restart that cluster by hand"
            )

    def describe(self) -> dict:
        """Return how the engines were started: size, owner, hosts, oversubscription."""
        return {
            "engines": self.size,
            "source": ("local mpiexec (ipyparallel engines='mpi')" if self.emulated is None
                       else f"mpiexec on {self.emulated.n} emulated hosts") if self.owned else f"profile {self.profile}",
            "hosts": sorted({r["host"] for r in self.ranks}),
            "ranks_and_cores_per_host": {h: {"ranks": len(v["ranks"]), "cores": v["cores"]} for h, v in self.hosts.items()},
            "usable_cores": usable_cores(),
            "oversubscribed": self.oversubscribed,
            "pinned": {r["rank"]: r.get("cores") for r in self.ranks} if self.owned and self.pin else None,
        }
