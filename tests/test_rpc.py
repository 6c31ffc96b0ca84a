"""Split inference over ZeroMQ: equality with the reference for every option, the log, the analyser, faults, load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from conftest import REPO
from ipcbench import model
from ipcbench.rpc import (
    CODECS,
    GRANULARITIES,
    WIRE_DTYPES,
    PayloadTooLarge,
    RpcClient,
    RpcError,
    RpcServer,
    RpcTimeout,
    SplitDecoder,
    analyze,
    perflog,
    wire,
)

F32_TOL, F16_TOL, BF16_TOL = 1e-5, 1e-2, 6e-2  # max |logit error| / max |logit|
PROMPT = [3, 17, 42, 99, 7, 200]


@pytest.fixture(scope="module")
def weights():
    return model.init_weights(model.preset("tiny"), seed=5)


class ThreadServer:
    """An RpcServer serving from a thread of this process (real sockets)."""

    def __init__(self, weights, tmp_path, **kw):
        self.server = RpcServer(weights, [f"ipc://{tmp_path}/rpc.ipc", "tcp://127.0.0.1:*"], **kw)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self.server.serve, kwargs={"stop": self._stop.is_set, "poll_ms": 10})
        self.thread.start()

    @property
    def ipc(self):
        return self.server.endpoints[0]

    @property
    def tcp(self):
        return self.server.endpoints[1]

    def stop(self):
        self._stop.set()
        self.thread.join(10)
        self.server.close()


@pytest.fixture
def server(weights, tmp_path):
    s = ThreadServer(weights, tmp_path, max_request_bytes=1 << 20)
    yield s
    s.stop()


def _rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


# ------------------------------------------------------------------ equality


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("wire_dtype", WIRE_DTYPES)
def test_split_decoder_matches_the_reference(weights, server, transport, codec, granularity, wire_dtype):
    ref_tokens, ref_logits = model.generate(weights, PROMPT, 6)
    with RpcClient(getattr(server, transport), codec, wire_dtype, timeout_s=10) as c:
        dec = SplitDecoder(c, granularity)
        tokens, logits = dec.generate(PROMPT, 6)
        forced = dec.teacher_forced(PROMPT, ref_tokens)
        tol = {"float32": F32_TOL, "float16": F16_TOL, "bfloat16": BF16_TOL}[wire_dtype]
        assert max(_rel_err(a, b) for a, b in zip(forced, ref_logits, strict=True)) <= tol
        if wire_dtype == "float32":
            assert tokens == ref_tokens
        # the RPC count per step is what the layout says
        steps = dec.steps[-6:]
        assert all(s.calls == dec.rpcs_per_step() for s in steps)
        methods = {r.method for r in c.records}
        want = {"Init", "Embedding", "LMHead"} | ({"BatchLinear", "Matmul"} if granularity == "per_op" else {"FusedLayer"})
        assert methods == want
        # every call moved bytes both ways (float16's halving is tested below)
        assert all(r.sent_B > 0 and r.recv_B > 0 for r in c.records)
    assert not wire.leftover_arenas()


def test_float16_moves_about_half_the_bytes(weights, server):
    moved = {}
    for wd in WIRE_DTYPES:
        with RpcClient(server.ipc, "multipart", wd) as c:
            SplitDecoder(c, "per_op").generate(PROMPT, 4)
            moved[wd] = sum(r.sent_B + r.recv_B for r in c.records if r.method in ("BatchLinear", "Matmul"))
    assert 0.45 < moved["float16"] / moved["float32"] < 0.6
    assert moved["bfloat16"] == pytest.approx(moved["float16"], rel=0.01)  # two bytes per element (headers differ)


# -------------------------------------------------------------------- the log


def test_log_round_trip_write_parse_analyse(weights, server, tmp_path):
    log = tmp_path / "zmq_performance.log"
    with RpcClient(server.ipc, "msgpack", log=log) as c:
        SplitDecoder(c, "per_op").generate(PROMPT, 5)
        recs = list(c.records)
    text = log.read_text()
    lines = text.splitlines()
    assert lines[0] == "ZeroMQ Performance Log - Transport: IPC"
    example = (REPO / "data" / "seeds" / "rpc_example_log.txt").read_text().splitlines()
    assert lines[1:4] == example[1:4]  # rules and column header exactly as the source's
    parsed = perflog.parse(text)
    assert parsed.transport == "IPC" and not parsed.problems
    assert len(parsed.calls) == len(recs)
    assert parsed.calls["ID"].tolist() == [r.id for r in recs]
    assert parsed.calls["Method"].tolist() == [r.method for r in recs]
    np.testing.assert_allclose(parsed.calls["Total_ms"], [r.total_s * 1e3 for r in recs], atol=6e-4)
    np.testing.assert_allclose(parsed.calls["Sent_KB"], [r.sent_B / 1e3 for r in recs], atol=6e-3)
    rep = analyze.analyze(parsed)
    assert rep.calls == len(recs)
    assert rep.total_ms == pytest.approx(sum(r.total_s for r in recs) * 1e3, rel=1e-3)
    assert sum(rep.phase_pct.values()) + rep.other_pct == pytest.approx(100, abs=1e-6)
    assert rep.by_method["calls"].sum() == len(recs)
    assert rep.by_method["pct"].sum() == pytest.approx(100)
    assert rep.sent_MB == pytest.approx(sum(r.sent_B for r in recs) / 1e6, rel=1e-3)
    assert len(rep.slowest) == 5 and rep.slowest["Total_ms"].is_monotonic_decreasing
    text = rep.text()
    for section in ("OVERALL STATISTICS", "Time Breakdown", "Data Transfer", "STATISTICS BY METHOD",
                    "Top 5 Slowest Calls", "Top 5 Largest Data Transfers", "OPTIMIZATION RECOMMENDATIONS", "KB = 10^3 B"):  # fmt: skip
        assert section in text
    assert f"RPC calls (> {analyze.CALLS_THRESHOLD})" in text  # 5 steps of 14 calls exceed 50
    csv = perflog.to_csv(parsed, tmp_path / "perf.csv")
    assert csv.splitlines()[0] == ",".join(perflog.CSV_COLUMNS)
    assert len(csv.splitlines()) == len(recs) + 1


def test_log_survives_a_crash_mid_run(weights, server, tmp_path):
    log = tmp_path / "crash.log"
    c = RpcClient(server.ipc, "multipart", log=log)
    dec = SplitDecoder(c, "fused")
    dec.forward(PROMPT)
    n = len(c.records)
    # no close(): the process "crashes" here; every finished call is already on disk
    parsed = perflog.read(log)
    assert len(parsed.calls) == n and not parsed.problems
    c.close()


def test_malformed_and_truncated_lines_are_reported_not_fatal(tmp_path):
    good = perflog.format_line(1, "Init", 0.1, 0.02, 0.3, 0.05, 0.47, 0.12, 1.96)
    text = (perflog.header("TCP") + good + "2     Embedding            oops\n"
            + perflog.format_line(3, "LMHead", 0.1, 0.02, 0.3, 0.05, 0.47, 0.5, 32.0)
            + "4     BatchLinear          -1.0  0.1 0.1 0.1 0.1 1 1 1\n" + "garbage line\n"
            + perflog.format_line(6, "BatchLinear", 0.1, 0.02, 0.3, 0.05, 0.47, 4.0, 4.0)[:30])  # fmt: skip
    p = tmp_path / "bad.log"
    p.write_text(text)
    parsed = perflog.read(p)
    assert parsed.calls["ID"].tolist() == [1, 3]
    assert [no for no, _ in parsed.problems] == [6, 8, 9, 10]
    assert "truncated" in parsed.problems[-1][1]
    rep = analyze.analyze(parsed)
    assert rep.calls == 2
    assert "Skipped 4 unreadable line(s): 6" in rep.text()
    assert analyze.analyze(perflog.parse("")).calls == 0
    assert "(no readable calls)" in analyze.analyze(perflog.parse("")).text()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        perflog.read(tmp_path / "missing.log")


def test_the_source_example_breaks_where_the_chapter_says():
    seeds = REPO / "data" / "seeds"
    checks = analyze.example_checks((seeds / "rpc_example_report.txt").read_text(),
                                    (seeds / "rpc_example_log.txt").read_text()).set_index("check")  # fmt: skip
    holds = checks["holds"]
    assert holds["Total Time = Average Time/Call x Total RPC Calls"]
    assert not holds["the four phases add up to the average call"]
    assert not holds["Total Sent = KB/call x calls (in MB)"]
    row = checks.loc["Total Sent = KB/call x calls (in MB)"]
    assert row["stated"] / row["computed"] == pytest.approx(1000, rel=0.01)  # KB written as MB
    assert not holds["'% of Total' by method adds up to 100%"]
    assert not holds["call 2 (Embedding) moves at most what all calls move together"]


# -------------------------------------------------------------------- faults


def _raw(endpoint):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.connect(endpoint)
    return s


def test_bad_requests_get_error_replies_and_the_server_keeps_serving(weights, server):
    raw = _raw(server.ipc)
    try:
        raw.send(b"\xc1 not msgpack")
        reply = msgpack.unpackb(raw.recv_multipart()[0])
        assert reply["ok"] is False and reply["error"]["type"] == "ProtocolError"
        raw.send(msgpack.packb({"codec": "msgpack", "method": "Init", "id": 1}))
        assert msgpack.unpackb(raw.recv_multipart()[0])["ok"] is True
        raw.send_multipart([msgpack.packb({"codec": "multipart", "method": "LMHead", "id": 2,
                                           "tensors": [["x", "float32", [1, 64]]]}), b"\x00" * 8])  # fmt: skip
        err = msgpack.unpackb(raw.recv_multipart()[0])
        assert err["id"] == 2 and "does not match shape" in err["error"]["message"]
    finally:
        raw.close()
    with RpcClient(server.ipc, "multipart") as c:
        with pytest.raises(RpcError, match="before Init"):
            c.lm_head(np.zeros((1, 64), np.float32))
        c.init()
        with pytest.raises(RpcError, match="unknown method"):
            c.call("Explode", {}, {})
        with pytest.raises(RpcError, match="takes 64 features"):
            c.lm_head(np.zeros((1, 63), np.float32))
        with pytest.raises(RpcError, match="must be float32"):
            c.batch_linear(0, ["q_proj"], np.zeros((1, 64), np.int64))
        with pytest.raises(RpcError, match="names must be"):
            c.batch_linear(0, ["rm_rf"], np.zeros((1, 64), np.float32))
        with pytest.raises(RpcError, match="layer must be"):
            c.batch_linear(7, ["q_proj"], np.zeros((1, 64), np.float32))
        with pytest.raises(RpcError, match="token ids must be"):
            c.embedding([0, 10_000])
        with pytest.raises(RpcError, match="cannot multiply"):
            c.matmul(np.zeros((2, 3, 4), np.float32), np.zeros((2, 5, 4), np.float32))
        with pytest.raises(RpcError, match="exceeds this server's limit"):
            c.lm_head(np.zeros((4096, 64), np.float32))  # 1 MiB + header > the fixture's limit
        with pytest.raises(RpcError, match="KV cache holds 0 positions"):
            c.fused_layer(1, np.zeros((1, 64), np.float32), 5)
        # the next valid request succeeds
        x = np.ones((2, 64), np.float32)
        np.testing.assert_allclose(c.lm_head(x), x @ weights.lm_head, rtol=1e-6)
    assert server.server.errors >= 11


def test_shm_payload_larger_than_the_arena_is_refused_before_sending(weights, server):
    with RpcClient(server.ipc, "shm", shm_bytes=4096) as c:
        c.init()
        with pytest.raises(PayloadTooLarge, match="do not fit the shared-memory arena"):
            c.lm_head(np.zeros((32, 64), np.float32))
        assert c.lm_head(np.zeros((1, 64), np.float32)).shape == (1, weights.config.vocab)
    assert not wire.leftover_arenas()


def test_client_times_out_clearly_when_the_server_is_gone(weights, tmp_path):
    s = ThreadServer(weights, tmp_path)
    c = RpcClient(s.ipc, "shm", timeout_s=1.0)
    c.init()
    s.stop()
    assert not (tmp_path / "rpc.ipc").exists()  # the server removed its socket file
    t0 = time.monotonic()
    with pytest.raises(RpcTimeout, match="socket file does not exist"):
        c.lm_head(np.zeros((1, 64), np.float32))
    assert time.monotonic() - t0 < 3
    with pytest.raises(RpcError, match="closed"):
        c.lm_head(np.zeros((1, 64), np.float32))
    c.close()
    assert not wire.leftover_arenas()


# ------------------------------------------------------------- load and CLI


def _cli(*args):
    return [sys.executable, "-m", "ipcbench.cli", *args]


def _start_cli_server(endpoint, *extra):
    proc = subprocess.Popen(_cli("rpc-serve", "--endpoint", endpoint, "--preset", "tiny", "--seed", "5", *extra),
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    line = proc.stderr.readline()  # "serving on ..." once bound
    assert "rpc-serve" in line and endpoint.split("://")[0] in line, line
    return proc


def _stop_cli_server(proc):
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=30)[1]
    assert proc.returncode == 0, err
    return err


def test_eight_clients_thousand_calls_each_none_lost(weights, tmp_path):
    endpoint = f"ipc://{tmp_path}/load.ipc"
    proc = _start_cli_server(endpoint)
    errors: list = []

    def client(k):
        rng = np.random.default_rng(k)
        try:
            with RpcClient(endpoint, "multipart", timeout_s=30, keep_records=False) as c:
                c.init()
                for i in range(1000):
                    x = rng.standard_normal((1, 64), dtype=np.float32)
                    names = ["q_proj", "down_proj"][:1] if i % 2 else ["gate_proj", "up_proj"]
                    out = c.batch_linear(i % 2, names, x)
                    for n, o in zip(names, out, strict=True):
                        np.testing.assert_allclose(o, x @ getattr(weights.layers[i % 2], n), rtol=1e-5, atol=1e-6)
        except Exception as exc:  # collected and asserted below
            errors.append((k, exc))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    err = _stop_cli_server(proc)
    assert not errors, errors[:2]
    assert "stopped after 8016 requests (0 errors)" in err  # 8 x (Init + 1000 + Close)
    assert not os.path.exists(f"{tmp_path}/load.ipc")


def test_cli_serve_run_analyze(tmp_path):
    endpoint = f"ipc://{tmp_path}/cli.ipc"
    proc = _start_cli_server(endpoint)
    try:
        log = tmp_path / "zmq_performance.log"
        run = subprocess.run(_cli("rpc-run", "--endpoint", endpoint, "--log", str(log), "--preset", "tiny", "--seed", "5",
                                  "--codec", "shm", "--granularity", "fused", "--check"),
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "tokens identical" in run.stdout
    finally:
        _stop_cli_server(proc)
    an = subprocess.run(_cli("analyze-log", str(log), "--csv", str(tmp_path / "p.csv")), capture_output=True, text=True)
    assert an.returncode == 0 and "Total RPC Calls:      33" in an.stdout  # Init + 8 steps x (2 layers + 2)
    assert (tmp_path / "p.csv").read_text().count("\n") == 34
    gone = subprocess.run(_cli("rpc-run", "--endpoint", endpoint, "--timeout", "1", "--log", str(tmp_path / "x.log")),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert gone.returncode == 1 and "is the server running" in gone.stderr
    missing = subprocess.run(_cli("analyze-log", str(tmp_path / "nope.log")), capture_output=True, text=True)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


# ------------------------------------------------------------ msgspec and gRPC


def test_msgspec_malformed_messages_get_error_replies(weights, server):
    """The msgspec codec's own malformations (frame index out of range, unused frames, bad data) are refused clearly."""
    import msgspec

    def send(body, *frames):
        raw.send_multipart([b"\xc1" + msgspec.msgpack.encode(body), *frames])
        return wire.decode_header(raw.recv_multipart()[0])

    raw = _raw(server.ipc)
    try:
        assert send({"codec": "msgspec", "method": "Init", "id": 1})["ok"] is True
        bad = send({"codec": "msgspec", "method": "LMHead", "id": 2, "tensors": [["x", "float32", [1, 64], 3]]})
        assert bad["ok"] is False and "names frame 3, but 0 data frames" in bad["error"]["message"]
        extra = send({"codec": "msgspec", "method": "LMHead", "id": 3, "tensors": [["x", "float32", [1, 64], 0]]},
                     b"\0" * 256, b"\0" * 8)  # fmt: skip
        assert extra["ok"] is False and "2 data frames sent, but the tensors use frames [0]" in extra["error"]["message"]
        kind = send({"codec": "msgspec", "method": "LMHead", "id": 4, "tensors": [["x", "float32", [1, 64], 1.5]]})
        assert "frame index or bytes" in kind["error"]["message"]
        junk = wire.decode_header(raw.send(b"\xc1\xff\xfe") or raw.recv_multipart()[0])
        assert junk["ok"] is False and junk["error"]["type"] == "ProtocolError"
        good = send({"codec": "msgspec", "method": "LMHead", "id": 5, "tensors": [["x", "float32", [1, 64], 0]]},
                    np.ones((1, 64), np.float32))  # fmt: skip
        assert good["ok"] is True  # the server kept serving
    finally:
        raw.close()


