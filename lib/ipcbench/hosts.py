"""Emulated hosts on one machine: network namespaces joined by veth pairs and a bridge, each link shaped with tc.

Each host is a network namespace with its own stack, one interface (``eth0``) and its own hostname (a UTS
namespace is made for every command started in it). The hosts' veth peers hang on one bridge in the root
namespace, which also carries an address: a controller or ``mpiexec`` there reaches every host, the shape of a
real cluster whose head node sits on the same network as its workers.

A link model shapes both directions of every host's link with ``tbf`` (bandwidth) and, where the kernel has
``netem``, adds its one-way latency; where ``netem`` is missing a model with latency cannot be built and says so
(the caller projects instead). Every name carries the creating process's pid: :func:`reap_stale` removes what a
killed run left behind and never touches a live run's namespaces. The emulation runs on the machine's own cores, so
it tests communication, not compute scaling.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from .lifecycle import AlwaysStopped

PREFIX = "ipcb"
"""Every namespace, veth and bridge this module makes starts with this (then the creator's pid)."""
SUBNET = "10.213.{k}.0/24"
"""Candidate subnets (k = 0..255); the first one no interface of this machine uses is taken."""
_NAME = re.compile(rf"^{PREFIX}(\d+)(?:h\d+|v\d+|br)(?:@\S+)?$")
_DIR = re.compile(rf"^{PREFIX}(\d+)-[A-Za-z0-9_]+$")  # a set's launcher directory under the temporary directory


class HostsError(RuntimeError):
    """Emulated hosts cannot be made here (not root, no ``ip``/``tc``, a qdisc missing) or a command in them failed."""


@dataclass(frozen=True)
class LinkModel:
    """A link between an emulated host and the switch: bandwidth per direction (bit/s, None: unshaped) and one-way
    latency added to it (s; needs the kernel's ``netem``). Host to host crosses two such links."""

    name: str
    rate_bps: float | None = None
    delay_s: float = 0.0

    def describe(self) -> dict:
        """Return the model as a plain dict (what a run records as its configured link)."""
        return asdict(self)


LINKS = {
    "unshaped": LinkModel("unshaped"),
    "25GbE": LinkModel("25GbE", 25e9),
    "10GbE": LinkModel("10GbE", 10e9),
    "1GbE": LinkModel("1GbE", 1e9),
}
"""The link models the scale-out chapter runs (this kernel shapes bandwidth only: no netem)."""


def _run(cmd: list[str], check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run a command; on failure raise HostsError with its stderr."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise HostsError(f"`{cmd[0]}` is not installed: emulated hosts need iproute2 (`ip`, `tc`)") from exc
    if check and p.returncode != 0:
        raise HostsError(f"`{' '.join(cmd)}` failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


def requirements_problem() -> str | None:
    """Return why emulated hosts cannot be made on this machine (None when they can)."""
    if not sys.platform.startswith("linux"):
        return f"emulated hosts need Linux network namespaces; this is {sys.platform}"
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            return f"emulated hosts need `{tool}` (iproute2 / util-linux), which is not on PATH"
    if os.geteuid() != 0:
        return ("emulated hosts need root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces, veth pairs and "
                "a bridge: run as root, or in a container started with --cap-add NET_ADMIN --cap-add SYS_ADMIN")  # fmt: skip
    return None


def has_netem() -> bool:
    """Return whether this kernel has the ``netem`` qdisc (added latency); checked on a throw-away dummy device."""
    dev = f"{PREFIX}{os.getpid()}v99"
    if _run(["ip", "link", "add", dev, "type", "dummy"], check=False).returncode != 0:
        return False
    try:
        return _run(["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", "1ms"], check=False).returncode == 0
    finally:
        _run(["ip", "link", "del", dev], check=False)


# ------------------------------------------------------------------ leftovers


def _launcher_dirs() -> list[str]:
    """Return the launcher directories (``<tmp>/ipcb<pid>-*``) of every set of hosts, alive or dead."""
    tmp = tempfile.gettempdir()
    try:
        names = os.listdir(tmp)
    except OSError:
        return []
    return sorted(n for n in names if _DIR.match(n) and os.path.isdir(os.path.join(tmp, n)))


def leftovers() -> dict[str, list[str]]:
    """Return the namespaces, links (veth, bridge) and launcher directories this module made that still exist (any
    creator)."""
    if requirements_problem():
        return {"netns": [], "links": [], "files": _launcher_dirs()}
    ns = [line.split()[0] for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines() if line.strip()]
    links = []
    for line in _run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@")[0]
            if _NAME.match(name):
                links.append(name)
    return {"netns": [n for n in ns if _NAME.match(n)], "links": links, "files": _launcher_dirs()}


def _owner(name: str) -> int | None:
    m = _NAME.match(name) or _DIR.match(name)
    return int(m.group(1)) if m else None


def _kill_in_namespace(ns: str) -> None:
    """SIGKILL every process still running in namespace ``ns``."""
    for pid in _run(["ip", "netns", "pids", ns], check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _remove(names_ns: list[str], names_links: list[str]) -> list[str]:
    removed = []
    for ns in names_ns:
        _kill_in_namespace(ns)
        if _run(["ip", "netns", "del", ns], check=False).returncode == 0:
            removed.append(f"netns {ns}")
    for link in names_links:  # (a veth goes with its peer's namespace; the bridge and orphans are left)
        if _run(["ip", "link", "del", link], check=False).returncode == 0:
            removed.append(f"link {link}")
    return removed


def reap_stale(everything: bool = False) -> list[str]:
    """Remove namespaces, links and launcher directories whose creating process is dead (all of this module's, with
    ``everything``)."""
    import psutil

    left = leftovers()
    dead = lambda n: everything or not psutil.pid_exists(_owner(n) or 0)  # noqa: E731
    removed = _remove([n for n in left["netns"] if dead(n)], [n for n in left["links"] if dead(n)])
    for d in left["files"]:  # the launcher script of a run that was killed before it could remove it
        if dead(d):
            shutil.rmtree(os.path.join(tempfile.gettempdir(), d), ignore_errors=True)
            removed.append(f"dir {d}")
    return removed


# ------------------------------------------------------------------ the hosts


def _free_subnet() -> int:
    """Return k of the first candidate subnet 10.213.k.0/24 that no interface here uses."""
    used = _run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
    for k in range(256):
        if f"10.213.{k}." not in used:
            return k
    raise HostsError("no free 10.213.k.0/24 subnet for the emulated hosts' network")


class EmulatedHosts(AlwaysStopped):
    """N emulated hosts (``h0`` .. ``hN-1``) on one bridge, every link shaped by ``link``; a context manager that
    always tears everything down (on success, on error, on Ctrl-C and on SIGTERM). One set per process at a time
    (the names carry the pid)."""

    _live: set[str] = set()  # tags of the sets this process has up

    def __init__(self, n: int, link: LinkModel | str = "unshaped"):
        if n < 1:
            raise ValueError(f"need at least one emulated host, got {n}")
        self.n = n
        self.link = LINKS[link] if isinstance(link, str) else link
        self.tag = f"{PREFIX}{os.getpid()}"
        self.bridge = f"{self.tag}br"
        self.namespaces = [f"{self.tag}h{i}" for i in range(n)]
        self.veths = [f"{self.tag}v{i}" for i in range(n)]
        self.names = [f"h{i}" for i in range(n)]
        self.addresses: list[str] = []
        self.bridge_address = ""
        self.netem = False
        self._dir: str | None = None
        self.up = False

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Create the bridge, the namespaces, their veth links and the shaping; raise HostsError if impossible."""
        problem = requirements_problem()
        if problem:
            raise HostsError(problem)
        if self.tag in EmulatedHosts._live:
            raise HostsError("this process already has emulated hosts up: stop them first (one set per process)")
        EmulatedHosts._live.add(self.tag)
        self._owner = True
        reap_stale()
        if self.link.delay_s > 0:
            self.netem = has_netem()
            if not self.netem:
                raise HostsError(
                    f"link model {self.link.name!r} adds {self.link.delay_s * 1e6:.0f} µs of latency, which needs the "
                    "kernel's netem qdisc (sch_netem); this kernel has none: shape bandwidth only and project the "
                    "latency from the measured calls instead"
                )
        k = _free_subnet()
        self.bridge_address = f"10.213.{k}.254"
        self.addresses = [f"10.213.{k}.{i + 1}" for i in range(self.n)]
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.bridge_address}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for ns, veth, addr in zip(self.namespaces, self.veths, self.addresses, strict=True):
            _run(["ip", "netns", "add", ns])
            _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p"])
            _run(["ip", "link", "set", f"{veth}p", "netns", ns])
            _run(["ip", "link", "set", veth, "master", self.bridge])
            _run(["ip", "link", "set", veth, "up"])
            inside = ["ip", "netns", "exec", ns, "ip"]
            _run(inside + ["link", "set", f"{veth}p", "name", "eth0"])
            _run(inside + ["addr", "add", f"{addr}/24", "dev", "eth0"])
            _run(inside + ["link", "set", "eth0", "up"])
            _run(inside + ["link", "set", "lo", "up"])
            _run(inside + ["route", "add", "default", "via", self.bridge_address])
            self._shape(veth, None)  # toward the host
            self._shape("eth0", ns)  # from the host
        self._dir = tempfile.mkdtemp(prefix=f"{self.tag}-")
        self._write_launcher()
        self.up = True

    def set_link(self, link: LinkModel | str) -> None:
        """Re-shape every link to ``link`` while the hosts (and whatever runs on them) stay up."""
        link = LINKS[link] if isinstance(link, str) else link
        if link.delay_s > 0 and not has_netem():
            raise HostsError(f"link model {link.name!r} adds latency, which needs the kernel's netem qdisc; this kernel has none")
        self.link = link
        self.netem = link.delay_s > 0
        for ns, veth in zip(self.namespaces, self.veths, strict=True):
            _run(["tc", "qdisc", "del", "dev", veth, "root"], check=False)
            _run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root"], check=False)
            self._shape(veth, None)
            self._shape("eth0", ns)

    def _shape(self, dev: str, ns: str | None) -> None:
        """Put the link model's qdisc on ``dev`` (in namespace ``ns``): tbf for bandwidth, netem for latency."""
        pre = ["ip", "netns", "exec", ns] if ns else []
        rate, delay = self.link.rate_bps, self.link.delay_s
        if rate is None and delay <= 0:
            return
        if delay > 0:
            _run(pre + ["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "delay", f"{delay * 1e6:.0f}us"])
        if rate is not None:
            _run(pre + ["ip", "link", "set", "dev", dev, "gso_max_size", str(self.gso_bytes)])
            burst = self.burst_bytes()
            parent = ["parent", "1:1"] if delay > 0 else ["root"]
            _run(pre + ["tc", "qdisc", "add", "dev", dev, *parent, "handle", "10:", "tbf", "rate", f"{int(rate)}bit",
                        "burst", str(burst), "latency", "50ms"])  # fmt: skip

    gso_bytes = int(os.environ.get("IPCBENCH_GSO_BYTES", 16384))
    """Largest packet the stack hands a shaped link (``gso_max_size``; 64 KiB by default): a token bucket must hold
    one, and whatever it holds crosses at the veth's own speed after an idle gap."""

    def burst_bytes(self) -> int | None:
        """Return the token bucket's depth (B) of a shaped link: two of the largest packets, or 50 µs at the rate.

        A deeper bucket lets a message that follows an idle gap through faster than the rate (a ping-pong then
        runs above it: chapter 6's ping-pong and its two fits show by how much); a shallower one makes the kernel's
        timer fire too often to keep up at high rates.
        """
        if self.link.rate_bps is None:
            return None
        return int(max(2 * self.gso_bytes, self.link.rate_bps / 8 * 50e-6))

    def stop(self) -> None:
        """Remove every namespace (with its processes and veth), the bridge and the launcher files. Idempotent; never
        touches another set's names (one that this object did not start)."""
        if not getattr(self, "_owner", False):
            return
        _remove(self.namespaces, self.veths + [self.bridge])
        EmulatedHosts._live.discard(self.tag)
        self._owner = False
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.up = False

    # -------------------------------------------------------------- running things on a host
    def namespace(self, host: int | str) -> str:
        """Return the namespace of host ``host`` (index or name ``hK``)."""
        i = self.names.index(host) if isinstance(host, str) else int(host)
        return self.namespaces[i]

    def command(self, host: int | str, argv: list[str]) -> list[str]:
        """Return ``argv`` wrapped to run on ``host``: inside its network namespace, with its own hostname."""
        name = self.names[self.names.index(host)] if isinstance(host, str) else self.names[int(host)]
        return ["ip", "netns", "exec", self.namespace(host), "unshare", "--uts", "sh", "-c",
                f'hostname {name} && exec "$@"', "sh", *argv]  # fmt: skip

    def popen(self, host: int | str, argv: list[str], **kw) -> subprocess.Popen:
        """Start ``argv`` on ``host`` (see :meth:`command`)."""
        return subprocess.Popen(self.command(host, argv), **kw)

    def _write_launcher(self) -> None:
        """Write the script Hydra's rsh launcher calls instead of a remote shell: ``SCRIPT HOST COMMAND...``."""
        cases = "\n".join(f"  {name}) ns={ns} ;;" for name, ns in zip(self.names, self.namespaces, strict=True))
        script = f"""#!/bin/sh
# Hydra calls this as a remote shell: enter the emulated host's namespace (own network, own hostname) and run there.
host="$1"; shift
case "$host" in
{cases}
  *) echo "no emulated host $host" >&2; exit 1 ;;
esac
exec ip netns exec "$ns" unshare --uts sh -c "hostname $host && $*"
"""
        self.launcher = os.path.join(self._dir, "enter-host")
        with open(self.launcher, "w") as f:
            f.write(script)
        os.chmod(self.launcher, 0o755)

    def mpiexec_args(self, ranks_per_host: list[int] | None = None) -> list[str]:
        """Return mpiexec arguments that start ranks on the emulated hosts (Hydra, rsh launcher into namespaces).

        Ranks go round the hosts in blocks: ``ranks_per_host`` (default one per host).
        """
        per = ranks_per_host or [1] * self.n
        hosts = ",".join(f"{name}:{k}" for name, k in zip(self.names, per, strict=True) if k > 0)
        return ["-launcher", "rsh", "-launcher-exec", self.launcher, "-iface", self.bridge, "-hosts", hosts]

    def transport_env(self) -> dict[str, str]:
        """Return the environment that makes MPICH move bytes between hosts over TCP on the emulated links.

        On one machine UCX would otherwise reach the other namespaces' ranks through shared memory (its
        posix/sysv/cma transports do not care about network namespaces): only ``tcp`` on ``eth0`` is allowed.
        """
        return {"UCX_TLS": "tcp,self", "UCX_NET_DEVICES": "eth0", "MPIR_CVAR_CH4_NETMOD": "ucx",
                "MPIR_CVAR_NOLOCAL": "1"}  # fmt: skip

    # -------------------------------------------------------------- what crossed the links
    def counters(self) -> dict[str, dict[str, int]]:
        """Return bytes and packets each host's link carried so far (seen from the bridge side of its veth)."""
        out = {}
        for name, veth in zip(self.names, self.veths, strict=True):
            info = json.loads(_run(["ip", "-j", "-s", "link", "show", "dev", veth]).stdout)[0]["stats64"]
            # the bridge side's tx is what the host received, its rx what the host sent
            out[name] = {"tx_bytes": info["rx"]["bytes"], "rx_bytes": info["tx"]["bytes"],
                         "tx_packets": info["rx"]["packets"], "rx_packets": info["tx"]["packets"]}  # fmt: skip
        return out

    def describe(self) -> dict:
        """Return the emulation's set-up (hosts, addresses, link model, netem) for a run's metadata."""
        return {"hosts": self.n, "names": self.names, "addresses": self.addresses, "bridge": self.bridge_address,
                "link": self.link.describe(), "netem": self.netem,
                "tbf_burst_bytes": self.burst_bytes()}  # fmt: skip


# ------------------------------------------------------------------ measuring a link with plain sockets


def _probe_server(port: int) -> None:
    """Serve one probe client: echo single bytes (ping-pong), then sink bulk transfers, answering each one's count."""
    import socket

    srv = socket.create_server(("0.0.0.0", port))
    print("ready", flush=True)
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = conn.makefile("rb")
    rounds = int.from_bytes(f.read(4), "little")
    for _ in range(rounds):
        conn.sendall(f.read(1))
    while True:
        head = f.read(8)
        total = int.from_bytes(head, "little") if len(head) == 8 else 0
        if total == 0:
            break
        got = 0
        while got < total:
            chunk = f.read1(min(1 << 20, total - got))
            if not chunk:
                break
            got += len(chunk)
        conn.sendall(got.to_bytes(8, "little"))
    conn.close()


def _probe_client(address: str, port: int, rounds: int, nbytes: int, repeats: int = 6) -> dict:
    """Ping-pong single bytes ``rounds`` times, then send ``nbytes`` in bulk ``repeats`` times (each timed until the
    server has counted its last byte); return the round trips (s) and the bulk rates (B/s)."""
    import socket

    deadline = time.monotonic() + 10
    while True:
        try:
            conn = socket.create_connection((address, port), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    conn.settimeout(120)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sendall(rounds.to_bytes(4, "little"))
    rtts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        conn.sendall(b"x")
        conn.recv(1)
        rtts.append(time.perf_counter() - t0)
    block = b"\0" * (1 << 20)
    rates, got = [], 0
    for _ in range(repeats):
        conn.sendall(nbytes.to_bytes(8, "little"))
        t0 = time.perf_counter()
        left = nbytes
        while left > 0:
            conn.sendall(block[: min(left, len(block))])
            left -= min(left, len(block))
        got = int.from_bytes(conn.recv(8, socket.MSG_WAITALL), "little")  # the server's count: the last byte arrived
        rates.append(got / (time.perf_counter() - t0))
    conn.sendall((0).to_bytes(8, "little"))
    conn.close()
    return {"rtt_s": rtts, "bulk_bytes": got, "bulk_Bps": rates}


def probe_link(hosts: EmulatedHosts, a: int = 0, b: int = 1, rounds: int = 200, nbytes: int = 64 << 20,
               port: int = 47001, repeats: int = 6) -> dict:  # fmt: skip
    """Measure the path from host ``a`` to host ``b`` with plain TCP sockets: round trips of one byte and ``repeats``
    bulk transfers of ``nbytes`` each; return the samples, the median bandwidth (B/s) and the bytes the links'
    counters saw."""
    before = hosts.counters()
    py = sys.executable
    server = hosts.popen(b, [py, "-c", f"from ipcbench.hosts import _probe_server; _probe_server({port})"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    try:
        if server.stdout.readline().strip() != "ready":
            raise HostsError(f"the probe server on {hosts.names[b]} did not start: {server.stderr.read()}")
        code = (f"import json; from ipcbench.hosts import _probe_client; "
                f"print(json.dumps(_probe_client({hosts.addresses[b]!r}, {port}, {rounds}, {nbytes}, {repeats})))")  # fmt: skip
        p = subprocess.run(hosts.command(a, [py, "-c", code]), capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
        if p.returncode != 0:
            raise HostsError(f"the probe client on {hosts.names[a]} failed: {p.stderr.strip()}")
        out = json.loads(p.stdout.strip().splitlines()[-1])
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    after = hosts.counters()
    out["bandwidth_Bps"] = float(sorted(out["bulk_Bps"])[len(out["bulk_Bps"]) // 2])
    out["crossed_bytes"] = {n: after[n]["tx_bytes"] - before[n]["tx_bytes"] for n in hosts.names}
    return out
