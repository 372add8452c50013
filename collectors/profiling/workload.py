"""The profiling workload: a Llama-shaped transformer shard with random weights (PyTorch, optional).

No weights are downloaded: every tensor is random, which is all that latency and power need.
One *iteration* is a model step over

* a prefill chunk of ``c`` tokens attending to a KV prefix of ``p`` tokens,
* ``b`` decode sequences each attending to ``k`` cached tokens,
* or both at once (a Sarathi/Mnemosyne mixed batch: linear layers run on the c + b tokens together),

followed by the LM head on the tokens that sample (the chunk's last token and each decode).

``tp`` shards the model as one tensor-parallel rank would hold it (heads, FFN and vocabulary
divided by tp).  Run alone, one rank's shard is profiled without the all-reduces between ranks;
with ``Collectives`` (one process per rank, see ``tp_ranks``) they are executed.

The KV cache is allocated once per point with room for the iteration's new tokens, and each
layer writes its new K/V into that room in place before attending to the filled prefix - as a
serving engine's cache does.  (Concatenating prefix and chunk instead would copy the whole prefix
every layer and roughly triple the memory traffic at long prefixes.)  Attention uses
``scaled_dot_product_attention`` with grouped KV heads; the chunk attends to prefix and chunk
without the intra-chunk causal mask (the mask changes at most c^2/2 of the c*(p+c) score work,
and avoids a c x (p+c) mask tensor at million-token prefixes).  A point whose KV does not fit in
memory is reported as skipped, not run.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Callable

from .sim_profile import PRESETS, ModelShape


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError("the GPU workload needs PyTorch: pip install 'wattlas[gpu]'") from exc
    return torch


@dataclass(frozen=True)
class ShardShape:
    """One tensor-parallel rank's slice of a model: heads, KV heads and FFN width divided by TP."""
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int

    @classmethod
    def of(cls, shape: ModelShape, tp: int) -> "ShardShape":
        """The shard of ``shape`` one of ``tp`` ranks holds (ValueError if it does not divide evenly)."""
        if shape.heads % tp or shape.kv_heads % tp and shape.kv_heads >= tp or shape.ffn % tp:
            raise ValueError(f"{shape.name} does not shard evenly over tp={tp}")
        return cls(shape.layers, shape.hidden, shape.heads // tp, max(1, shape.kv_heads // tp), shape.head_dim,
                   shape.ffn // tp, math.ceil(shape.vocab / tp))

    def kv_bytes(self, tokens: int, dtype_bytes: int) -> int:
        """Bytes of K and V for ``tokens`` tokens across all layers of the shard."""
        return 2 * self.layers * tokens * self.kv_heads * self.head_dim * dtype_bytes


class Collectives:
    """The torch.distributed calls the TP workload makes (one process per rank, e.g. under torchrun)."""

    def __init__(self, group=None) -> None:
        import torch.distributed as dist

        self.dist, self.group = dist, group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)

    def all_reduce(self, tensor):
        """Sum ``tensor`` over the ranks in place."""
        self.dist.all_reduce(tensor, group=self.group)
        return tensor

    def _reduce_scalar(self, value: float, op) -> float:
        import torch

        tensor = torch.tensor([float(value)], dtype=torch.float64)
        if self.dist.get_backend(self.group) == "nccl":  # NCCL reduces device tensors only
            tensor = tensor.cuda()
        self.dist.all_reduce(tensor, op=op, group=self.group)
        return float(tensor.item())

    def all_agree(self, flag: bool) -> bool:
        """True only if ``flag`` is true on every rank."""
        return self._reduce_scalar(1.0 if flag else 0.0, self.dist.ReduceOp.MIN) == 1.0

    def all_max(self, value: float) -> float:
        """The largest ``value`` over the ranks (so all of them take the same decision from it)."""
        return self._reduce_scalar(value, self.dist.ReduceOp.MAX)

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        holder = [obj]
        self.dist.broadcast_object_list(holder, src=0, group=self.group)
        return holder[0]

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` on rank 0 (None elsewhere)."""
        out = [None] * self.world if self.rank == 0 else None
        self.dist.gather_object(obj, out, dst=0, group=self.group)
        return out


@dataclass
class KvCache:
    """Per-layer K and V of shape (batch, kv_heads, filled + room, head_dim); ``filled`` tokens are valid."""

    layers: list
    filled: int


def shard_label(preset: str, layers: int | None) -> str:
    """The model name profile rows carry: a shard with fewer layers than the preset is another model."""
    full = PRESETS[preset].layers
    return preset if layers is None or layers == full else f"{preset}[{layers}/{full} layers]"


class LlamaShard:
    """A Llama-shaped transformer shard with random weights and a preallocated KV cache, run as a serving engine's iterations."""
    def __init__(self, preset: str = "llama3-8b", tp: int = 1, device: str = "cuda", dtype: str = "bfloat16",
                 seed: int = 0, layers: int | None = None, collectives: "Collectives | None" = None) -> None:
        torch = _torch()
        self.torch = torch
        # With collectives (one process per TP rank, torch.distributed) the partial outputs of the
        # attention and MLP blocks are all-reduced as in Megatron-style TP; without, one rank's
        # shard runs alone and the communication is left out.
        self.collectives = collectives
        self.preset, self.tp, self.dtype_name = preset, tp, dtype
        full = ShardShape.of(PRESETS[preset], tp)
        self.shape = full if layers is None else replace(full, layers=layers)
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        # Random numbers are drawn on the device: drawing 8 B weights on the CPU takes minutes.
        gen = torch.Generator(device=self.device).manual_seed(seed)
        s = self.shape
        q_out = s.heads * s.head_dim
        kv_out = s.kv_heads * s.head_dim

        def weight(rows, cols):
            return torch.randn(rows, cols, generator=gen, device=self.device, dtype=self.dtype) / math.sqrt(rows)

        def ones():
            return torch.ones(s.hidden, device=self.device, dtype=self.dtype)

        self.layers = [{
            "norm1": ones(), "qkv": weight(s.hidden, q_out + 2 * kv_out), "o": weight(q_out, s.hidden),
            "norm2": ones(), "gate_up": weight(s.hidden, 2 * s.ffn), "down": weight(s.ffn, s.hidden),
        } for _ in range(s.layers)]
        self.final_norm = ones()
        self.lm_head = weight(s.hidden, s.vocab)

    @property
    def label(self) -> str:
        """The model's name in rows; a run of fewer layers than the preset says so (llama3-8b[8/32 layers])."""
        return shard_label(self.preset, self.shape.layers)

    # ------------------------------------------------------------------ pieces
    def _rms(self, x, w):
        return x * self.torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * w

    def _attention(self, q, k, v):
        return self.torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    def kv_fits(self, tokens: int, headroom: float = 0.9) -> bool:
        """Whether the KV fits here - and, across TP ranks, on every rank (all must run or skip a point
        together, or the others would wait in an all-reduce forever)."""
        need = self.shape.kv_bytes(tokens, self.torch.finfo(self.dtype).bits // 8)
        if self.device.type != "cuda":
            fits = need < 8 * 2**30  # keep CPU runs small
        else:
            free, _ = self.torch.cuda.mem_get_info(self.device)
            fits = need < free * headroom
        return fits if self.collectives is None else self.collectives.all_agree(fits)

    def make_kv(self, batch: int, filled: int, room: int) -> KvCache:
        """A cache of ``filled`` random tokens per sequence with ``room`` free slots after them."""
        s, torch = self.shape, self.torch
        shape = (batch, s.kv_heads, filled + room, s.head_dim)
        return KvCache([(torch.randn(shape, device=self.device, dtype=self.dtype),
                         torch.randn(shape, device=self.device, dtype=self.dtype)) for _ in range(s.layers)], filled)

    # ------------------------------------------------------------------ one iteration
    def step(self, c: int, prefix: KvCache | None, b: int, decode: KvCache | None):
        """One model iteration: a chunk of c tokens (after ``prefix``) and/or b decodes (against ``decode``).

        New K/V go into the caches' free room, which is overwritten by every repeat: the cache
        length stays fixed so that repeats of one point measure the same work.
        """
        torch, s = self.torch, self.shape
        x = torch.randn(c + b, s.hidden, device=self.device, dtype=self.dtype)
        q_out, kv_out = s.heads * s.head_dim, s.kv_heads * s.head_dim
        p = prefix.filled if prefix is not None else 0
        k = decode.filled if decode is not None else 0
        for i, layer in enumerate(self.layers):
            h = self._rms(x, layer["norm1"]) @ layer["qkv"]
            q, k_new, v_new = h.split([q_out, kv_out, kv_out], dim=-1)
            outs = []
            if c:
                qc = q[:c].view(1, c, s.heads, s.head_dim).transpose(1, 2)
                kc = k_new[:c].view(1, c, s.kv_heads, s.head_dim).transpose(1, 2)
                vc = v_new[:c].view(1, c, s.kv_heads, s.head_dim).transpose(1, 2)
                if prefix is not None:
                    kp, vp = prefix.layers[i]
                    kp[:, :, p:p + c] = kc
                    vp[:, :, p:p + c] = vc
                    kc, vc = kp[:, :, :p + c], vp[:, :, :p + c]
                outs.append(self._attention(qc, kc, vc).transpose(1, 2).reshape(c, q_out))
            if b:
                qd = q[c:].view(b, 1, s.heads, s.head_dim).transpose(1, 2)
                kd, vd = decode.layers[i]
                kd[:, :, k] = k_new[c:].view(b, s.kv_heads, s.head_dim)
                vd[:, :, k] = v_new[c:].view(b, s.kv_heads, s.head_dim)
                outs.append(self._attention(qd, kd[:, :, :k + 1], vd[:, :, :k + 1]).transpose(1, 2).reshape(b, q_out))
            x = x + self._reduce(torch.cat(outs) @ layer["o"])
            gate, up = (self._rms(x, layer["norm2"]) @ layer["gate_up"]).chunk(2, dim=-1)
            x = x + self._reduce((torch.nn.functional.silu(gate) * up) @ layer["down"])
        sampled = x[c - 1:] if c else x  # the chunk's last token and every decode produce logits
        return self._rms(sampled, self.final_norm) @ self.lm_head

    def _reduce(self, partial):
        return partial if self.collectives is None else self.collectives.all_reduce(partial)

    def synchronize(self) -> None:
        """Wait for the device's queued work (timing edges must see finished kernels)."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def release(self) -> None:
        """Free the KV cache and weights (before the next configuration is built)."""
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


@dataclass(frozen=True)
class Repeat:
    """One measured repeat: ``iterations`` back-to-back iterations inside one energy window."""

    latency_s: float  # per iteration: the repeat's wall time / iterations
    iterations: int
    energy: dict  # the window's row for the profiled GPU ({} when no sampler)


def iterations_per_window(estimate_s: float, min_window_s: float) -> int:
    """Back-to-back iterations that fill ``min_window_s`` (NVML's energy counter moves every 20-100 ms,
    so a window much shorter than that reads mostly quantization)."""
    if min_window_s <= 0 or estimate_s <= 0:
        return 1
    return max(1, math.ceil(min_window_s / estimate_s))


def measure_point(model: LlamaShard, c: int, p: int, b: int, k: int, warmup: int, repeats: int,
                  min_window_s: float = 0.0, window=None,
                  timer: Callable[[], float] = time.perf_counter) -> list[Repeat] | None:
    """Measure one (c, p, b, k) point; None when its KV would not fit.

    ``window()`` (optional) returns a context manager that enters as an object whose ``row`` is,
    after exit, the energy row of the repeat it enclosed (see ``profiler``); each repeat runs enough iterations to fill
    ``min_window_s``, estimated from the warm-up iterations.  ``timer`` (seconds) times the
    iterations: latencies, and so the iteration counts sized from them, come from it alone (a test
    passes a clock its fake iterations advance, so that they do not depend on how busy the machine is).
    """
    if not model.kv_fits(p + b * (k + 1) + c):
        return None
    prefix = model.make_kv(1, p, c) if c and p else None
    decode = model.make_kv(b, k, 1) if b else None
    def run(iterations: int) -> float:
        """Seconds per iteration of ``iterations`` back-to-back, synchronized at the end."""
        start = timer()
        for _ in range(iterations):
            model.step(c, prefix, b, decode)
        model.synchronize()
        return (timer() - start) / iterations

    def timed(iterations: int) -> float:
        # TP ranks must run the same number of iterations (each one all-reduces): size from the slowest
        elapsed = run(iterations)
        return elapsed if model.collectives is None else model.collectives.all_max(elapsed)

    try:
        estimate = timed(max(1, warmup))  # at least one: it also sizes the windows
        if min_window_s > 0:
            # warm-up includes first-call costs: refine on a steady-state batch lasting >= 1/4 window
            batch = iterations_per_window(estimate, min_window_s / 4)
            while True:
                estimate = timed(batch)
                if estimate * batch >= min_window_s / 4 or batch >= 1 << 20:
                    break
                batch = max(batch * 2, iterations_per_window(estimate, min_window_s / 4))
        n = iterations_per_window(estimate, min_window_s)
        measured = []
        for _ in range(repeats):
            with window() if window is not None else nullcontext() as recorder:
                latency = run(n)
            measured.append(Repeat(latency, n, recorder.row if recorder is not None else {}))
        return measured
    finally:
        prefix = decode = None  # free the KV before the next point allocates its own
        model.release()