@pytest.fixture
def grpc_server(weights, tmp_path):
    from ipcbench.rpc.grpc_transport import GrpcServer

    s = GrpcServer(weights, f"unix:{tmp_path}/grpc.sock", max_request_bytes=1 << 20)
    yield s
    s.close()


@pytest.mark.parametrize("mode", ["unary", "stream"])
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("wire_dtype", ["float32", "bfloat16"])
def test_grpc_split_decoder_matches_the_reference(weights, grpc_server, mode, granularity, wire_dtype):
    from ipcbench.rpc.grpc_transport import GrpcClient

    ref_tokens, ref_logits = model.generate(weights, PROMPT, 4)
    with GrpcClient(grpc_server.address, wire_dtype, mode=mode, timeout_s=10) as c:
        dec = SplitDecoder(c, granularity)
        forced = dec.teacher_forced(PROMPT, ref_tokens)
        tol = F32_TOL if wire_dtype == "float32" else BF16_TOL
        assert max(_rel_err(a, b) for a, b in zip(forced, ref_logits, strict=True)) <= tol
        tokens, _ = dec.generate(PROMPT, 4)
        if wire_dtype == "float32":
            assert tokens == ref_tokens
        rec = c.records[-1]
        assert rec.server_total_s >= rec.server_compute_s > 0 and rec.total_s > rec.server_total_s
        assert rec.sent_B > 0 and rec.recv_B > 0
        assert c.bare(0, 3) > 0 and c.bare(4096, 3) > 0


