"""Wire formats of the RPC: a request or reply (a small header + named tensors) as ZeroMQ frames.

Every message's first frame is a msgpack map with at least ``codec``; the codecs
differ in where the tensors' bytes go:

* ``msgpack`` (the source's baseline): each tensor as ``{"buffer": array.tobytes(),
  "shape": ..., "dtype": ...}`` inside the one msgpack frame (two copies to send:
  ``tobytes`` and the packing; one to receive);
* ``multipart``: the map carries only (name, dtype, shape); each tensor is its own
  ZeroMQ frame, sent from the array's memory (pyzmq's zero-copy above its
  threshold) and received as a view of the frame;
* ``shm``: the map carries (name, dtype, shape, offset); the bytes are written into
  the sender's shared-memory arena (one copy) and read in place by the receiver;
* ``msgspec``: vLLM's way (its ``MsgpackEncoder``): the map is encoded and decoded with ``msgspec``'s
  msgpack (a C encoder/decoder); tensors of at least :data:`MSGSPEC_INLINE_MAX` bytes go as their own frames from the
  array's memory (as ``multipart``), smaller ones inline as msgpack bin. Its first frame starts with the byte 0xC1,
  which msgpack never uses, so a receiver knows which decoder to run before decoding anything.

A wire dtype of ``float16`` or ``bfloat16`` (numpy's via ``ml_dtypes``: float32's exponent
range, 8 bits of mantissa) converts float32 tensors while encoding and back to float32
while decoding; integer tensors (token ids) are never converted.
"""

from __future__ import annotations

import math
import os
import secrets
import struct
from multiprocessing import resource_tracker, shared_memory

import ml_dtypes
import msgpack
import numpy as np

CODECS = ("msgpack", "multipart", "shm", "msgspec")
MSGSPEC_MARK = 0xC1
MSGSPEC_INLINE_MAX = 256
"""Tensors below this many bytes travel inside the msgspec map (vLLM's ``VLLM_MSGPACK_ZERO_COPY_THRESHOLD``)."""
WIRE_DTYPES = ("float32", "float16", "bfloat16")
TENSOR_DTYPES = ("float32", "float16", "bfloat16", "int64", "int32")
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
_HALF = (np.dtype(np.float16), BFLOAT16)
_DTYPES = {name: np.dtype(name) for name in TENSOR_DTYPES}
"""Wire dtype names to numpy dtypes, looked up once (``np.dtype(name)`` costs a microsecond or two per call)."""
_NAMES = {dt: name for name, dt in _DTYPES.items()}


def dtype_name(dt: np.dtype) -> str:
    """Return a dtype's wire name (``dtype.name`` is a Python-level property of several µs)."""
    return _NAMES.get(dt) or dt.name
MAX_DIMS = 4
ALIGN = 64
SHM_PREFIX = "ipcbench_rpc_"
TIMING = struct.Struct("<4d")  # server: deserialize, compute, serialize, total (s)


class RpcError(RuntimeError):
    """The server answered a request with an error (``kind`` is the server-side exception's type)."""

    def __init__(self, kind: str, message: str, method: str | None = None):
        self.kind, self.message, self.method = kind, message, method
        super().__init__(f"{method or 'request'} failed on the server: {kind}: {message}")


class RpcTimeout(TimeoutError):
    """No reply arrived in time (server gone, stuck or unreachable)."""


class ProtocolError(ValueError):
    """A message is malformed: not msgpack, missing fields, or tensors that do not match their metadata."""


class PayloadTooLarge(ValueError):
    """A message (or its tensors) exceeds a stated limit; nothing was sent or computed."""


# -------------------------------------------------------------------------- arena


