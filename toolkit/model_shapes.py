"""Transformer shapes of the models wattlas simulates: enough to size FLOPs, weights and KV cache.

Shared by the simulated profiler (``collectors.profiling.sim_profile``) and the replay's memory
planner (``replay.memory_planner``), which must not import collectors.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """A transformer's shape: layers, hidden size, attention and KV heads, FFN width, vocabulary."""
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int

    @property
    def head_dim(self) -> int:
        """Dimension of one attention head (hidden / heads)."""
        return self.hidden // self.heads

    @property
    def params(self) -> float:
        """Parameter count of the whole model (embeddings, attention, gated MLP, LM head)."""
        attn = self.hidden * (self.hidden + 2 * self.kv_heads * self.head_dim) + self.hidden * self.hidden
        mlp = 3 * self.hidden * self.ffn
        return self.layers * (attn + mlp) + 2 * self.vocab * self.hidden


PRESETS = {
    "llama3-8b": ModelShape("llama3-8b", 32, 4096, 32, 8, 14336, 128256),
    "llama2-70b": ModelShape("llama2-70b", 80, 8192, 64, 8, 28672, 32000),
    "tiny": ModelShape("tiny", 2, 256, 4, 2, 688, 1000),
}
