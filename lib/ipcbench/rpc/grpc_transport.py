"""The split decoder over gRPC: what most split-inference deployments use, beside the book's own RPC on ZeroMQ.

The service ``ipcbench.Split`` has the same methods as :class:`~ipcbench.rpc.RpcServer` (the weights and the method
implementations are that class's), carried by protobuf messages: a ``Request`` (method, call id, session, the
header's fields, and named tensors as ``Tensor``: name, dtype, shape, bytes) and a ``Reply`` (ok or an error, tensors,
the model's config for Init, and the server's own timings). The messages are registered by hand from a
``FileDescriptorProto`` built here, so nothing is generated at build time and the two commands stay two.

Calls go either **unary** (one HTTP/2 request per call) or over one **bidirectional stream** per session (a request
written to the stream, its reply read back, in order). Both sides parse and serialize the protobuf messages in the
handler, not inside gRPC, so the timings separate them: the server's deserialize (parse + tensors out of the
message), compute, serialize (tensors in + ``SerializeToString``); the client's serialize, call and deserialize.
``Echo`` returns its request's bytes and ``Empty`` nothing: the bare round trips of this transport.

A server that is gone makes a call fail within its deadline (unary) or at once when its socket closes (stream), as
:class:`~ipcbench.rpc.wire.RpcTimeout`; a bad request gets an error reply and the server goes on serving.
"""

from __future__ import annotations

import json
import math
import os
import queue
import struct
import threading
import uuid
from concurrent import futures

import numpy as np

from ..clock import now_s
from . import wire
from .client import CallRecord, SplitCalls

SERVICE = "ipcbench.Split"
_TAIL = struct.Struct("<2d")
MAX_MESSAGE = 512 * 2**20

_CLASSES: dict = {}


def messages() -> tuple[type, type, type]:
    """Return the protobuf classes (Tensor, Request, Reply), registered once per process from a hand-built descriptor."""
    if not _CLASSES:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        F = descriptor_pb2.FieldDescriptorProto  # noqa: N806
        fdp = descriptor_pb2.FileDescriptorProto(name="ipcbench_split.proto", package="ipcbench", syntax="proto3")

        def msg(name, fields):
            m = fdp.message_type.add(name=name)
            for number, (fname, ftype, label, type_name) in enumerate(fields, start=1):
                f = m.field.add(name=fname, number=number, type=ftype, label=label)
                if type_name:
                    f.type_name = type_name

        opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
        msg("Tensor", [("name", F.TYPE_STRING, opt, None), ("dtype", F.TYPE_STRING, opt, None),
                       ("shape", F.TYPE_INT64, rep, None), ("data", F.TYPE_BYTES, opt, None)])  # fmt: skip
        msg("Request", [("method", F.TYPE_STRING, opt, None), ("id", F.TYPE_INT64, opt, None),
                        ("session", F.TYPE_STRING, opt, None), ("wire", F.TYPE_STRING, opt, None),
                        ("layer", F.TYPE_INT32, opt, None), ("names", F.TYPE_STRING, rep, None),
                        ("transpose_b", F.TYPE_BOOL, opt, None), ("start", F.TYPE_INT64, opt, None),
                        ("tensors", F.TYPE_MESSAGE, rep, ".ipcbench.Tensor")])  # fmt: skip
        msg("Reply", [("id", F.TYPE_INT64, opt, None), ("ok", F.TYPE_BOOL, opt, None),
                      ("error_type", F.TYPE_STRING, opt, None), ("error_message", F.TYPE_STRING, opt, None),
                      ("tensors", F.TYPE_MESSAGE, rep, ".ipcbench.Tensor"), ("config_json", F.TYPE_STRING, opt, None),
                      ("timing", F.TYPE_DOUBLE, rep, None)])  # fmt: skip
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
        _CLASSES.update({n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"ipcbench.{n}"))
                         for n in ("Tensor", "Request", "Reply")})  # fmt: skip
    return _CLASSES["Tensor"], _CLASSES["Request"], _CLASSES["Reply"]