class Arena:
    """A shared-memory segment that holds one message's tensors at a time (64-byte aligned, from offset 0).

    The creator owns (and at close unlinks) the segment; the other side attaches by
    name, reads views in place, and only detaches.
    """

    def __init__(self, size: int | None = None, name: str | None = None):
        if name is None:
            if not size or size <= 0:
                raise ValueError("an arena needs a positive size in bytes")
            self.shm = shared_memory.SharedMemory(
                name=f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(4)}", create=True, size=int(size))
            self.owner = True
        else:
            if not str(name).startswith(SHM_PREFIX):
                raise ProtocolError(f"shared-memory name {name!r} is not an ipcbench RPC arena")
            try:
                self.shm = shared_memory.SharedMemory(name=name)
            except FileNotFoundError:
                raise ProtocolError(f"shared-memory arena {name!r} does not exist") from None
            # the creator owns the segment: this process's tracker must neither unlink it nor warn
            # (unless this process is the creator: a server and its client in one process, as in tests)
            if not str(name).startswith(f"{SHM_PREFIX}{os.getpid()}_"):
                resource_tracker.unregister(self.shm._name, "shared_memory")  # noqa: SLF001
            self.owner = False
        self.name = self.shm.name
        self.size = self.shm.size

    def write(self, tensors: dict, wire_dtype: str) -> tuple[list, int]:
        """Copy (converting float32 to ``wire_dtype``) the tensors in; return their metadata and the bytes written."""
        metas, off = [], 0
        plan = []
        for name, arr in tensors.items():
            dt = _wire_dtype_of(arr, wire_dtype)
            off = -(-off // ALIGN) * ALIGN
            plan.append((name, arr, dt, off))
            off += arr.size * dt.itemsize
        if off > self.size:
            raise PayloadTooLarge(f"tensors of {off} B do not fit the shared-memory arena of {self.size} B; "
                                  f"create the client with a larger shm_bytes")  # fmt: skip
        for name, arr, dt, o in plan:
            view = np.ndarray(arr.shape, dtype=dt, buffer=self.shm.buf, offset=o)
            np.copyto(view, arr, casting="same_kind")
            metas.append([name, dtype_name(dt), list(arr.shape), o])
        return metas, off

    def view(self, dtype: np.dtype, shape: tuple, offset: int) -> np.ndarray:
        """Return the arena's bytes at ``offset`` as an array (no copy); raise ProtocolError when out of bounds."""
        nbytes = math.prod(shape) * dtype.itemsize
        if not isinstance(offset, int) or offset < 0 or offset + nbytes > self.size:
            raise ProtocolError(f"tensor at offset {offset} of {nbytes} B lies outside the arena of {self.size} B")
        return np.ndarray(shape, dtype=dtype, buffer=self.shm.buf, offset=offset)

    def close(self) -> None:
        """Detach (and unlink when this side created the segment)."""
        shm, self.shm = getattr(self, "shm", None), None
        if shm is None:
            return
        try:
            shm.close()
        except BufferError:  # a view is still alive somewhere: the mapping goes when it does
            pass
        if self.owner:
            try:
                shm.unlink()
            except FileNotFoundError:
                pass


def leftover_arenas() -> list[str]:
    """Return RPC shared-memory arenas still present in /dev/shm (for cleanup checks)."""
    d = "/dev/shm"
    return sorted(f for f in os.listdir(d) if f.startswith(SHM_PREFIX)) if os.path.isdir(d) else []


# ------------------------------------------------------------------------- codecs


def _wire_dtype_of(arr: np.ndarray, wire_dtype: str) -> np.dtype:
    if wire_dtype != "float32" and arr.dtype == np.float32:
        return _DTYPES[wire_dtype]
    return arr.dtype


def _check_meta(name, dtype, shape, max_elems: int) -> tuple[np.dtype, tuple]:
    if not isinstance(name, str):
        raise ProtocolError(f"tensor name must be a string, got {type(name).__name__}")
    dt = _DTYPES.get(dtype) if isinstance(dtype, str) else None
    if dt is None:
        raise ProtocolError(f"tensor {name!r}: dtype {dtype!r} is not one of {TENSOR_DTYPES}")
    if (not isinstance(shape, (list, tuple)) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and d >= 0 for d in shape)):  # fmt: skip
        raise ProtocolError(f"tensor {name!r}: shape {shape!r} must be a list of at most {MAX_DIMS} non-negative ints")
    if math.prod(shape) > max_elems:
        raise PayloadTooLarge(f"tensor {name!r} of shape {tuple(shape)} exceeds the limit of {max_elems} elements")
    return dt, tuple(shape)


