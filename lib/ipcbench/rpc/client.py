"""The "TEE" side's RPC client: one DEALER socket, per-call timing, the per-call performance log.

Phases of a call, as the source's log names them (client side):

* Serialize: from the call's start until its frames are ready (float16
  conversion, ``tobytes`` + packing, or the copy into shared memory);
* Send: ``send_multipart`` returning (ZeroMQ queues the frames; the bytes move later);
* Recv: from then until the reply's frames are in hand. This includes the server's
  whole handling (its deserialize, compute, serialize) and both transfers;
* Deserialize: decoding the reply into float32 arrays (copies out of shared memory).

Each reply also carries the server's own timings (deserialize, compute, serialize,
total), kept in :class:`CallRecord` beside the log's columns, so transfer = Send +
Recv - server total can be separated from the server's compute.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import zmq

from ..clock import now_s
from . import wire
from .perflog import PerfLog

DEFAULT_TIMEOUT_S = 30.0


@dataclass
class CallRecord:
    """One RPC's timings (s) and sizes (B), client side, with the server's own timings."""

    id: int
    method: str
    serialize_s: float
    send_s: float
    recv_s: float
    deserialize_s: float
    total_s: float
    sent_B: int
    recv_B: int
    wire_sent_B: int
    wire_recv_B: int
    server_deserialize_s: float
    server_compute_s: float
    server_serialize_s: float
    server_total_s: float
    step: int = -1

    def as_dict(self) -> dict:
        """Return the record as a plain dict."""
        return asdict(self)


def transport_of(endpoint: str) -> str:
    """Return the log's transport name of an endpoint ('IPC', 'TCP', ...)."""
    return endpoint.split("://", 1)[0].upper()


class SplitCalls:
    """The split decoder's calls, on any client with ``call(method, header, tensors) -> (reply header, tensors)``
    (the ZeroMQ :class:`RpcClient` and the gRPC client)."""

    def embedding(self, ids) -> np.ndarray:
        """Return the embeddings (t, hidden) of token ids."""
        return self.call("Embedding", {}, {"ids": np.asarray(ids, dtype=np.int64)})[1]["x"]

    def batch_linear(self, layer: int, names: list[str], x: np.ndarray) -> list[np.ndarray]:
        """Return ``x @ W`` for each named projection of a layer, in order."""
        out = self.call("BatchLinear", {"layer": layer, "names": list(names)}, {"x": x})[1]
        return [out[n] for n in names]

    def matmul(self, a: np.ndarray, b: np.ndarray, transpose_b: bool = False) -> np.ndarray:
        """Return ``a @ b`` (or ``a @ b.T`` over the last two axes), computed on the server."""
        return self.call("Matmul", {"transpose_b": bool(transpose_b)}, {"a": a, "b": b})[1]["out"]

    def lm_head(self, x: np.ndarray) -> np.ndarray:
        """Return logits (t, vocab) of normed hidden states."""
        return self.call("LMHead", {}, {"x": x})[1]["logits"]

    def fused_layer(self, layer: int, x: np.ndarray, start: int) -> np.ndarray:
        """Return one whole decoder layer's output; the server keeps the KV cache (start 0 at layer 0 resets it)."""
        return self.call("FusedLayer", {"layer": layer, "start": int(start)}, {"x": x})[1]["x"]


