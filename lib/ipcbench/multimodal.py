"""A mock of SGLang's multimodal input path and the ways to get it onto every tensor-parallel rank.

The data path (the only mock in the book, and the subject of chapter 3):

* :class:`MultimodalDataItem` (modality, feature array, offsets, pad value) and
  :meth:`MultimodalInputs.from_dict`: filter valid items, then ``set_pad_value()`` on
  each, which calls :func:`hash_feature`: make the array contiguous, copy its bytes
  (``tobytes()``), hash them (SHA-256 like SGLang's ``data_hash``, or xxh3 / BLAKE3),
  and derive the pad value (hash mod 2^30).
* :func:`broadcast_pyobj`: SGLang's broadcast of a Python object over the CPU group:
  pickle on the root, copy the bytes into a byte tensor, broadcast the size, broadcast
  the bytes, copy them out into ``bytes`` and unpickle everywhere else (two collectives,
  two copies; numpy arrays over MPI stand in for torch tensors over gloo). :func:`broadcast_oob`: pickle protocol 5 with the
  large arrays kept out of band and sent with buffer ``Bcast`` (no rank copies them into
  or out of a pickle stream).

The strategies of :func:`process_request` (each rank calls it; every rank returns the
same :class:`MultimodalInputs`):

* ``replicated``: the source's model of "before": every rank already holds the request, no broadcast;
* ``raw_bcast``: before the change: the root broadcasts the raw request, every rank runs ``from_dict``;
* ``object_bcast``: the change: the root runs ``from_dict`` and broadcasts the constructed object;
* ``hashes``: the root hashes, broadcasts the raw request and the pad hashes; the others build
  the object without hashing;
* ``hashes_xxh3``: ``hashes`` with xxh3 in place of SHA-256;
* ``hashes_oob``: ``hashes`` with the raw request's arrays out of band (pickle 5 + buffer ``Bcast``);
* ``hashes_xxh3_oob``: both.

The names are words, not letters: the source's own options are lettered A-D (A roll back,
B asynchronous broadcast, C a cheaper from_dict, D choose by size and TP), so no letter
means two things on one page. ``adaptive`` is the source's option D made concrete: it
picks one of two strategies by payload size and TP degree (:func:`choose_adaptive`).

A request the root cannot use (malformed item) is rejected on every rank alike: the root
broadcasts the error instead of the object, so no rank waits in a collective for a
root that failed.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field

import numpy as np

from .measure import now_ns

HASHES = ("sha256", "xxh3", "blake3")
STRATEGIES = ("replicated", "raw_bcast", "object_bcast", "hashes", "hashes_xxh3", "hashes_oob", "hashes_xxh3_oob")
STRATEGY_LABELS = {
    "replicated": "no broadcast, every rank holds the request and hashes (the source's model of before)",
    "raw_bcast": "broadcast the raw request, every rank hashes (SGLang before the change)",
    "object_bcast": "the root hashes and broadcasts the built object (the change)",
    "hashes": "the root hashes, broadcasts raw request + pad hashes",
    "hashes_xxh3": "hashes, with xxh3",
    "hashes_oob": "hashes, with the arrays out of band",
    "hashes_xxh3_oob": "hashes, with xxh3 and the arrays out of band",
}
# strategy -> (how the request travels, who hashes, hash algorithm)
STRATEGY_SPEC = {
    "replicated": ("none", "every rank", "sha256"),
    "raw_bcast": ("pickle", "every rank", "sha256"),
    "object_bcast": ("pickle", "root, object broadcast", "sha256"),
    "hashes": ("pickle", "root", "sha256"),
    "hashes_xxh3": ("pickle", "root", "xxh3"),
    "hashes_oob": ("oob", "root", "sha256"),
    "hashes_xxh3_oob": ("oob", "root", "xxh3"),
}
OPTIONAL_ARGS = ("im_token_id", "im_start_id", "im_end_id", "video_token_id", "mrope_position_delta")
PAD_MODULUS = 1 << 30
ITEM_KEYS = ("modality", "feature", "offsets")
MODALITIES = ("image", "video", "audio")


class MalformedItemError(ValueError):
    """A multimodal request cannot be used; the message names the item and what is wrong with it."""


# ------------------------------------------------------------------------------- hashing


def data_hash(data, algorithm: str = "sha256") -> int:
    """Return a 64-bit hash of a bytes-like object (SHA-256: first 8 bytes, big-endian, as SGLang's data_hash)."""
    if algorithm == "sha256":
        return int.from_bytes(hashlib.sha256(data).digest()[:8], byteorder="big", signed=False)
    if algorithm == "xxh3":
        import xxhash

        return xxhash.xxh3_64_intdigest(data)
    if algorithm == "blake3":
        from blake3 import blake3

        return int.from_bytes(blake3(data).digest()[:8], byteorder="big", signed=False)
    raise ValueError(f"unknown hash {algorithm!r}: use one of {HASHES}")


def hash_feature(feature: np.ndarray, algorithm: str = "sha256", copy: bool = True) -> int:
    """Return the hash of a feature array's bytes in C order.

    ``copy=True`` is SGLang's path: ``np.ascontiguousarray(f).tobytes()`` then hash (one full copy);
    ``copy=False`` hashes the contiguous array's memory directly (same hash, no copy when already contiguous).
    """
    arr = np.ascontiguousarray(feature)
    data = arr.tobytes() if copy else memoryview(arr.reshape(-1).view(np.uint8))
    return data_hash(data, algorithm)


# ------------------------------------------------------------------------------- objects


@dataclass
class MultimodalDataItem:
    """One multimodal item: modality, feature array, token offsets, and the pad value derived from its hash."""

    modality: str
    feature: np.ndarray | None
    offsets: list = field(default_factory=list)
    hash: int | None = None
    pad_value: int | None = None

    @classmethod
    def from_obj(cls, obj, index: int) -> MultimodalDataItem:
        """Return the item described by a request's dict ``obj``; raise MalformedItemError naming item ``index``."""
        if isinstance(obj, MultimodalDataItem):
            obj = {"modality": obj.modality, "feature": obj.feature, "offsets": obj.offsets}
        if not isinstance(obj, dict):
            raise MalformedItemError(f"item {index}: expected a dict with keys {ITEM_KEYS}, got {type(obj).__name__}")
        missing = [k for k in ITEM_KEYS if k not in obj]
        if missing:
            raise MalformedItemError(f"item {index}: missing key(s) {missing} (an item needs {ITEM_KEYS})")
        if obj["modality"] not in MODALITIES:
            raise MalformedItemError(f"item {index}: modality {obj['modality']!r} is not one of {MODALITIES}")
        f = obj["feature"]
        if f is not None:
            if not isinstance(f, np.ndarray):
                raise MalformedItemError(f"item {index}: feature must be a numpy array, got {type(f).__name__}")
            if f.dtype.kind not in "fiu":
                raise MalformedItemError(
                    f"item {index}: feature dtype {f.dtype} is not numeric (float, int or uint expected)"
                )
        return cls(modality=obj["modality"], feature=f, offsets=list(obj["offsets"]))

    def is_valid(self) -> bool:
        """Return True when the item carries data to hash (SGLang filters the others out)."""
        return self.feature is not None and self.feature.size > 0

    def set_pad_value(self, algorithm: str = "sha256", copy: bool = True) -> None:
        """Hash the feature and derive the pad value (hash mod 2^30), as SGLang's set_pad_value."""
        self.set_hash(hash_feature(self.feature, algorithm, copy))

    def set_hash(self, h: int) -> None:
        """Set the item's hash (computed elsewhere) and the pad value derived from it."""
        self.hash = int(h)
        self.pad_value = self.hash % PAD_MODULUS


@dataclass
class MultimodalInputs:
    """The constructed multimodal inputs of one request: valid items with pad values, plus optional token ids."""

    mm_items: list[MultimodalDataItem]
    im_token_id: int | None = None
    im_start_id: int | None = None
    im_end_id: int | None = None
    video_token_id: int | None = None
    mrope_position_delta: int | None = None

    @staticmethod
    def from_dict(obj: dict, algorithm: str = "sha256", hashes: list[int] | None = None,
                  copy: bool = True) -> MultimodalInputs:  # fmt: skip
        """Return the inputs built from a raw request dict: filter valid items, then hash each (or take ``hashes``).

        Raises MalformedItemError for a request or item that cannot be used (not a dict, no ``mm_items``,
        missing keys, unknown modality, non-numeric feature); items without data are filtered out.
        """
        if not isinstance(obj, dict):
            raise MalformedItemError(f"a request must be a dict, got {type(obj).__name__}")
        if "mm_items" not in obj:
            raise MalformedItemError("the request has no 'mm_items'")
        items = [MultimodalDataItem.from_obj(x, i) for i, x in enumerate(obj["mm_items"])]
        ret = MultimodalInputs(mm_items=[it for it in items if it.is_valid()])
        if hashes is None:
            for item in ret.mm_items:
                item.set_pad_value(algorithm, copy)
        else:
            if len(hashes) != len(ret.mm_items):
                raise MalformedItemError(f"{len(hashes)} hashes for {len(ret.mm_items)} valid items")
            for item, h in zip(ret.mm_items, hashes, strict=True):
                item.set_hash(h)
        for arg in OPTIONAL_ARGS:
            if arg in obj:
                setattr(ret, arg, obj[arg])
        return ret

    def hashes(self) -> list[int]:
        """Return the items' hashes in order."""
        return [it.hash for it in self.mm_items]

    def feature_bytes(self) -> int:
        """Return the bytes of all feature arrays."""
        return int(sum(it.feature.nbytes for it in self.mm_items))

    def fingerprint(self, algorithm: str = "sha256") -> tuple:
        """Return a small summary that two ranks can compare: per item modality, offsets, pad value, shape, dtype,
        and a hash of the feature's content (so equal fingerprints mean equal features)."""
        return tuple(
            (it.modality, tuple(map(tuple, it.offsets)), it.pad_value, it.hash, it.feature.shape, str(it.feature.dtype),
             hash_feature(it.feature, algorithm, copy=False))  # fmt: skip
            for it in self.mm_items
        ) + tuple(getattr(self, a) for a in OPTIONAL_ARGS)


# ----------------------------------------------------------------------------- requests


def patches_for(nbytes: int, patch_dim: int = 1176) -> int:
    """Return how many float32 patches of ``patch_dim`` values make about ``nbytes`` of features (at least 1)."""
    return max(1, round(nbytes / (patch_dim * 4)))


def make_request(feature_bytes: int, modality: str = "image", seed: int = 0, items: int = 1,
                 patch_dim: int = 1176, input_ids: int = 256) -> dict:  # fmt: skip
    """Return a raw request dict like the tokenizer's: ``items`` float32 features of ``[patches, patch_dim]``
    (Qwen2-VL's pixel-values layout) totalling about ``feature_bytes``, offsets, token ids."""
    rng = np.random.default_rng(seed)
    per = patches_for(feature_bytes / items, patch_dim)
    mm_items = []
    for k in range(items):
        f = rng.random((per, patch_dim), dtype=np.float32)
        mm_items.append({"modality": modality, "feature": f, "offsets": [(16 + k * per, 16 + (k + 1) * per)]})
    return {"mm_items": mm_items, "input_ids": list(range(input_ids)), "im_token_id": 151655,
            "im_start_id": 151652, "im_end_id": 151653}  # fmt: skip


# ----------------------------------------------------------------------------- broadcasts


@dataclass
class _Failure:
    """What the root broadcasts instead of an object when it could not build one."""

    message: str


def _tick(timings: dict | None, key: str, t0: int) -> int:
    t = now_ns()
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + (t - t0) * 1e-9
    return t


def broadcast_pyobj(comm, obj=None, root: int = 0, timings: dict | None = None):
    """Return ``obj`` from ``root`` on every rank, as SGLang's broadcast_pyobj: pickle, copy the bytes into a byte
    tensor, Bcast the size, Bcast the bytes, copy them back out into ``bytes``, unpickle.

    SGLang's root builds ``torch.ByteTensor(np.frombuffer(data, dtype=np.uint8))`` (a copy of the pickled bytes) and
    every receiver turns the received tensor back into ``bytes(tensor.cpu().numpy())`` (a second copy) before
    ``pickle.loads``. The mock makes both copies, with numpy arrays in place of the tensors (:func:`to_tensor`,
    :func:`from_tensor`). ``timings`` (optional dict) gets ``pickle``, ``to_tensor``, ``bcast``, ``from_tensor`` and
    ``unpickle`` seconds added. An object the root cannot pickle arrives everywhere (root included) as a failure
    that :func:`process_request` raises."""
    from mpi4py import MPI

    t = now_ns()
    if comm.rank == root:
        try:
            data = pickle.dumps(obj)
        except Exception as e:  # noqa: BLE001 - any pickling error: tell the other ranks instead of leaving them waiting
            obj = _Failure(f"the root cannot pickle the request: {type(e).__name__}: {e}")
            data = pickle.dumps(obj)
        t = _tick(timings, "pickle", t)
        tensor = to_tensor(data)
        t = _tick(timings, "to_tensor", t)
        size = np.array([len(data)], dtype=np.int64)
        comm.Bcast([size, MPI.INT64_T], root=root)
        comm.Bcast([tensor, MPI.BYTE], root=root)
        _tick(timings, "bcast", t)
        return obj
    size = np.empty(1, dtype=np.int64)
    comm.Bcast([size, MPI.INT64_T], root=root)
    buf = np.empty(int(size[0]), dtype=np.uint8)
    comm.Bcast([buf, MPI.BYTE], root=root)
    t = _tick(timings, "bcast", t)
    data = from_tensor(buf)
    t = _tick(timings, "from_tensor", t)
    out = pickle.loads(data)
    _tick(timings, "unpickle", t)
    return out


def to_tensor(data: bytes) -> np.ndarray:
    """Return the pickled bytes copied into a new uint8 array, as SGLang's ``torch.ByteTensor(np.frombuffer(...))``."""
    return np.frombuffer(data, dtype=np.uint8).copy()


def from_tensor(buf: np.ndarray) -> bytes:
    """Return a received uint8 array copied out into ``bytes``, as SGLang's ``bytes(tensor.cpu().numpy())``."""
    return bytes(buf)


def broadcast_oob(comm, obj=None, root: int = 0, timings: dict | None = None):
    """Return ``obj`` from ``root`` on every rank with pickle protocol 5, its large buffers out of band: a small
    header (``bcast``), the pickle stream and then each buffer with buffer ``Bcast``; receivers rebuild the arrays
    on the received buffers (no copy into or out of the pickle stream). Timings as :func:`broadcast_pyobj`."""
    from mpi4py import MPI

    t = now_ns()
    if comm.rank == root:
        buffers: list = []
        try:
            meta = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        except Exception as e:  # noqa: BLE001 - as in broadcast_pyobj
            obj, buffers = _Failure(f"the root cannot pickle the request: {type(e).__name__}: {e}"), []
            meta = pickle.dumps(obj, protocol=5)
        raws = [b.raw() for b in buffers]
        t = _tick(timings, "pickle", t)
        comm.bcast((len(meta), [r.nbytes for r in raws]), root=root)
        comm.Bcast([np.frombuffer(meta, dtype=np.uint8), MPI.BYTE], root=root)
        for r in raws:
            comm.Bcast([r, MPI.BYTE], root=root)
        _tick(timings, "bcast", t)
        return obj
    meta_len, sizes = comm.bcast(None, root=root)
    meta = np.empty(meta_len, dtype=np.uint8)
    comm.Bcast([meta, MPI.BYTE], root=root)
    bufs = [np.empty(n, dtype=np.uint8) for n in sizes]
    for b in bufs:
        comm.Bcast([b, MPI.BYTE], root=root)
    t = _tick(timings, "bcast", t)
    out = pickle.loads(meta, buffers=bufs)
    _tick(timings, "unpickle", t)
    return out


def _from_dict_timed(raw, algorithm: str, timings: dict | None, hashes=None) -> MultimodalInputs:
    t = now_ns()
    mm = MultimodalInputs.from_dict(raw, algorithm, hashes=hashes)
    _tick(timings, "from_dict" if hashes is None else "build", t)
    return mm


def _root_build(raw, algorithm: str, timings: dict | None):
    """Run from_dict on the root; return the inputs or a _Failure to broadcast."""
    try:
        return _from_dict_timed(raw, algorithm, timings)
    except MalformedItemError as e:
        return _Failure(str(e))


def _raise_if_failed(x):
    if isinstance(x, _Failure):
        raise MalformedItemError(x.message)
    return x


def choose_adaptive(feature_bytes: float, tp: int, thresholds: dict) -> str:
    """Return the strategy the source's option D picks for a request: ``object_bcast`` when its features are at
    least the threshold for this TP degree, else ``raw_bcast`` (every rank hashes locally).

    ``thresholds`` maps a TP degree to a size in bytes, or None for "never broadcast the object"; a TP degree not in
    it uses the largest measured degree below it (the smallest measured one if there is none below).
    """
    if not thresholds:
        raise ValueError("the adaptive option needs thresholds from a crossover measurement")
    known = sorted(thresholds)
    below = [t for t in known if t <= tp]
    threshold = thresholds[below[-1] if below else known[0]]
    return "object_bcast" if threshold is not None and feature_bytes >= threshold else "raw_bcast"


def process_request(comm, strategy: str, raw: dict | None = None, root: int = 0,
                    timings: dict | None = None) -> MultimodalInputs:  # fmt: skip
    """Return the request's MultimodalInputs on every rank of ``comm`` under ``strategy`` (see the module doc).

    ``raw`` is needed on the root (and on every rank for ``replicated``). A malformed request raises MalformedItemError on
    every rank alike, after the same collectives, so the ranks stay in step for the next request. ``timings`` gets
    the seconds of each phase this rank ran (``from_dict``, ``build``, ``pickle``, ``bcast``, ``unpickle``).
    """
    if strategy not in STRATEGY_SPEC:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {STRATEGIES}")
    transport, who, algorithm = STRATEGY_SPEC[strategy]
    if strategy == "replicated":
        return _from_dict_timed(raw, algorithm, timings)
    if strategy == "raw_bcast":
        raw = _raise_if_failed(broadcast_pyobj(comm, raw if comm.rank == root else None, root, timings))
        return _from_dict_timed(raw, algorithm, timings)
    if strategy == "object_bcast":
        built = _root_build(raw, algorithm, timings) if comm.rank == root else None
        return _raise_if_failed(broadcast_pyobj(comm, built, root, timings))
    # hashes*: the root hashes; the raw request and the hashes travel
    send = broadcast_oob if transport == "oob" else broadcast_pyobj
    if comm.rank == root:
        built = _root_build(raw, algorithm, timings)
        msg = built if isinstance(built, _Failure) else (raw, built.hashes())
        _raise_if_failed(send(comm, msg, root, timings))
        return _raise_if_failed(built)
    msg = _raise_if_failed(send(comm, None, root, timings))
    raw, hashes = msg
    return _from_dict_timed(raw, algorithm, timings, hashes=hashes)
