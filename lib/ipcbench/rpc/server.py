"""The "GPU" side of split inference: a ROUTER socket that holds the weights and does the linear work.

Methods (the source's log names them): ``Init`` (opens a session: attaches the
client's shared-memory arenas, returns the model's shapes and the small weights the
client needs for its own norms), ``Embedding``, ``BatchLinear`` (several projections
of one input), ``Matmul`` (``a @ b`` or ``a @ b.T``, batched: the attention
products), ``LMHead``, ``FusedLayer`` (a whole decoder layer, with the session's KV
cache kept here) and ``Close``.

Every request is answered: a bad one (unknown method, malformed msgpack, wrong
shapes or dtypes, oversized) with an error reply, after which the server goes on
serving. Each reply ends with a timing frame: the server's deserialize, compute,
serialize and total time (s), so a client can separate transfer from server work.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import zmq

from .. import model
from ..clock import now_s
from . import wire

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
METHODS = ("Init", "Embedding", "BatchLinear", "Matmul", "LMHead", "FusedLayer", "Close")
DEFAULT_MAX_REQUEST_BYTES = 256 * 2**20


@dataclass
class Session:
    """What the server keeps per client (per ROUTER identity)."""

    request_arena: wire.Arena | None = None
    reply_arena: wire.Arena | None = None
    cache: model.KVCache | None = None
    spin_s: float = 0.0
    calls: int = 0
    extra: dict = field(default_factory=dict)

    def close(self) -> None:
        """Detach this session's arenas."""
        for a in (self.request_arena, self.reply_arena):
            if a is not None:
                a.close()
        self.request_arena = self.reply_arena = None


