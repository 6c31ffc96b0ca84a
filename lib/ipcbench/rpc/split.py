"""Split inference: the client runs a decoder whose linear work happens on the RPC server.

Two granularities:

* ``per_op`` (the source's layout, 6 RPCs per layer): ``BatchLinear`` q/k/v,
  ``Matmul`` q k^T, ``Matmul`` p v, ``BatchLinear`` o, ``BatchLinear`` gate/up,
  ``BatchLinear`` down. The client keeps the KV cache and runs the norms, RoPE, the
  causal mask, softmax, SiLU and the residual additions.
* ``fused`` (1 RPC per layer): ``FusedLayer`` runs the whole layer on the server,
  which then holds the KV cache; the client keeps the final norm and sampling. A
  single RPC per layer is only possible by moving the norms, RoPE and softmax to the
  server: the chapter says so where it compares the two.

Both add one ``Embedding`` and one ``LMHead`` call per forward step (the LM head
only for the last position: greedy decoding needs no other).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import model
from ..clock import now_s
from .client import RpcClient

GRANULARITIES = ("per_op", "fused")


@dataclass
class Step:
    """One forward step: its phase, tokens, wall time (s) and the slice of the client's call records it made."""

    index: int
    phase: str
    tokens: int
    wall_s: float
    first_call: int
    calls: int


class SplitDecoder:
    """A Qwen3-style decoder whose weights live on the server behind ``client``."""

    def __init__(self, client: RpcClient, granularity: str = "per_op"):
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; use one of {GRANULARITIES}")
        self.client = client
        self.granularity = granularity
        cfg, self.norms = client.init()
        self.cfg = model.Config(**cfg)
        self.steps: list[Step] = []
        self.reset()

    def rpcs_per_step(self) -> int:
        """Return the RPCs one forward step makes (Embedding + layers + LMHead)."""
        per_layer = 6 if self.granularity == "per_op" else 1
        return per_layer * self.cfg.layers + 2

    # ------------------------------------------------------------------- layers
    def _layer_per_op(self, i: int, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        cfg, c, n = self.cfg, self.client, self.norms
        t = x.shape[0]
        h = model.rms_norm(x, n[f"input_norm.{i}"], cfg.eps)
        q, k, v = c.batch_linear(i, ["q_proj", "k_proj", "v_proj"], h)  # RPC 1
        q = q.reshape(t, cfg.heads, cfg.head_dim).transpose(1, 0, 2)
        k = k.reshape(t, cfg.kv_heads, cfg.head_dim).transpose(1, 0, 2)
        v = v.reshape(t, cfg.kv_heads, cfg.head_dim).transpose(1, 0, 2)
        q = model.rms_norm(q, n[f"q_norm.{i}"], cfg.eps)
        k = model.rms_norm(k, n[f"k_norm.{i}"], cfg.eps)
        cos, sin = model.rope_tables(positions, cfg.head_dim, cfg.rope_theta)
        q, k = model.apply_rope(q, cos, sin), model.apply_rope(k, cos, sin)
        k, v = self._cache.append(i, k, np.ascontiguousarray(v, dtype=model.DTYPE))
        group = cfg.heads // cfg.kv_heads
        s = k.shape[1]
        qg = q.reshape(cfg.kv_heads, group * t, cfg.head_dim)  # query heads of one KV head side by side
        scores = c.matmul(qg, k, transpose_b=True)  # RPC 2: (kv_heads, group*t, s)
        scores = scores.reshape(cfg.heads, t, s) / np.sqrt(model.DTYPE(cfg.head_dim))
        mask = np.arange(s)[None, :] > positions[:, None]
        p = model.softmax(np.where(mask[None], -np.inf, scores).astype(np.float32))
        attn = c.matmul(p.reshape(cfg.kv_heads, group * t, s).astype(model.DTYPE), v)  # RPC 3
        attn = attn.reshape(cfg.heads, t, cfg.head_dim).transpose(1, 0, 2).reshape(t, cfg.heads * cfg.head_dim)
        (o,) = c.batch_linear(i, ["o_proj"], np.ascontiguousarray(attn))  # RPC 4
        x = x + o
        h = model.rms_norm(x, n[f"post_norm.{i}"], cfg.eps)
        g, u = c.batch_linear(i, ["gate_proj", "up_proj"], h)  # RPC 5
        (d,) = c.batch_linear(i, ["down_proj"], (model.silu(g) * u).astype(model.DTYPE))  # RPC 6
        return (x + d).astype(model.DTYPE, copy=False)

    def forward(self, tokens) -> np.ndarray:
        """Run one forward step over ``tokens`` (continuing the sequence); return the last position's logits (vocab,)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError("tokens must be a non-empty 1-D sequence of ids")
        phase = "prefill" if self._pos == 0 else "decode"
        index = len(self.steps)
        self.client.step = index
        first = len(self.client.records)
        t0 = now_s()
        positions = np.arange(self._pos, self._pos + tokens.size)
        x = self.client.embedding(tokens)
        for i in range(self.cfg.layers):
            if self.granularity == "per_op":
                x = self._layer_per_op(i, x, positions)
            else:
                x = self.client.fused_layer(i, x, self._pos)
        last = model.rms_norm(x[-1:], self.norms["final_norm"], self.cfg.eps)
        logits = self.client.lm_head(last)[0]
        wall = now_s() - t0
        self._pos += tokens.size
        self.steps.append(Step(index, phase, int(tokens.size), wall, first, len(self.client.records) - first))
        return logits

    def reset(self) -> None:
        """Start a new sequence (the client's KV cache; the server's resets at the next position 0)."""
        self._cache = model.KVCache(self.cfg)
        self._pos = 0

    def generate(self, prompt, new_tokens: int) -> tuple[list[int], list[np.ndarray]]:
        """Greedy generation: return (new token ids, logits of every step), like ``model.generate``."""
        self.reset()
        return model.greedy(self.forward(prompt), lambda tok: self.forward([tok]), new_tokens)

    def teacher_forced(self, prompt, tokens) -> list[np.ndarray]:
        """Return the logits of every step when the sequence is fed ``tokens`` (the reference's), not its own argmax."""
        self.reset()
        out = [self.forward(prompt)]
        for tok in list(tokens)[:-1]:
            out.append(self.forward([int(tok)]))
        return out
