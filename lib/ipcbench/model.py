"""A small Qwen3-style decoder in numpy float32: the single-process reference.

RMSNorm, rotary position embeddings (RoPE, rotate-half convention), grouped-query
attention with per-head q/k RMSNorm (as in Qwen3) and a KV cache, a SwiGLU MLP, a
tied-free LM head, greedy generation. Weights are random from a seed: the book
measures the cost of moving activations, not the quality of the text.

Linear weights are stored as ``(in_features, out_features)``, so a projection is
``x @ W``. Presets: ``tiny`` (tests) and ``qwen3-0.6b`` (Qwen3-0.6B's shapes:
hidden 1024, intermediate 3072, 16 query heads, 8 KV heads, head dim 128; its 28
layers and 151 936-token vocabulary are cut to what a profile can run, and
:func:`preset` records what was cut).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

DTYPE = np.float32


@dataclass(frozen=True)
class Config:
    """Model shapes; ``cut`` says which of the original sizes were reduced, and from what."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    rope_theta: float = 1_000_000.0
    eps: float = 1e-6
    name: str = "custom"
    cut: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for RoPE")

    def as_dict(self) -> dict:
        """Return the configuration as a plain dict."""
        return asdict(self)

    def parameters(self) -> int:
        """Return the number of weights (floats)."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h + 2 * self.head_dim
        return self.layers * per_layer + 2 * self.vocab * h + h


PRESETS = {
    "tiny": Config(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=16, vocab=256, name="tiny"),
    "qwen3-0.6b": Config(hidden=1024, intermediate=3072, layers=28, heads=16, kv_heads=8, head_dim=128,
                         vocab=151_936, name="qwen3-0.6b"),  # fmt: skip
}


def preset(name: str, layers: int | None = None, vocab: int | None = None) -> Config:
    """Return a preset, optionally with fewer layers or a smaller vocabulary (recorded in ``cut``)."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; presets are {', '.join(PRESETS)}") from None
    cut = {}
    if layers is not None and layers != cfg.layers:
        cut["layers"] = f"{cfg.layers} -> {layers}"
    if vocab is not None and vocab != cfg.vocab:
        cut["vocab"] = f"{cfg.vocab} -> {vocab}"
    return replace(cfg, layers=layers or cfg.layers, vocab=vocab or cfg.vocab, cut=cut)


# ------------------------------------------------------------------------- weights


@dataclass
class Layer:
    """One decoder layer's weights (projections as (in, out))."""

    input_norm: np.ndarray
    q_proj: np.ndarray
    k_proj: np.ndarray
    v_proj: np.ndarray
    o_proj: np.ndarray
    q_norm: np.ndarray
    k_norm: np.ndarray
    post_norm: np.ndarray
    gate_proj: np.ndarray
    up_proj: np.ndarray
    down_proj: np.ndarray


@dataclass
class Weights:
    """All weights of a model."""

    config: Config
    embed: np.ndarray
    layers: list[Layer]
    final_norm: np.ndarray
    lm_head: np.ndarray

    def nbytes(self) -> int:
        """Return the weights' size in bytes."""
        total = self.embed.nbytes + self.final_norm.nbytes + self.lm_head.nbytes
        return total + sum(a.nbytes for layer in self.layers for a in vars(layer).values())


def init_weights(cfg: Config, seed: int = 0) -> Weights:
    """Return random float32 weights for ``cfg`` (scaled 1/sqrt(fan_in)), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)

    def lin(fan_in, fan_out):
        w = rng.standard_normal((fan_in, fan_out), dtype=DTYPE)
        # in place: the same values as (w / sqrt(fan_in)).astype(float32), without a float64 temporary of the whole
        # matrix (most of the time init_weights took)
        return np.divide(w, np.sqrt(fan_in), out=w)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n, dtype=DTYPE)).astype(DTYPE)

    h, i, q, kv = cfg.hidden, cfg.intermediate, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    layers = [
        Layer(norm(h), lin(h, q), lin(h, kv), lin(h, kv), lin(q, h), norm(cfg.head_dim), norm(cfg.head_dim),
              norm(h), lin(h, i), lin(h, i), lin(i, h))  # fmt: skip
        for _ in range(cfg.layers)
    ]
    embed = rng.standard_normal((cfg.vocab, h), dtype=DTYPE)
    return Weights(cfg, embed, layers, norm(h), lin(h, cfg.vocab))


# ------------------------------------------------------------------------ operators


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Return x / sqrt(mean(x^2) + eps) * weight over the last axis (float32)."""
    x32 = x.astype(DTYPE, copy=False)
    inv = 1.0 / np.sqrt(np.mean(x32 * x32, axis=-1, keepdims=True) + DTYPE(eps))
    return (x32 * inv * weight).astype(DTYPE, copy=False)


