"""Codecs: turn a Python object into a list of frames (buffers) and back.

A codec chooses the bytes; a backend (``ipcbench.backends``) moves them. Frames are
anything that exposes the buffer protocol (bytes, memoryview, numpy arrays), so a
backend may hand a reader views into its own memory (zero-copy) and the codec
decodes from them without another copy where the format allows it.

* ``pickle4`` / ``pickle5``: one in-band pickle stream (arrays are copied into it);
* ``pickle5_oob``: pickle protocol 5 with out-of-band buffers: a small stream plus
  one frame per contiguous array, which is never copied into the stream;
* ``msgpack``: the record payload only (lists of dicts of scalars and short lists);
* ``raw``: numpy arrays only (structured arrays included): a small header (dtype,
  shape) and the array's memory.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
import numpy as np


class CodecError(TypeError):
    """The codec cannot encode this kind of object (or the frames are not its format)."""


@dataclass(frozen=True)
class Codec:
    """A named pair of encode(obj) -> frames and decode(frames) -> obj."""

    name: str
    encode: Callable[[object], list]
    decode: Callable[[list], object]
    zero_copy: bool
    description: str


def _pickle(protocol: int) -> Codec:
    def encode(obj):
        return [pickle.dumps(obj, protocol=protocol)]

    def decode(frames):
        return pickle.loads(frames[0])

    return Codec(f"pickle{protocol}", encode, decode, False, f"pickle protocol {protocol}, one in-band stream")


def _oob_encode(obj) -> list:
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [head] + [b.raw() for b in buffers]


def _oob_decode(frames) -> object:
    return pickle.loads(frames[0], buffers=frames[1:])


def _msgpack_encode(obj) -> list:
    if isinstance(obj, np.ndarray):
        raise CodecError("msgpack carries the record payload only; use raw or pickle5_oob for arrays")
    return [msgpack.packb(obj, use_bin_type=True)]


def _msgpack_decode(frames) -> object:
    return msgpack.unpackb(frames[0], raw=False, strict_map_key=False)


def _raw_encode(obj) -> list:
    if not isinstance(obj, np.ndarray):
        raise CodecError(f"raw carries numpy arrays only, not {type(obj).__name__}")
    if obj.dtype.hasobject:
        raise CodecError("raw cannot carry an array of Python objects (its memory holds pointers)")
    arr = np.ascontiguousarray(obj)
    # a plain dtype as its short string ('<f4'); a structured one as its field list, which the short string ('|V48') loses
    dtype = repr(np.lib.format.dtype_to_descr(arr.dtype)) if arr.dtype.names else arr.dtype.str
    header = f"{dtype};{','.join(map(str, arr.shape))}".encode()
    return [header, memoryview(arr).cast("B")]


def _raw_dtype(text: str) -> np.dtype:
    if not text.startswith("["):
        return np.dtype(text)
    import ast

    return np.lib.format.descr_to_dtype(ast.literal_eval(text))


def _raw_decode(frames) -> np.ndarray:
    dtype, shape = bytes(frames[0]).decode().rsplit(";", 1)
    dims = tuple(int(d) for d in shape.split(",") if d)
    return np.frombuffer(frames[1], dtype=_raw_dtype(dtype)).reshape(dims)


CODECS: dict[str, Codec] = {
    "pickle4": _pickle(4),
    "pickle5": _pickle(5),
    "pickle5_oob": Codec("pickle5_oob", _oob_encode, _oob_decode, True, "pickle 5, arrays as out-of-band buffers"),
    "msgpack": Codec("msgpack", _msgpack_encode, _msgpack_decode, False, "msgpack (records only)"),
    "raw": Codec("raw", _raw_encode, _raw_decode, True, "numpy header + the array's memory (arrays only)"),
}


def get(name: str) -> Codec:
    """Return the codec called ``name``."""
    try:
        return CODECS[name]
    except KeyError:
        raise KeyError(f"unknown codec {name!r}; codecs are {', '.join(CODECS)}") from None


def frames_nbytes(frames) -> int:
    """Return the total size of the frames in bytes."""
    return sum(memoryview(f).nbytes for f in frames)


def supports(codec: str, payload_kind: str) -> bool:
    """Return whether a codec can carry a payload kind ('records', 'array' or 'structured': records as one numpy
    structured array)."""
    if codec == "msgpack":
        return payload_kind == "records"
    if codec == "raw":
        return payload_kind in ("array", "structured")
    return True