class RpcServer:
    """Serve one model's weights over ZeroMQ to any number of clients (one request at a time)."""

    def __init__(self, weights: model.Weights, endpoints=("ipc:///tmp/ipcbench_rpc.ipc",),
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, max_sessions: int = 64,
                 context: zmq.Context | None = None):  # fmt: skip
        self.weights = weights
        self.cfg = weights.config
        self.max_request_bytes = int(max_request_bytes)
        self.max_sessions = int(max_sessions)
        self.sessions: OrderedDict[bytes, Session] = OrderedDict()
        self.served = 0
        self.errors = 0
        self._spin_next = 0.0
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoints: list[str] = []
        self._ipc_files: list[str] = []
        try:
            for ep in [endpoints] if isinstance(endpoints, str) else endpoints:
                self.sock.bind(ep)
                actual = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
                self.endpoints.append(actual)
                if actual.startswith("ipc://"):
                    self._ipc_files.append(actual[len("ipc://"):])
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ serving
    def serve(self, stop=None, poll_ms: int = 100, max_requests: int | None = None, spin_s: float = 0.0) -> int:
        """Answer requests until ``stop()`` is true (checked every ``poll_ms``) or ``max_requests``; return the count.

        ``spin_s`` > 0 busy-polls that long after each reply before sleeping in ``poll``:
        a request that arrives meanwhile is picked up without a wake-up. A session
        may ask for it too (Init's ``spin_s``): then the server spins after replying to it.
        """
        n = 0
        poller = zmq.Poller()  # one for the loop: Socket.poll builds a new Poller on every call
        poller.register(self.sock, zmq.POLLIN)
        while max_requests is None or n < max_requests:
            spin = max(spin_s, self._spin_next)
            if spin > 0:
                spin_until = now_s() + spin
                while not poller.poll(0) and now_s() < spin_until:
                    pass
            if not poller.poll(poll_ms):
                if stop is not None and stop():
                    break
                continue
            msg = self.sock.recv_multipart(copy=False)
            self.sock.send_multipart(self.handle(msg), copy=False)
            n += 1
        return n

    def handle(self, msg: list) -> list:
        """Return the reply frames (identity first) to one received ROUTER message; never raises for bad input."""
        t0 = now_s()
        identity, frames = msg[0], msg[1:]
        req_id = None
        self._spin_next = 0.0
        try:
            size = wire.frames_nbytes(frames)
            if size > self.max_request_bytes:
                raise wire.PayloadTooLarge(f"request of {size} B exceeds this server's limit of {self.max_request_bytes} B")
            if not frames:
                raise wire.ProtocolError("empty request")
            body = wire.decode_header(frames[0])
            req_id = body.get("id")
            method = body.get("method")
            if method not in METHODS:
                raise wire.ProtocolError(f"unknown method {method!r}; methods are {', '.join(METHODS)}")
            codec, wire_dtype = body.get("codec"), body.get("wire", "float32")
            if codec not in wire.CODECS:
                raise wire.ProtocolError(f"unknown codec {codec!r}; codecs are {', '.join(wire.CODECS)}")
            if wire_dtype not in wire.WIRE_DTYPES:
                raise wire.ProtocolError(f"unknown wire dtype {wire_dtype!r}; use one of {wire.WIRE_DTYPES}")
            key = bytes(identity.bytes if hasattr(identity, "bytes") else identity)
            session = self.sessions.get(key)
            if method == "Init":
                session = self._init_session(key, body)
            elif session is None:
                raise wire.ProtocolError(f"{method} before Init: call Init first to open a session")
            self.sessions.move_to_end(key)
            tensors, _ = wire.decode(body, frames[1:], session.request_arena, max_elems=self.max_request_bytes // 2)
            t1 = now_s()
            out_header, out_tensors = getattr(self, "_m_" + method)(session, body, tensors)
            if method == "Init":
                wire_dtype = "float32"  # the client's own norm weights always travel at full precision
            if method == "Close":
                self.sessions.pop(key, None)
            t2 = now_s()
            reply, _ = wire.encode(codec, {"id": req_id, "ok": True, **out_header}, out_tensors, wire_dtype,
                                   session.reply_arena)  # fmt: skip
            if method == "Close":
                session.close()
            t3 = now_s()
            session.calls += 1
            self.served += 1
            self._spin_next = session.spin_s
            timing = wire.TIMING.pack(t1 - t0, t2 - t1, t3 - t2, now_s() - t0)
            return [identity, *reply, timing]
        except Exception as exc:  # every bad request gets an answer; the server goes on
            self.errors += 1
            kind = type(exc).__name__
            reply = wire.error_frames(req_id, kind, str(exc))
            return [identity, *reply, wire.TIMING.pack(0.0, 0.0, 0.0, now_s() - t0)]

    # ------------------------------------------------------------------ sessions
    def _init_session(self, key: bytes, body: dict) -> Session:
        old = self.sessions.pop(key, None)
        if old is not None:
            old.close()
        s = Session()
        spin = body.get("spin_s", 0.0)
        if not isinstance(spin, (int, float)) or not 0 <= spin <= 1:
            raise ValueError(f"spin_s must be a number of seconds in [0, 1], got {spin!r}")
        s.spin_s = float(spin)
        shm = body.get("shm")
        if shm is not None:
            if not isinstance(shm, dict) or not {"request", "reply"} <= set(shm):
                raise wire.ProtocolError("Init's 'shm' must name the 'request' and 'reply' arenas")
            try:
                s.request_arena = wire.Arena(name=shm["request"])
                s.reply_arena = wire.Arena(name=shm["reply"])
            except BaseException:
                s.close()
                raise
        while len(self.sessions) >= self.max_sessions:  # the least recently used session goes
            _, lru = self.sessions.popitem(last=False)
            lru.close()
        self.sessions[key] = s
        return s

    # ------------------------------------------------------------------- methods
    def _layer(self, body) -> model.Layer:
        i = body.get("layer")
        if not isinstance(i, int) or not 0 <= i < self.cfg.layers:
            raise ValueError(f"layer must be an int in [0, {self.cfg.layers}), got {i!r}")
        return self.weights.layers[i]

    @staticmethod
    def _tensor(tensors: dict, name: str, ndim: int | tuple, dtype=np.float32) -> np.ndarray:
        if name not in tensors:
            raise ValueError(f"missing tensor {name!r}")
        x = tensors[name]
        dims = (ndim,) if isinstance(ndim, int) else ndim
        if x.ndim not in dims:
            raise ValueError(f"tensor {name!r} must have {' or '.join(map(str, dims))} dimensions, has shape {x.shape}")
        kinds = (dtype,) if not isinstance(dtype, tuple) else dtype
        if x.dtype not in kinds:
            raise TypeError(f"tensor {name!r} must be {'/'.join(np.dtype(k).name for k in kinds)}, got {x.dtype}")
        return x

    def _m_Init(self, session, body, tensors):
        w, cfg = self.weights, self.cfg
        out = {"final_norm": w.final_norm}
        for i, layer in enumerate(w.layers):
            out[f"input_norm.{i}"] = layer.input_norm
            out[f"post_norm.{i}"] = layer.post_norm
            out[f"q_norm.{i}"] = layer.q_norm
            out[f"k_norm.{i}"] = layer.k_norm
        return {"config": {k: v for k, v in cfg.as_dict().items()}, "pid": os.getpid()}, out

    def _m_Embedding(self, session, body, tensors):
        ids = self._tensor(tensors, "ids", 1, (np.int64, np.int32))
        if ids.size and (ids.min() < 0 or ids.max() >= self.cfg.vocab):
            raise ValueError(f"token ids must be in [0, {self.cfg.vocab})")
        return {}, {"x": self.weights.embed[ids]}

    def _m_BatchLinear(self, session, body, tensors):
        layer = self._layer(body)
        names = body.get("names")
        if not isinstance(names, list) or not names or not all(n in PROJECTIONS for n in names):
            raise ValueError(f"names must be a non-empty list of {PROJECTIONS}, got {names!r}")
        x = self._tensor(tensors, "x", 2)
        out = {}
        for n in names:
            w = getattr(layer, n)
            if x.shape[1] != w.shape[0]:
                raise ValueError(f"{n} takes {w.shape[0]} input features, x has shape {x.shape}")
            out[n] = x @ w
        return {}, out

    def _m_Matmul(self, session, body, tensors):
        a = self._tensor(tensors, "a", (2, 3))
        b = self._tensor(tensors, "b", (2, 3))
        tb = bool(body.get("transpose_b", False))
        if tb:
            b = np.swapaxes(b, -1, -2)
        if a.ndim != b.ndim or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
            raise ValueError(f"cannot multiply a {a.shape} by b{'.T' if tb else ''} {b.shape}")
        elems = int(np.prod(a.shape[:-1], dtype=np.int64)) * b.shape[-1]
        if elems * 4 > self.max_request_bytes:
            raise wire.PayloadTooLarge(f"the product would be {elems * 4} B, over this server's limit of "
                                       f"{self.max_request_bytes} B")  # fmt: skip
        return {}, {"out": a @ b}

    def _m_LMHead(self, session, body, tensors):
        x = self._tensor(tensors, "x", 2)
        if x.shape[1] != self.cfg.hidden:
            raise ValueError(f"LMHead takes {self.cfg.hidden} features, x has shape {x.shape}")
        return {}, {"logits": x @ self.weights.lm_head}

    def _m_FusedLayer(self, session, body, tensors):
        layer = self._layer(body)
        i = body["layer"]
        start = body.get("start")
        x = self._tensor(tensors, "x", 2)
        if x.shape[1] != self.cfg.hidden:
            raise ValueError(f"FusedLayer takes {self.cfg.hidden} features, x has shape {x.shape}")
        if not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be a non-negative int position, got {start!r}")
        if start == 0 and i == 0:
            session.cache = model.KVCache(self.cfg)
        have = 0 if session.cache is None or session.cache.k[i] is None else session.cache.k[i].shape[1]
        if session.cache is None or have != start:
            raise ValueError(f"layer {i}'s KV cache holds {have} positions, the request starts at {start} "
                             f"(start a sequence at 0 from layer 0)")  # fmt: skip
        positions = np.arange(start, start + x.shape[0])
        return {}, {"x": model.decoder_layer(x, layer, self.cfg, positions, session.cache, i)}

    def _m_Close(self, session, body, tensors):
        return {}, {}

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Close every session, the socket, and remove the ipc socket files."""
        for s in self.sessions.values():
            s.close()
        self.sessions.clear()
        sock = getattr(self, "sock", None)
        if sock is not None and not sock.closed:
            sock.close(linger=0)
        for path in self._ipc_files:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