def rope_tables(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (cos, sin) of shape (len(positions), head_dim) for rotate-half RoPE."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    angles = np.outer(np.asarray(positions, dtype=np.float64), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(DTYPE), np.sin(angles).astype(DTYPE)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate x (..., t, head_dim) by the position tables (t, head_dim)."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos + rotated * sin).astype(DTYPE, copy=False)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Return a numerically stable softmax along ``axis``."""
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def silu(x: np.ndarray) -> np.ndarray:
    """Return x * sigmoid(x)."""
    return x / (1.0 + np.exp(-x))


def swiglu_mlp(x: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    """Return down(silu(x @ gate) * (x @ up))."""
    return ((silu(x @ gate) * (x @ up)) @ down).astype(DTYPE, copy=False)


class KVCache:
    """Keys and values per layer, shape (kv_heads, positions, head_dim), grown as tokens arrive."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.k: list[np.ndarray | None] = [None] * cfg.layers
        self.v: list[np.ndarray | None] = [None] * cfg.layers

    @property
    def length(self) -> int:
        """Return how many positions are cached."""
        return 0 if self.k[0] is None else self.k[0].shape[1]

    def append(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Append new keys/values of a layer; return the layer's full keys and values."""
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k, v
        else:
            self.k[layer] = np.concatenate([self.k[layer], k], axis=1)
            self.v[layer] = np.concatenate([self.v[layer], v], axis=1)
        return self.k[layer], self.v[layer]


def attention_core(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_positions: np.ndarray) -> np.ndarray:
    """Causal grouped-query attention: q (heads, t, d), k/v (kv_heads, s, d) -> (heads, t, d).

    Query position p attends to key positions 0..p (keys are positions 0..s-1).
    """
    heads, kv_heads = q.shape[0], k.shape[0]
    group = heads // kv_heads
    k_rep = np.repeat(k, group, axis=0)
    v_rep = np.repeat(v, group, axis=0)
    scores = (q @ k_rep.transpose(0, 2, 1)) / np.sqrt(DTYPE(q.shape[-1]))
    key_pos = np.arange(k.shape[1])
    mask = key_pos[None, :] > np.asarray(q_positions)[:, None]
    scores = np.where(mask[None], -np.inf, scores)
    return (softmax(scores.astype(np.float32)) @ v_rep).astype(DTYPE, copy=False)


def qkv(x: np.ndarray, layer: Layer, cfg: Config, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return q (heads, t, d), k, v (kv_heads, t, d) for normed input x (t, hidden), with q/k norm and RoPE."""
    t = x.shape[0]
    q = (x @ layer.q_proj).reshape(t, cfg.heads, cfg.head_dim).transpose(1, 0, 2)
    k = (x @ layer.k_proj).reshape(t, cfg.kv_heads, cfg.head_dim).transpose(1, 0, 2)
    v = (x @ layer.v_proj).reshape(t, cfg.kv_heads, cfg.head_dim).transpose(1, 0, 2)
    q = rms_norm(q, layer.q_norm, cfg.eps)
    k = rms_norm(k, layer.k_norm, cfg.eps)
    cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v.astype(DTYPE, copy=False)


def decoder_layer(x: np.ndarray, layer: Layer, cfg: Config, positions: np.ndarray, cache: KVCache | None, index: int) -> np.ndarray:
    """Return one decoder layer's output for hidden states x (t, hidden)."""
    h = rms_norm(x, layer.input_norm, cfg.eps)
    q, k, v = qkv(h, layer, cfg, positions)
    if cache is not None:
        k, v = cache.append(index, k, v)
    attn = attention_core(q, k, v, positions)
    attn = attn.transpose(1, 0, 2).reshape(x.shape[0], cfg.heads * cfg.head_dim)
    x = x + attn @ layer.o_proj
    h = rms_norm(x, layer.post_norm, cfg.eps)
    return (x + swiglu_mlp(h, layer.gate_proj, layer.up_proj, layer.down_proj)).astype(DTYPE, copy=False)


def forward(weights: Weights, tokens, cache: KVCache | None = None) -> np.ndarray:
    """Return logits (t, vocab) for ``tokens``, continuing after the cache's positions when given."""
    cfg = weights.config
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError("tokens must be a non-empty 1-D sequence of ids")
    if tokens.min() < 0 or tokens.max() >= cfg.vocab:
        raise ValueError(f"token ids must be in [0, {cfg.vocab})")
    start = cache.length if cache is not None else 0
    positions = np.arange(start, start + tokens.size)
    x = weights.embed[tokens]
    for i, layer in enumerate(weights.layers):
        x = decoder_layer(x, layer, cfg, positions, cache, i)
    return (rms_norm(x, weights.final_norm, cfg.eps) @ weights.lm_head).astype(DTYPE, copy=False)


def greedy(first_logits: np.ndarray, step, new_tokens: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy decoding: from the prompt's last logits, ``step(token) -> next logits``; return (ids, logits of every step)."""
    logits = first_logits
    out, steps = [], [logits]
    for _ in range(new_tokens):
        nxt = int(np.argmax(logits))
        out.append(nxt)
        if len(out) == new_tokens:
            break
        logits = step(nxt)
        steps.append(logits)
    return out, steps


def generate(weights: Weights, prompt, new_tokens: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy generation with a KV cache: return (generated token ids, the logits row of every step)."""
    cache = KVCache(weights.config)
    return greedy(forward(weights, prompt, cache)[-1], lambda tok: forward(weights, [tok], cache)[-1], new_tokens)
