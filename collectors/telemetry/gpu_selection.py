"""Which GPUs a collector watches: ``--gpus`` (indices or UUIDs) and ``CUDA_VISIBLE_DEVICES``.

As in Zeus, indices are the ones the user's framework sees: positions among the GPUs that
``CUDA_VISIBLE_DEVICES`` leaves visible (all of them when it is unset), which are mapped to
NVML's own numbering - the ``gpu_index`` every row keeps.  CUDA numbers visible devices in
``CUDA_DEVICE_ORDER``; NVML in PCI bus order, so an index in ``CUDA_VISIBLE_DEVICES`` is taken
as a PCI-bus-order index (set ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, or use UUIDs, for an exact match).
UUIDs match with or without NVML's ``GPU-`` prefix, or by a unique prefix as CUDA allows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from toolkit.errors import InputError

from .source import GpuInfo


def _norm(uuid: str) -> str:
    text = uuid.strip().lower()
    return text[4:] if text.startswith("gpu-") else text


def _match(token: str, candidates: Sequence[GpuInfo], what: str) -> GpuInfo:
    token = token.strip()
    if token.isdigit():
        position = int(token)
        if position >= len(candidates):
            raise InputError(what, f"GPU {position} does not exist (visible: 0-{len(candidates) - 1})")
        return candidates[position]
    if token.startswith("MIG-"):
        raise InputError(what, f"{token} is a MIG instance: NVML reports power and energy per physical GPU, "
                               "so select its parent GPU (the row notes that it is partitioned)")
    hits = [info for info in candidates if info.uuid and _norm(info.uuid).startswith(_norm(token))]
    if len(hits) != 1:
        known = ", ".join(info.uuid or f"#{info.index}" for info in candidates) or "none"
        problem = "matches several GPUs" if hits else "matches no GPU"
        raise InputError(what, f"{token!r} {problem} (visible: {known})")
    return hits[0]


def visible_gpus(infos: Sequence[GpuInfo], env: Mapping[str, str] | None = None) -> list[GpuInfo]:
    """The GPUs ``CUDA_VISIBLE_DEVICES`` leaves visible, in its order (all when unset)."""
    env = os.environ if env is None else env
    spec = env.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(infos)
    tokens = [t for t in spec.split(",") if t.strip()]
    if not tokens or tokens[0].strip().startswith("-"):  # "" or "-1" hide every GPU
        return []
    by_index = sorted(infos, key=lambda info: info.index)
    return [_match(t, by_index, "CUDA_VISIBLE_DEVICES") for t in tokens]


def select_gpus(infos: Sequence[GpuInfo], wanted: str | None = None,
                env: Mapping[str, str] | None = None) -> list[GpuInfo]:
    """The GPUs to collect: ``wanted`` ("1,3", "GPU-8f3c,GPU-11aa") among the visible ones.

    Raises :class:`InputError` (one line, naming ``--gpus`` or ``CUDA_VISIBLE_DEVICES``) for an
    index or UUID that matches no visible GPU, or a GPU named twice.
    """
    visible = visible_gpus(infos, env)
    if wanted is None:
        return visible
    tokens = [t for t in wanted.split(",") if t.strip()]
    if not tokens:
        raise InputError("--gpus", "names no GPU (e.g. --gpus 0,2 or --gpus GPU-8f3c...)")
    chosen = [_match(t, visible, "--gpus") for t in tokens]
    if len({info.index for info in chosen}) != len(chosen):
        raise InputError("--gpus", "names the same GPU twice")
    return chosen