def test_grpc_bad_requests_get_error_replies_and_the_server_keeps_serving(weights, grpc_server):
    from ipcbench.rpc.grpc_transport import GrpcClient

    with GrpcClient(grpc_server.address, timeout_s=10) as c:
        with pytest.raises(RpcError, match="before Init"):
            c.lm_head(np.zeros((1, 64), np.float32))
        c.init()
        with pytest.raises(RpcError, match="unknown method"):
            c.call("Explode")
        with pytest.raises(RpcError, match="takes 64 features"):
            c.lm_head(np.zeros((1, 63), np.float32))
        with pytest.raises(RpcError, match="exceeds this server's limit"):
            c.lm_head(np.zeros((4096, 64), np.float32))
        not_proto = c._call(b"\xff\xff\xff", timeout=5)  # raw bytes that are no Request message
        from ipcbench.rpc.grpc_transport import messages

        rep = messages()[2].FromString(not_proto)
        assert not rep.ok and rep.error_type == "ProtocolError"
        x = np.ones((2, 64), np.float32)
        np.testing.assert_allclose(c.lm_head(x), x @ weights.lm_head, rtol=1e-6)
    assert grpc_server.errors >= 4


@pytest.mark.parametrize("mode", ["unary", "stream"])
def test_grpc_client_fails_clearly_when_the_server_is_gone(weights, tmp_path, mode):
    from ipcbench.rpc.grpc_transport import GrpcClient, GrpcServer

    s = GrpcServer(weights, f"unix:{tmp_path}/grpc.sock")
    c = GrpcClient(s.address, mode=mode, timeout_s=2.0)
    c.init()
    s.close()
    assert not (tmp_path / "grpc.sock").exists()
    t0 = time.monotonic()
    with pytest.raises(RpcTimeout, match="failed within 2 s"):
        c.lm_head(np.zeros((1, 64), np.float32))
    assert time.monotonic() - t0 < 5
    with pytest.raises(RpcError, match="closed"):
        c.lm_head(np.zeros((1, 64), np.float32))
    c.close()