def _put_tensors(target, tensors: dict, wire_dtype: str) -> None:
    for name, a in tensors.items():
        a = np.ascontiguousarray(a.astype(wire._wire_dtype_of(a, wire_dtype), copy=False))
        raw = a.view(np.uint16) if a.dtype == wire.BFLOAT16 else a
        target.add(name=name, dtype=wire.dtype_name(a.dtype), shape=list(a.shape), data=raw.tobytes())


def _get_tensors(source, max_elems: int = 1 << 28) -> dict:
    out = {}
    for t in source:
        dt, shape = wire._check_meta(t.name, t.dtype, list(t.shape), max_elems)
        if len(t.data) != math.prod(shape) * dt.itemsize:
            raise wire.ProtocolError(f"tensor {t.name!r}: {len(t.data)} B do not match shape {shape} of {dt.name}")
        out[t.name] = wire._to_compute(np.frombuffer(t.data, dtype=dt).reshape(shape), False)
    return out


# ------------------------------------------------------------------------ server


class GrpcServer:
    """Serve a model's linear work over gRPC (unary ``Call``, bidirectional ``Stream``, bare ``Echo`` and ``Empty``).

    ``address``: ``unix:/path`` (a Unix socket, as ZeroMQ's ipc://) or ``host:port`` (``127.0.0.1:0`` picks a port).
    The methods run on :class:`~ipcbench.rpc.RpcServer`'s implementations, one request at a time (one worker thread
    per server, and one more for each open stream).
    """

    def __init__(self, weights, address: str = "127.0.0.1:0", max_request_bytes: int = 256 * 2**20,
                 max_streams: int = 8):  # fmt: skip
        import grpc

        from .server import RpcServer

        self.impl = RpcServer(weights, endpoints=(), max_request_bytes=max_request_bytes)
        self.max_request_bytes = int(max_request_bytes)
        self.served = self.errors = 0
        self._lock = threading.Lock()  # one request at a time, as the ZeroMQ server
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=1 + max_streams),
                                   options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                            ("grpc.max_send_message_length", MAX_MESSAGE)])  # fmt: skip
        ident = lambda b: b  # noqa: E731 - messages are parsed and serialized in the handlers (timed)
        handlers = {
            "Call": grpc.unary_unary_rpc_method_handler(lambda req, ctx: self.handle(req),
                                                        request_deserializer=ident, response_serializer=ident),
            "Stream": grpc.stream_stream_rpc_method_handler(lambda reqs, ctx: (self.handle(r) for r in reqs),
                                                            request_deserializer=ident, response_serializer=ident),
            "Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req, request_deserializer=ident,
                                                        response_serializer=ident),
            "Empty": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"", request_deserializer=ident,
                                                         response_serializer=ident),
        }  # fmt: skip
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = self._server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"gRPC could not bind {address}")
        self.address = address if address.startswith("unix:") else f"{address.rsplit(':', 1)[0]}:{port}"
        self._socket_file = address[len("unix:"):] if address.startswith("unix:") else None
        self._server.start()

    def handle(self, raw: bytes) -> bytes:
        """Return the serialized Reply to one serialized Request; never raises for bad input."""
        _, Request, Reply = messages()  # noqa: N806
        t0 = now_s()
        req_id = 0
        with self._lock:
            try:
                if len(raw) > self.max_request_bytes:
                    raise wire.PayloadTooLarge(f"request of {len(raw)} B exceeds this server's limit of "
                                               f"{self.max_request_bytes} B")  # fmt: skip
                try:
                    req = Request.FromString(raw)
                except Exception as exc:  # protobuf's DecodeError and friends
                    raise wire.ProtocolError(f"the request is not a valid Request message ({exc})") from None
                req_id = req.id
                from .server import METHODS

                if req.method not in METHODS:
                    raise wire.ProtocolError(f"unknown method {req.method!r}; methods are {', '.join(METHODS)}")
                wire_dtype = req.wire or "float32"
                if wire_dtype not in wire.WIRE_DTYPES:
                    raise wire.ProtocolError(f"unknown wire dtype {wire_dtype!r}; use one of {wire.WIRE_DTYPES}")
                body = {"method": req.method, "id": req.id, "layer": req.layer, "names": list(req.names),
                        "transpose_b": req.transpose_b, "start": req.start}  # fmt: skip
                key = req.session.encode()
                impl = self.impl
                session = impl.sessions.get(key)
                if req.method == "Init":
                    session = impl._init_session(key, {})  # noqa: SLF001 - the same sessions as the ZeroMQ server
                elif session is None:
                    raise wire.ProtocolError(f"{req.method} before Init: call Init first to open a session")
                impl.sessions.move_to_end(key)
                tensors = _get_tensors(req.tensors, max_elems=self.max_request_bytes // 2)
                t1 = now_s()
                out_header, out_tensors = getattr(impl, "_m_" + req.method)(session, body, tensors)
                if req.method == "Init":
                    wire_dtype = "float32"
                if req.method == "Close":
                    impl.sessions.pop(key, None)
                    session.close()
                t2 = now_s()
                rep = Reply(id=req_id, ok=True)
                if "config" in out_header:
                    rep.config_json = json.dumps(out_header["config"])
                _put_tensors(rep.tensors, out_tensors, wire_dtype)
                rep.timing.extend([t1 - t0, t2 - t1, 0.0, 0.0])
                out = bytearray(rep.SerializeToString())
                t3 = now_s()
                # timing is the message's last field (the highest number), packed fixed-width doubles: the serialize
                # and total times, known only now, are written into its last 16 bytes
                _TAIL.pack_into(out, len(out) - _TAIL.size, t3 - t2, now_s() - t0)
                self.served += 1
                return bytes(out)
            except Exception as exc:  # every bad request gets an answer; the server goes on
                self.errors += 1
                rep = Reply(id=req_id, ok=False, error_type=type(exc).__name__, error_message=str(exc))
                rep.timing.extend([0.0, 0.0, 0.0, now_s() - t0])
                return rep.SerializeToString()

    def close(self) -> None:
        """Stop serving (in-flight calls get a moment), close every session, remove the socket file."""
        self._server.stop(grace=0.5).wait()
        self.impl.close()
        if self._socket_file:
            try:
                os.unlink(self._socket_file)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------ client


class GrpcClient(SplitCalls):
    """The split decoder's client over gRPC, with :class:`~ipcbench.rpc.RpcClient`'s interface and call records.

    ``mode``: ``unary`` (one call per request) or ``stream`` (one bidirectional stream for the session). A call's
    ``send_s`` is 0 in unary mode (gRPC sends and waits in one call; its whole time is ``recv_s``); in stream mode
    it is the time to hand the request to the stream.
    """

    codec = "protobuf"

    def __init__(self, target: str, wire_dtype: str = "float32", mode: str = "unary",
                 timeout_s: float = 30.0, keep_records: bool = True):  # fmt: skip
        import grpc

        if mode not in ("unary", "stream"):
            raise ValueError(f"mode must be 'unary' or 'stream', not {mode!r}")
        if wire_dtype not in wire.WIRE_DTYPES:
            raise ValueError(f"unknown wire dtype {wire_dtype!r}; use one of {wire.WIRE_DTYPES}")
        self.grpc = grpc
        self.target, self.wire_dtype, self.mode = target, wire_dtype, mode
        self.timeout_s = float(timeout_s)
        self.transport = "gRPC"
        self.records: list[CallRecord] = []
        self.keep_records = keep_records
        self.step = -1
        self.session = uuid.uuid4().hex
        self._next_id = 1
        self._closed = False
        self._requests: queue.SimpleQueue | None = None
        self._responses = None
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                                              ("grpc.max_send_message_length", MAX_MESSAGE)])  # fmt: skip
        self._call = self.channel.unary_unary(f"/{SERVICE}/Call")
        self._echo = self.channel.unary_unary(f"/{SERVICE}/Echo")
        self._empty = self.channel.unary_unary(f"/{SERVICE}/Empty")
        if mode == "stream":
            self._requests = queue.SimpleQueue()
            self._responses = self.channel.stream_stream(f"/{SERVICE}/Stream")(iter(self._requests.get, None))

    def _fail(self, method: str, call_id: int, exc) -> wire.RpcTimeout:
        self._closed = True
        code = exc.code() if hasattr(exc, "code") else None
        return wire.RpcTimeout(f"gRPC call {method} (call {call_id}) to {self.target} failed within {self.timeout_s:g} s "
                               f"({code}): is the server running and reachable?")  # fmt: skip

    def call(self, method: str, header: dict | None = None, tensors: dict | None = None) -> tuple[dict, dict]:
        """Send one request and return (reply header, reply tensors as float32/int arrays)."""
        _, Request, Reply = messages()  # noqa: N806
        if self._closed:
            raise wire.RpcError("ClientClosed", "this client is closed (after a failure or close()); create a new one",
                                method)  # fmt: skip
        call_id = self._next_id
        self._next_id += 1
        header = header or {}
        t0 = now_s()
        req = Request(method=method, id=call_id, session=self.session, wire=self.wire_dtype,
                      layer=int(header.get("layer", 0)), names=list(header.get("names", ())),
                      transpose_b=bool(header.get("transpose_b", False)), start=int(header.get("start", 0)))  # fmt: skip
        _put_tensors(req.tensors, tensors or {}, self.wire_dtype)
        raw = req.SerializeToString()
        t1 = now_s()
        try:
            if self.mode == "unary":
                t2 = t1
                back = self._call(raw, timeout=self.timeout_s)
            else:
                self._requests.put(raw)
                t2 = now_s()
                back = next(self._responses)
        except self.grpc.RpcError as exc:
            raise self._fail(method, call_id, exc) from None
        t3 = now_s()
        rep = Reply.FromString(back)
        if not rep.ok:
            raise wire.RpcError(rep.error_type or "Error", rep.error_message, method)
        out = _get_tensors(rep.tensors)
        out = {k: (np.array(v) if v.base is not None and v.dtype != np.float32 else v) for k, v in out.items()}
        t4 = now_s()
        s_deser, s_comp, s_ser, s_total = (list(rep.timing) + [0.0] * 4)[:4]
        rec = CallRecord(call_id, method, t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0, len(raw), len(back), len(raw),
                         len(back), s_deser, s_comp, s_ser, s_total, self.step)  # fmt: skip
        if self.keep_records:
            self.records.append(rec)
        body = {"id": rep.id, "ok": True}
        if rep.config_json:
            body["config"] = json.loads(rep.config_json)
        return body, out

    def bare(self, nbytes: int = 0, calls: int = 1) -> float:
        """Return the mean time (s) of ``calls`` bare unary round trips: ``Echo`` of ``nbytes``, or ``Empty`` at 0."""
        payload = bytes(nbytes)
        fn = self._echo if nbytes else self._empty
        t0 = now_s()
        for _ in range(calls):
            fn(payload, timeout=self.timeout_s)
        return (now_s() - t0) / calls

    def init(self) -> tuple[dict, dict]:
        """Open a session; return (the model's config dict, the norm weights by name)."""
        body, tensors = self.call("Init")
        return body["config"], tensors

    def start_log(self, path, methods=None) -> None:
        raise NotImplementedError("the per-call log in the source's format is written by the ZeroMQ client only")

    def stop_log(self) -> None:
        return None

    def close(self) -> None:
        """Close the session (best effort), the stream and the channel."""
        if not self._closed:
            self._closed = True
            try:
                _, Request, _ = messages()  # noqa: N806
                raw = Request(method="Close", id=0, session=self.session).SerializeToString()
                if self.mode == "stream":
                    self._requests.put(raw)
                    next(self._responses)
                else:
                    self._call(raw, timeout=min(1.0, self.timeout_s))
            except (self.grpc.RpcError, StopIteration):
                pass
        if self._requests is not None:
            self._requests.put(None)  # ends the request stream
            self._requests = None
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