class RpcClient(SplitCalls):
    """Call the server at ``endpoint`` with one codec and wire dtype; log every call.

    ``shm_bytes`` sizes each of the two shared-memory arenas (request, reply) of the
    ``shm`` codec. ``spin_s`` > 0 busy-polls up to that long for each reply (instead
    of sleeping in ``poll``) and asks the server to do the same for this session's
    next request: lower latency for a core kept busy on each side. ``timeout_s`` bounds every call: a server that is gone raises
    :class:`RpcTimeout` instead of hanging, and the client is then closed.
    """

    def __init__(self, endpoint: str, codec: str = "msgpack", wire_dtype: str = "float32",
                 timeout_s: float = DEFAULT_TIMEOUT_S, log=None, shm_bytes: int = 64 * 2**20,
                 context: zmq.Context | None = None, keep_records: bool = True, spin_s: float = 0.0):  # fmt: skip
        if codec not in wire.CODECS:
            raise ValueError(f"unknown codec {codec!r}; codecs are {', '.join(wire.CODECS)}")
        if wire_dtype not in wire.WIRE_DTYPES:
            raise ValueError(f"unknown wire dtype {wire_dtype!r}; use one of {wire.WIRE_DTYPES}")
        self.endpoint, self.codec, self.wire_dtype = endpoint, codec, wire_dtype
        self.timeout_s = float(timeout_s)
        self.spin_s = float(spin_s)
        self.transport = transport_of(endpoint)
        self.records: list[CallRecord] = []
        self.keep_records = keep_records
        self.step = -1
        self._next_id = 1
        self._log = None
        self._log_methods = None
        self._closed = False
        self.request_arena = self.reply_arena = None
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, int(self.timeout_s * 1000))
        self.sock.connect(endpoint)
        # one poller for the client's life: Socket.poll builds a new Poller on every call (a few µs of Python each)
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        try:
            if codec == "shm":
                self.request_arena = wire.Arena(size=shm_bytes)
                self.reply_arena = wire.Arena(size=shm_bytes)
            if log is not None:
                self.start_log(log)
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- logging
    def start_log(self, path, methods=None) -> None:
        """Start a new per-call log at ``path`` (closing the previous one); call IDs restart at 1.

        ``methods``: log only calls of these methods (the source's advice: "only BatchLinear and Matmul").
        """
        if self._log is not None:
            self._log.close()
        self._log = PerfLog(path, self.transport)
        self._log_methods = None if methods is None else frozenset(methods)
        self._next_id = 1

    def stop_log(self) -> None:
        """Close the per-call log, if any."""
        if self._log is not None:
            self._log.close()
            self._log = None

    # -------------------------------------------------------------------- calls
    def call(self, method: str, header: dict | None = None, tensors: dict | None = None) -> tuple[dict, dict]:
        """Send one request and return (reply header, reply tensors as float32/int arrays)."""
        if self._closed:
            raise wire.RpcError("ClientClosed", "this client is closed (after a timeout or close()); create a new one",
                                method)  # fmt: skip
        call_id = self._next_id
        self._next_id += 1
        t0 = now_s()
        frames, shm_out = wire.encode(self.codec, {"method": method, "id": call_id, **(header or {})}, tensors,
                                      self.wire_dtype, self.request_arena)  # fmt: skip
        t1 = now_s()
        try:
            self.sock.send_multipart(frames, copy=False)
        except zmq.Again:
            self._abandon()
            raise wire.RpcTimeout(self._timeout_message(method, call_id, "could not send")) from None
        t2 = now_s()
        reply, body = self._wait_reply(method, call_id)
        t3 = now_s()
        timing_frame, frames_in = reply[-1], reply[:-1]
        if not body.get("ok", False):
            err = body.get("error") or {}
            raise wire.RpcError(str(err.get("type", "Error")), str(err.get("message", "")), method)
        out, shm_in = wire.decode(body, frames_in[1:], self.reply_arena, own=True)
        t4 = now_s()
        s_deser, s_comp, s_ser, s_total = wire.TIMING.unpack(memoryview(timing_frame))
        wire_out, wire_in = wire.frames_nbytes(frames), wire.frames_nbytes(reply)
        rec = CallRecord(call_id, method, t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0, wire_out + shm_out,
                         wire_in + shm_in, wire_out, wire_in, s_deser, s_comp, s_ser, s_total, self.step)  # fmt: skip
        if self.keep_records:
            self.records.append(rec)
        if self._log is not None and (self._log_methods is None or method in self._log_methods):
            self._log.write(rec)
        return body, out

    def _wait_reply(self, method: str, call_id: int) -> tuple[list, dict]:
        deadline = time.monotonic() + self.timeout_s
        if self.spin_s > 0:  # busy-poll first: the reply is picked up without the process going to sleep
            spin_until = now_s() + self.spin_s
            while not self._poller.poll(0) and now_s() < spin_until:
                pass
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._poller.poll(max(1, int(left * 1000))):
                self._abandon()
                raise wire.RpcTimeout(self._timeout_message(method, call_id, "got no reply"))
            reply = self.sock.recv_multipart(copy=False)
            try:
                body = wire.decode_header(reply[0])  # decoded once: the call reads the same header
            except wire.ProtocolError:
                continue
            rid = body.get("id")
            if rid == call_id or rid is None:
                return reply, body
            # a stale reply to an earlier call: drop it

    def _timeout_message(self, method: str, call_id: int, what: str) -> str:
        msg = f"{what} to {method} (call {call_id}) from {self.endpoint} within {self.timeout_s:g} s"
        if self.endpoint.startswith("ipc://") and not os.path.exists(self.endpoint[len("ipc://"):]):
            msg += "; its socket file does not exist: is the server running?"
        else:
            msg += ": is the server running and reachable?"
        return msg

    # ------------------------------------------------------------------ methods
    def init(self) -> tuple[dict, dict]:
        """Open a session; return (the model's config dict, the norm weights by name)."""
        header = {"spin_s": self.spin_s}
        if self.codec == "shm":
            header["shm"] = {"request": self.request_arena.name, "reply": self.reply_arena.name}
        body, tensors = self.call("Init", header)
        return body["config"], tensors

    # ------------------------------------------------------------------ closing
    def _abandon(self) -> None:
        """Close without saying goodbye (the server did not answer)."""
        self._closed = True
        self.close()

    def close(self) -> None:
        """Close the session (best effort), the socket, the log and the arenas."""
        if not self._closed and not self.sock.closed:
            self._closed = True
            try:  # tell the server to detach our arenas; do not wait long for a server that is gone
                frames, _ = wire.encode(self.codec, {"method": "Close", "id": 0}, None, self.wire_dtype,
                                        self.request_arena)  # fmt: skip
                self.sock.send_multipart(frames, flags=zmq.NOBLOCK)
                if self.sock.poll(min(1000, int(self.timeout_s * 1000))):
                    self.sock.recv_multipart()
            except (zmq.ZMQError, wire.ProtocolError):
                pass
        self._closed = True
        if not self.sock.closed:
            self.sock.close(linger=0)
        if self._log is not None:
            self._log.close()
        for a in (self.request_arena, self.reply_arena):
            if a is not None:
                a.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
