"""KV-cache capacity of an instance from the model's shape and the GPU's memory (as Vidur's
``utils/memory_planner.py`` and vLLM's profile run size it).

For a model sharded over ``tp`` (tensor parallel) x ``pp`` (pipeline stages) GPUs, one GPU holds

* weights: ``params x dtype_bytes / (tp x pp)``;
* per cached token: ``2 (K and V) x ceil(layers / pp) x max(1, ceil(kv_heads / tp)) x head_dim x
  dtype_bytes`` (with more TP ranks than KV heads, the heads are replicated: one per GPU);
* an activation reserve: ``max_batch_tokens x hidden x ACTIVATION_FACTOR x dtype_bytes``.
  ``ACTIVATION_FACTOR = 16`` counts a few hidden-sized buffers per token in flight (residual,
  norm output, QKV, attention output) plus the gated MLP's intermediate (2 x ffn, about 7 x
  hidden for Llama shapes), not divided by TP: an estimate of vLLM's profiled peak, not a
  measurement (0.5 GiB at 4,096 batch tokens for Llama-3-8B);

out of ``gpu_memory_gib x 2^30 x GPU_MEMORY_UTILIZATION`` (vLLM's default 0.9).  What is left,
divided by the per-token bytes, is the KV capacity (tokens) of one TP x PP group: every token's
layers are spread over the stages, so the group holds each token once.  An instance of ``kvp``
KV-parallel groups holds ``kvp`` times that.  Llama-3-8B in bf16 needs 128 KiB a token: an
80 GiB H100 holds about 0.46 M tokens after its 16 GB of weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.errors import InputError
from toolkit.model_shapes import PRESETS, ModelShape

if TYPE_CHECKING:
    from characterize.model_io import ModelBundle

    from .config import ClusterConfig, PoolConfig

GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization
ACTIVATION_FACTOR = 16  # activation bytes per batch token = hidden x this x dtype_bytes (module docstring)


class DoesNotFit(InputError):
    """A model shard (weights and activations) does not fit the GPU: the message says the bytes."""


def _gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB"


@dataclass(frozen=True)
class MemoryPlan:
    """The memory of one GPU of a ``tp`` x ``pp`` shard of ``shape`` (bytes), and the KV capacity
    (tokens) of one TP x PP group."""

    shape: ModelShape
    tp: int
    pp: int
    gpu_memory_gib: float
    dtype_bytes: int
    max_batch_tokens: int

    @property
    def usable_bytes(self) -> float:
        """What the serving engine may use of one GPU (utilization fraction applied)."""
        return self.gpu_memory_gib * 2**30 * GPU_MEMORY_UTILIZATION

    @property
    def weight_bytes(self) -> float:
        """Weights held by one GPU."""
        return self.shape.params * self.dtype_bytes / (self.tp * self.pp)

    @property
    def activation_bytes(self) -> float:
        """Activation reserve of one GPU (module docstring)."""
        return self.max_batch_tokens * self.shape.hidden * ACTIVATION_FACTOR * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes one GPU holds per cached token."""
        s = self.shape
        return 2 * math.ceil(s.layers / self.pp) * max(1, math.ceil(s.kv_heads / self.tp)) * s.head_dim * self.dtype_bytes

    @property
    def kv_bytes(self) -> float:
        """Bytes left for KV on one GPU (negative: the shard does not fit)."""
        return self.usable_bytes - self.weight_bytes - self.activation_bytes

    def describe(self) -> str:
        """Where the GPU's memory goes, in words."""
        return (f"{self.shape.name} at tp={self.tp}, pp={self.pp}, {self.dtype_bytes}-byte weights/KV on "
                f"{self.gpu_memory_gib:g} GiB GPUs: {_gb(self.usable_bytes)} usable "
                f"(x{GPU_MEMORY_UTILIZATION:g}), {_gb(self.weight_bytes)} weights + {_gb(self.activation_bytes)} "
                f"activations per GPU")

    @property
    def capacity_tokens(self) -> int:
        """KV tokens of one TP x PP group; raises :class:`DoesNotFit` when weights and activations
        alone exceed the usable memory."""
        if self.kv_bytes <= self.kv_bytes_per_token:
            need = self.weight_bytes + self.activation_bytes + self.kv_bytes_per_token
            raise DoesNotFit(None, f"does not fit: {self.describe()} - needs {_gb(need)} per GPU "
                                   f"({need:,.0f} bytes) for one token, {_gb(self.usable_bytes)} usable")
        return int(self.kv_bytes // self.kv_bytes_per_token)

    def context_need(self, tokens: int, kvp: int = 1) -> str:
        """Why ``tokens`` KV tokens do not fit an instance of ``kvp`` groups, with the bytes."""
        per_gpu = math.ceil(tokens / kvp) * self.kv_bytes_per_token
        return (f"needs {_gb(per_gpu)} of KV per GPU ({tokens:,} tokens x {self.kv_bytes_per_token:,} B / {kvp} "
                f"KVP group(s)) + {_gb(self.weight_bytes + self.activation_bytes)} weights and activations; "
                f"{_gb(max(0.0, self.kv_bytes))} free for KV per GPU ({self.describe()})")


def bundle_preset(bundle: ModelBundle | None) -> str | None:
    """The preset a bundle's metadata names as its model (``model``: a name, or a list of one
    name), or None."""
    if bundle is None:
        return None
    model = bundle.metadata.get("model")
    if isinstance(model, (list, tuple)) and len(model) == 1:
        model = model[0]
    return model if isinstance(model, str) and model in PRESETS else None


def plan_for(pool: PoolConfig, shape_name: str) -> MemoryPlan:
    """The memory plan of one GPU of ``pool``'s instances for the preset ``shape_name``."""
    return MemoryPlan(PRESETS[shape_name], pool.tp, pool.pp, pool.gpu_memory_gib, pool.dtype_bytes, pool.max_batch_tokens)


@dataclass(frozen=True)
class KvCapacity:
    """What one pool's instances hold: ``tokens`` per TP x PP group, how it was decided
    (``source``), and the memory plan when it was derived (or a shape was named)."""

    tokens: int
    source: str
    plan: MemoryPlan | None = None


def pool_kv_capacity(pool: PoolConfig, bundle: ModelBundle | None, index: int = 0,
                     source: str | Path | None = None) -> KvCapacity:
    """The KV capacity of ``pool`` (the ``index``-th pool of a cluster file ``source``): its
    ``kv_capacity_tokens`` when set ("toml"), else derived from ``model_shape`` (or the bundle's
    model when it names a preset) and ``gpu_memory_gib``.  An InputError naming
    ``pool[index].model_shape`` when there is no shape to derive from, or the shard does not fit."""
    key = f"pool[{index}]"
    shape = pool.model_shape or bundle_preset(bundle)
    plan = plan_for(pool, shape) if shape else None
    if pool.kv_capacity_tokens is not None:
        return KvCapacity(int(pool.kv_capacity_tokens), "toml", plan)
    if plan is None:
        named = bundle.metadata.get("model") if bundle is not None else None
        raise InputError(source, f"missing: kv_capacity_tokens is not set, so the KV capacity is derived from the "
                                 f"model shape, and the model bundle names no preset (its model: {named!r}); set "
                                 f"model_shape to one of {', '.join(PRESETS)} or set kv_capacity_tokens",
                         key=f"{key}.model_shape")
    try:
        tokens = plan.capacity_tokens
    except DoesNotFit as exc:
        raise DoesNotFit(source, exc.message if hasattr(exc, "message") else str(exc), key=f"{key}.model_shape") from None
    return KvCapacity(tokens, f"derived from {shape} on {pool.gpu_memory_gib:g} GiB", plan)


def resolve_cluster(config: ClusterConfig, bundle: ModelBundle | None, source: str | Path | None = None,
                    bundles: dict | None = None) -> ClusterConfig:
    """``config`` with every pool's ``kv_capacity_tokens`` decided and ``kv_capacity_source`` saying
    how (see :func:`pool_kv_capacity`; a pool with its own ``models`` is judged by that bundle,
    from ``bundles`` by path when given).  Pools already resolved are kept; ``config`` is not changed."""
    pools = []
    for i, pool in enumerate(config.pools):
        if pool.kv_capacity_source is not None and pool.kv_capacity_tokens is not None:
            pools.append(pool)
            continue
        own = bundle
        if pool.models:
            own = (bundles or {}).get(pool.models)
            if own is None:
                from characterize.model_io import ModelBundle

                own = ModelBundle.load(pool.models)
        kv = pool_kv_capacity(pool, own, i, source)
        pools.append(replace(pool, kv_capacity_tokens=kv.tokens, kv_capacity_source=kv.source))
    return replace(config, pools=pools)


def pool_plan(pool: PoolConfig, bundle: ModelBundle | None) -> MemoryPlan | None:
    """The memory plan of ``pool`` when a shape is known (its ``model_shape`` or the bundle's), else None."""
    shape = pool.model_shape or bundle_preset(bundle)
    return plan_for(pool, shape) if shape else None
