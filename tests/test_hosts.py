"""Emulated hosts (network namespaces, veth, bridge, tbf): bytes really cross the links, and nothing is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ipcbench import hosts

PROBLEM = hosts.requirements_problem()
needs_hosts = pytest.mark.skipif(PROBLEM is not None, reason=f"emulated hosts cannot be made here: {PROBLEM}")

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _no_leftovers_of(pid: int) -> None:
    left = hosts.leftovers()
    mine = [n for kind in left.values() for n in kind if n.startswith(f"{hosts.PREFIX}{pid}")]
    assert not mine, f"left behind: {mine}"


@pytest.fixture
def two_hosts_1g():
    with hosts.EmulatedHosts(2, "1GbE") as h:
        yield h
    _no_leftovers_of(os.getpid())


@needs_hosts
def test_shaped_link_bandwidth_and_counters(two_hosts_1g):
    h = two_hosts_1g
    r = hosts.probe_link(h, 0, 1, rounds=100, nbytes=16 << 20, repeats=6)
    configured = h.link.rate_bps / 8
    assert r["bulk_bytes"] == 16 << 20 and len(r["bulk_Bps"]) == 6
    assert 0.8 * configured <= r["bandwidth_Bps"] <= 1.2 * configured, (r["bandwidth_Bps"], configured)
    # the bytes crossed the emulated link (h0 sent them), not some shortcut between the namespaces
    assert r["crossed_bytes"]["h0"] >= 6 * (16 << 20)
    assert len(r["rtt_s"]) == 100 and min(r["rtt_s"]) > 0


PINGPONG = textwrap.dedent("""
    from mpi4py import MPI
    import numpy as np
    comm = MPI.COMM_WORLD
    buf = np.arange(1 << 20, dtype=np.uint8) if comm.rank == 0 else np.zeros(1 << 20, np.uint8)
    for _ in range(8):
        if comm.rank == 0:
            comm.Send(buf, 1); comm.Recv(buf, 1)
        else:
            comm.Recv(buf, 0); comm.Send(buf, 0)
    assert buf[:256].tolist() == list(range(256))
    names = comm.gather(MPI.Get_processor_name())
    if comm.rank == 0:
        print("names", *names)
""")


@needs_hosts
def test_mpi_ping_pong_crosses_the_link(two_hosts_1g, tmp_path):
    h = two_hosts_1g
    script = tmp_path / "pp.py"
    script.write_text(PINGPONG)
    before = h.counters()
    cmd = ["mpiexec", "-n", "2", *h.mpiexec_args(), sys.executable, str(script)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, **h.transport_env()}, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "names h0 h1" in p.stdout  # MPICH's own view: two hosts, not one
    after = h.counters()
    # 8 round trips of 1 MiB: each host sent at least 8 MiB through its veth
    for name in h.names:
        assert after[name]["tx_bytes"] - before[name]["tx_bytes"] >= 8 << 20, (name, before, after)


@needs_hosts
def test_zeromq_tcp_round_trip_crosses_the_link(two_hosts_1g):
    h = two_hosts_1g
    server_code = textwrap.dedent("""
        import zmq
        s = zmq.Context().socket(zmq.REP); s.bind("tcp://0.0.0.0:47010"); print("ready", flush=True)
        for _ in range(4):
            s.send(s.recv())
    """)
    client_code = textwrap.dedent(f"""
        import zmq
        s = zmq.Context().socket(zmq.REQ); s.connect("tcp://{h.addresses[1]}:47010")
        msg = bytes(range(256)) * 4096
        for _ in range(4):
            s.send(msg); assert s.recv() == msg
        print("ok")
    """)
    before = h.counters()
    server = h.popen(1, [sys.executable, "-c", server_code], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert server.stdout.readline().strip() == "ready"
        p = subprocess.run(h.command(0, [sys.executable, "-c", client_code]), capture_output=True, text=True,
                           env=ENV, timeout=60)  # fmt: skip
        assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
        server.wait(timeout=30)
    finally:
        server.kill()
        server.wait()
    after = h.counters()
    for name in h.names:
        assert after[name]["tx_bytes"] - before[name]["tx_bytes"] >= 4 << 20


HOLDER = textwrap.dedent("""
    import sys, time
    from ipcbench import hosts
    with hosts.EmulatedHosts(2, "1GbE") as h:
        print("up", flush=True)
        time.sleep(120)
""")


@needs_hosts
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_run_killed_halfway_leaves_nothing(sig):
    p = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert p.stdout.readline().strip() == "up"
        left = hosts.leftovers()
        assert len([n for n in left["netns"] if n.startswith(f"{hosts.PREFIX}{p.pid}")]) == 2
        p.send_signal(sig)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if sig == signal.SIGKILL:  # nothing could run in it: the next run's reaper removes what the dead one made
        reaped = hosts.reap_stale()
        assert any(str(p.pid) in r for r in reaped)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(n.startswith(f"{hosts.PREFIX}{p.pid}") for v in hosts.leftovers().values() for n in v):
        time.sleep(0.1)
    _no_leftovers_of(p.pid)
    # no qdisc of ours anywhere either (they go with their devices)
    assert f"{hosts.PREFIX}{p.pid}" not in subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout


@needs_hosts
def test_a_second_set_in_one_process_is_refused_and_leaves_the_first_up(two_hosts_1g):
    h = two_hosts_1g
    with pytest.raises(hosts.HostsError, match="already has emulated hosts"):
        with hosts.EmulatedHosts(2):
            pass
    # the first set is still up: its namespaces exist and its link carries a probe from h0 to h1
    assert set(h.namespaces) <= set(hosts.leftovers()["netns"])
    r = hosts.probe_link(h, 0, 1, rounds=10, nbytes=1 << 20, repeats=1)
    assert len(r["rtt_s"]) == 10 and r["crossed_bytes"]["h0"] >= 1 << 20


@needs_hosts
def test_a_link_with_latency_is_built_where_netem_exists_and_refused_clearly_where_not():
    link = hosts.LinkModel("wan", 1e9, delay_s=0.005)
    if hosts.has_netem():  # host to host crosses two links: a round trip pays the delay four times
        with hosts.EmulatedHosts(2, link) as h:
            r = hosts.probe_link(h, 0, 1, rounds=10, nbytes=1 << 20, repeats=1)
        assert min(r["rtt_s"]) >= 4 * link.delay_s * 0.9, r["rtt_s"]
    else:
        with pytest.raises(hosts.HostsError, match="netem"):
            with hosts.EmulatedHosts(2, link):
                pass
    _no_leftovers_of(os.getpid())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="network namespaces are Linux's")
def test_clear_error_where_namespaces_cannot_be_made(monkeypatch):
    """Without root a run says what it needs (checked on every Linux machine, root or not, tools or not)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(hosts.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    with pytest.raises(hosts.HostsError, match="root"):
        hosts.EmulatedHosts(2).start()