# ------------------------------------------------------------------ the bare round trip after compute


def test_cold_bare_round_trip_runs_after_the_stated_compute(tmp_path):
    """The cold bare round trip computes on both sides for at least the stated time before each call, reports the
    compute as it ran, and leaves a round trip that excludes the echo's compute; the echo still answers plain
    (hot) calls, and a cold call's echo carries the payload back."""
    from ipcbench.experiments import rpc_breakdown as rb

    cfg = model.preset("tiny")
    echo = rb._BareEcho(f"ipc://{tmp_path}/bare.ipc", cfg)  # noqa: SLF001 - the chapter's own echo
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(echo.endpoint)
        sock.send(b"x" * 64)
        assert sock.poll(5000) and sock.recv() == b"x" * 64
        cold = {"client_compute_s": 2e-3, "server_compute_s": 30e-3}  # (the echo's compute far above a round trip)
        t0 = time.perf_counter()
        rows = rb.cold_round_trips(sock, 7, [0, 256], cold, cfg, calls=5)
        took = time.perf_counter() - t0
    finally:
        sock.close(linger=0)
        echo.close()
    assert [(r["round"], r["transport"], r["bytes"]) for r in rows] == [(7, "ipc_cold", 0), (7, "ipc_cold", 256)]
    for r in rows:
        assert r["client_compute_s"] >= 2e-3 and r["server_compute_s"] >= 30e-3
        assert 0 < r["round_trip"] < 30e-3  # the echo's compute is not in it
    assert took >= 2 * 2 * 5 * (2e-3 + 30e-3)  # every call (untimed pass included) paid both computes