def _to_compute(arr: np.ndarray, own: bool) -> np.ndarray:
    """float16 or bfloat16 on the wire -> float32; ``own`` copies views of transient buffers."""
    if arr.dtype in _HALF:
        return arr.astype(np.float32)
    return np.array(arr) if own else arr


def encode(codec: str, header: dict, tensors: dict | None = None, wire_dtype: str = "float32",
           arena: Arena | None = None) -> tuple[list, int]:  # fmt: skip
    """Return (frames, bytes written to shared memory) for a header and named tensors under ``codec``."""
    tensors = tensors or {}
    body = dict(header)
    body["codec"] = codec
    body["wire"] = wire_dtype
    if codec == "msgpack":
        body["tensors"] = [
            {"name": n, "buffer": a.astype(_wire_dtype_of(a, wire_dtype), copy=False).tobytes(),
             "shape": list(a.shape), "dtype": dtype_name(_wire_dtype_of(a, wire_dtype))}
            for n, a in tensors.items()
        ]  # fmt: skip
        return [msgpack.packb(body, use_bin_type=True)], 0
    if codec == "multipart":
        arrays = [np.ascontiguousarray(a.astype(_wire_dtype_of(a, wire_dtype), copy=False)) for a in tensors.values()]
        body["tensors"] = [[n, dtype_name(a.dtype), list(a.shape)] for n, a in zip(tensors, arrays, strict=True)]
        # bfloat16 has no buffer-protocol format: its frames go as the same bytes viewed as uint16
        frames = [a.view(np.uint16) if a.dtype == BFLOAT16 else a for a in arrays]
        return [msgpack.packb(body, use_bin_type=True)] + frames, 0
    if codec == "msgspec":
        metas, frames = [], []
        for n, a in tensors.items():
            a = np.ascontiguousarray(a.astype(_wire_dtype_of(a, wire_dtype), copy=False))
            raw = a.view(np.uint16) if a.dtype == BFLOAT16 else a
            if a.nbytes >= MSGSPEC_INLINE_MAX:
                metas.append([n, dtype_name(a.dtype), list(a.shape), len(frames)])
                frames.append(raw)
            else:
                metas.append([n, dtype_name(a.dtype), list(a.shape), raw.tobytes()])
        body["tensors"] = metas
        head = bytearray(b"\xc1")
        _msgspec()[0].encode_into(body, head, 1)
        return [head, *frames], 0
    if codec == "shm":
        if arena is None:
            raise ProtocolError("the shm codec needs a shared-memory arena (call Init with one first)")
        body["tensors"], written = arena.write(tensors, wire_dtype)
        return [msgpack.packb(body, use_bin_type=True)], written
    raise ProtocolError(f"unknown codec {codec!r}; codecs are {', '.join(CODECS)}")


_MSGSPEC: list = []


def _msgspec() -> list:
    """Return (encoder, decoder) of msgspec's msgpack, made once per process."""
    if not _MSGSPEC:
        import msgspec

        _MSGSPEC.extend([msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()])
    return _MSGSPEC


