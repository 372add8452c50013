"""The profiling workload: a Llama-shaped transformer shard with random weights (PyTorch, optional).

No weights are downloaded: every tensor is random, which is all that latency and power need.
One *iteration* is a model step over

* a prefill chunk of ``c`` tokens attending to a KV prefix of ``p`` tokens,
* ``b`` decode sequences each attending to ``k`` cached tokens,
* or both at once (a Sarathi/Mnemosyne mixed batch: linear layers run on the c + b tokens together).

``tp`` shards the model as one tensor-parallel rank would hold it (heads and FFN divided by tp);
the all-reduces between ranks are not executed (a single GPU is profiled).  Attention uses
``scaled_dot_product_attention`` with grouped KV heads; the chunk attends to prefix and chunk
without the intra-chunk causal mask (the mask changes at most c^2/2 of the c*(p+c) score work,
and avoids a c x (p+c) mask tensor at million-token prefixes).  KV tensors are allocated per
point; a point whose KV does not fit in memory is reported as skipped, not run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .sim_profile import PRESETS, ModelShape


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError("the GPU workload needs PyTorch: pip install 'wattlas[gpu]'") from exc
    return torch


@dataclass
class ShardShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int

    @classmethod
    def of(cls, shape: ModelShape, tp: int) -> "ShardShape":
        if shape.heads % tp or shape.kv_heads % tp and shape.kv_heads >= tp or shape.ffn % tp:
            raise ValueError(f"{shape.name} does not shard evenly over tp={tp}")
        return cls(shape.layers, shape.hidden, shape.heads // tp, max(1, shape.kv_heads // tp), shape.head_dim, shape.ffn // tp)

    def kv_bytes(self, tokens: int, dtype_bytes: int) -> int:
        return 2 * self.layers * tokens * self.kv_heads * self.head_dim * dtype_bytes


class LlamaShard:
    def __init__(self, preset: str = "llama3-8b", tp: int = 1, device: str = "cuda", dtype: str = "bfloat16",
                 seed: int = 0, layers: int | None = None) -> None:
        torch = _torch()
        self.torch = torch
        self.shape = ShardShape.of(PRESETS[preset], tp)
        if layers is not None:
            self.shape.layers = layers
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        s = self.shape
        q_out = s.heads * s.head_dim
        kv_out = s.kv_heads * s.head_dim

        def weight(rows, cols):
            return (torch.randn(rows, cols, generator=gen) / math.sqrt(rows)).to(self.device, self.dtype)

        self.layers = [{
            "norm1": torch.ones(s.hidden, device=self.device, dtype=self.dtype),
            "qkv": weight(s.hidden, q_out + 2 * kv_out),
            "o": weight(q_out, s.hidden),
            "norm2": torch.ones(s.hidden, device=self.device, dtype=self.dtype),
            "gate_up": weight(s.hidden, 2 * s.ffn),
            "down": weight(s.ffn, s.hidden),
        } for _ in range(s.layers)]

    # ------------------------------------------------------------------ pieces
    def _rms(self, x, w):
        return x * self.torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * w

    def _attention(self, q, k, v):
        return self.torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    def kv_fits(self, tokens: int, headroom: float = 0.9) -> bool:
        need = self.shape.kv_bytes(tokens, self.torch.finfo(self.dtype).bits // 8)
        if self.device.type != "cuda":
            return need < 8 * 2**30  # keep CPU runs small
        free, _ = self.torch.cuda.mem_get_info(self.device)
        return need < free * headroom

    def make_kv(self, batch: int, tokens: int):
        s, torch = self.shape, self.torch
        return [(torch.randn(batch, s.kv_heads, tokens, s.head_dim, device=self.device, dtype=self.dtype),
                 torch.randn(batch, s.kv_heads, tokens, s.head_dim, device=self.device, dtype=self.dtype))
                for _ in range(s.layers)]

    # ------------------------------------------------------------------ one iteration
    def step(self, c: int, prefix_kv, b: int, decode_kv) -> None:
        """One model iteration: a chunk of c tokens (after ``prefix_kv``) and/or b decodes (``decode_kv``)."""
        torch, s = self.torch, self.shape
        x = torch.randn(c + b, s.hidden, device=self.device, dtype=self.dtype)
        q_out, kv_out = s.heads * s.head_dim, s.kv_heads * s.head_dim
        for i, layer in enumerate(self.layers):
            h = self._rms(x, layer["norm1"]) @ layer["qkv"]
            q, k_new, v_new = h.split([q_out, kv_out, kv_out], dim=-1)
            outs = []
            if c:
                qc = q[:c].view(1, c, s.heads, s.head_dim).transpose(1, 2)
                kc = k_new[:c].view(1, c, s.kv_heads, s.head_dim).transpose(1, 2)
                vc = v_new[:c].view(1, c, s.kv_heads, s.head_dim).transpose(1, 2)
                if prefix_kv is not None:
                    kp, vp = prefix_kv[i]
                    kc, vc = torch.cat([kp, kc], dim=2), torch.cat([vp, vc], dim=2)
                outs.append(self._attention(qc, kc, vc).transpose(1, 2).reshape(c, q_out))
            if b:
                qd = q[c:].view(b, 1, s.heads, s.head_dim).transpose(1, 2)
                kd, vd = decode_kv[i]
                outs.append(self._attention(qd, kd, vd).transpose(1, 2).reshape(b, q_out))
            x = x + torch.cat(outs) @ layer["o"]
            gate, up = (self._rms(x, layer["norm2"]) @ layer["gate_up"]).chunk(2, dim=-1)
            x = x + (torch.nn.functional.silu(gate) * up) @ layer["down"]

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)


def time_iteration(model: LlamaShard, c: int, p: int, b: int, k: int, warmup: int, repeats: int, on_repeat=None):
    """Latencies (s) of ``repeats`` iterations after ``warmup``; None when the KV would not fit."""
    if not model.kv_fits(p + b * k):
        return None
    prefix = model.make_kv(1, p) if c and p else None
    decode = model.make_kv(b, k) if b else None
    for _ in range(warmup):
        model.step(c, prefix, b, decode)
    model.synchronize()
    latencies = []
    for r in range(repeats):
        context = on_repeat(r) if on_repeat else None
        if context is not None:
            context.__enter__()
        start = time.perf_counter()
        model.step(c, prefix, b, decode)
        model.synchronize()
        latencies.append(time.perf_counter() - start)
        if context is not None:
            context.__exit__(None, None, None)
    del prefix, decode
    if model.device.type == "cuda":
        model.torch.cuda.empty_cache()
    return latencies