def test_compute_between_calls_reads_the_fused_layers_of_one_configuration():
    steps = [{"config": "fused", "phase": "decode", "rpcs": 4, "client_compute": 4e-3},
             {"config": "fused", "phase": "prefill", "rpcs": 4, "client_compute": 40e-3},
             {"config": "baseline", "phase": "decode", "rpcs": 20, "client_compute": 9e-3}]
    calls = [{"config": "fused", "phase": "decode", "method": m, "server_compute_s": s}
             for m, s in (("Embedding", 1e-6), ("FusedLayer", 2e-3), ("FusedLayer", 4e-3), ("FusedLayer", 3e-3))]
    from ipcbench.experiments import rpc_breakdown as rb

    got = rb.compute_between_calls(steps, calls)
    assert got == pytest.approx({"client_compute_s": 1e-3, "server_compute_s": 3e-3})
    assert rb.compute_between_calls(steps, calls, config="shm") is None


def test_a_target_is_met_only_where_its_whole_interval_is_within_it():
    from ipcbench.experiments._common import within_target

    assert within_target({"ci_low": 0.6, "ci_high": 1.4}, 1.5) is True
    assert within_target({"ci_low": 1.6, "ci_high": 2.9}, 1.5) is False
    assert within_target({"ci_low": 1.2, "ci_high": 1.9}, 1.5) is None