def decode_header(frame) -> dict:
    """Return the msgpack map of a message's first frame; raise ProtocolError when it is not one.

    A first frame that starts with 0xC1 (the ``msgspec`` codec's mark) is decoded by msgspec, any other by msgpack.
    """
    mv = memoryview(frame)
    try:
        if mv.nbytes and mv[0] == MSGSPEC_MARK:
            body = _msgspec()[1].decode(mv[1:])
        else:
            body = msgpack.unpackb(mv, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack and msgspec raise several types for bad input
        raise ProtocolError(f"the first frame is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"the first frame must be a msgpack map, got {type(body).__name__}")
    return body


def decode(body: dict, frames: list, arena: Arena | None = None, own: bool = False,
           max_elems: int = 1 << 28) -> tuple[dict, int]:  # fmt: skip
    """Return (tensors as float32/int arrays, bytes read from shared memory) of a decoded message.

    ``frames`` are the frames after the first; ``own`` copies tensors that would
    otherwise be views of the frames or of the arena.
    """
    codec = body.get("codec")
    metas = body.get("tensors", [])
    if not isinstance(metas, list):
        raise ProtocolError("'tensors' must be a list")
    out: dict = {}
    shm_bytes = 0
    if codec == "msgpack":
        if frames:
            raise ProtocolError(f"a msgpack message is one frame, got {1 + len(frames)}")
        for t in metas:
            if not isinstance(t, dict) or not {"name", "buffer", "shape", "dtype"} <= set(t):
                raise ProtocolError("a msgpack tensor needs name, buffer, shape and dtype")
            dt, shape = _check_meta(t["name"], t["dtype"], t["shape"], max_elems)
            buf = t["buffer"]
            if not isinstance(buf, bytes) or len(buf) != math.prod(shape) * dt.itemsize:
                raise ProtocolError(f"tensor {t['name']!r}: buffer size does not match shape {shape} of {dt.name}")
            out[t["name"]] = _to_compute(np.frombuffer(buf, dtype=dt).reshape(shape), False)
    elif codec == "multipart":
        if len(frames) != len(metas):
            raise ProtocolError(f"{len(metas)} tensors announced but {len(frames)} data frames sent")
        for t, f in zip(metas, frames, strict=True):
            if not isinstance(t, list) or len(t) != 3:
                raise ProtocolError("a multipart tensor is [name, dtype, shape]")
            dt, shape = _check_meta(t[0], t[1], t[2], max_elems)
            buf = memoryview(f)
            if buf.nbytes != math.prod(shape) * dt.itemsize:
                raise ProtocolError(f"tensor {t[0]!r}: frame of {buf.nbytes} B does not match shape {shape} of {dt.name}")
            out[t[0]] = _to_compute(np.frombuffer(buf, dtype=dt).reshape(shape), own)
    elif codec == "msgspec":
        for t in metas:
            if not isinstance(t, list) or len(t) != 4:
                raise ProtocolError("a msgspec tensor is [name, dtype, shape, frame index or inline bytes]")
            dt, shape = _check_meta(t[0], t[1], t[2], max_elems)
            where = t[3]
            if isinstance(where, int) and not isinstance(where, bool):
                if not 0 <= where < len(frames):
                    raise ProtocolError(f"tensor {t[0]!r} names frame {where}, but {len(frames)} data frames were sent")
                buf, inline = memoryview(frames[where]), False
            elif isinstance(where, bytes):
                buf, inline = memoryview(where), True
            else:
                raise ProtocolError(f"tensor {t[0]!r}: data must be a frame index or bytes, got {type(where).__name__}")
            if buf.nbytes != math.prod(shape) * dt.itemsize:
                raise ProtocolError(f"tensor {t[0]!r}: {buf.nbytes} B do not match shape {shape} of {dt.name}")
            out[t[0]] = _to_compute(np.frombuffer(buf, dtype=dt).reshape(shape), own and not inline)
        used = {t[3] for t in metas if isinstance(t[3], int)}
        if used != set(range(len(frames))):
            raise ProtocolError(f"{len(frames)} data frames sent, but the tensors use frames {sorted(used)}")
    elif codec == "shm":
        if arena is None:
            raise ProtocolError("a shm message arrived but no shared-memory arena is attached (call Init with one)")
        if frames:
            raise ProtocolError(f"a shm message is one frame, got {1 + len(frames)}")
        for t in metas:
            if not isinstance(t, list) or len(t) != 4:
                raise ProtocolError("a shm tensor is [name, dtype, shape, offset]")
            dt, shape = _check_meta(t[0], t[1], t[2], max_elems)
            view = arena.view(dt, shape, t[3])
            shm_bytes += view.nbytes
            out[t[0]] = _to_compute(view, own)
    else:
        raise ProtocolError(f"unknown codec {codec!r}; codecs are {', '.join(CODECS)}")
    return out, shm_bytes


def error_frames(req_id, kind: str, message: str) -> list:
    """Return the frames of an error reply (always msgpack, no tensors)."""
    return [msgpack.packb({"codec": "msgpack", "wire": "float32", "id": req_id, "ok": False,
                           "error": {"type": kind, "message": message}}, use_bin_type=True)]  # fmt: skip


def frames_nbytes(frames) -> int:
    """Return the total size of frames in bytes."""
    return sum(memoryview(f).nbytes for f in frames)
