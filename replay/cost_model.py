"""Per-instance latency and power functions compiled from a model bundle for fast replay.

The replay evaluates an iteration's latency millions of times, so the bundle's physical
(terms) models are reduced, for one instance's TP and SM clock, to a handful of coefficients
(frequency blending of groups is linear in the coefficients, so it folds in):

    prefill pieces:  k0 + kc*sum(c) + kcp*sum(c*p) + kc2*sum(c^2) + kp*sum(p)
                     or, for a roofline model, max(that, m0 + mp*sum(p))
    decode batch:    d0 + db*b + dbk*sum(k) + dk*mean(k)

A mixed iteration (prefill chunk(s) + decodes) costs the sum, with one launch constant.

Mnemosyne parallelism on top of TP (``pp`` stages of sequence pipeline parallelism, ``kvp``
KV-parallel groups), in steady state:

* SPP pipelines prefill: a pipelined instance's iteration fills up to ``pp`` stage slots, each
  with a chunk (consecutive chunks of one prompt may follow each other: a chunk needs only the
  KV its stage already holds).  A slot takes ``1/pp`` of its chunk's unsplit time (each stage holds
  ``1/pp`` of the layers, one launch per slot), so prefill work completes at ``pp`` times the rate:
  TTFT ~ sum(chunk times) / pp plus the drain of the last chunk through the other stages (the
  engine adds it at the first token; one short prompt gains nothing);
* a decode token passes every stage, so any iteration that carries decodes lasts a full pipeline
  pass: the unsplit decode time plus the largest chunk riding with it (or the slots' total, when
  that is longer), plus ``pp_transfer_s`` per stage boundary for the activations sent from stage
  to stage - never ``1/pp`` of it.  The adaptive chunk is sized so that full pass keeps the TBT
  SLO (so SPP leaves the chunk size as without it, and fills ``pp`` slots with such chunks);
* KVP splits the KV cache over KV-parallel groups: the terms that read the KV (c*p and p for
  prefill, b*k and k for decode) divide by the number of groups the iteration's KV spans, plus
  the cost of combining the groups' partial attention once per iteration - decode time stays
  flat as context grows.  The groups are all ``kvp`` of them (the static split), or with the
  pool's ``max_tokens_per_kvp_group`` as many as the iteration's longest sequence has outgrown
  (``ceil(tokens / max_tokens_per_kvp_group)``, at most ``kvp``; the engine passes ``groups``):
  a short sequence stays in one group and pays no combine.  The combine cost is a fixed
  ``kvp_overhead_s`` when set, else ``replay/kvp_combine.py``: one all-reduce per layer among the
  groups, priced from a network profile (Vidur's all_reduce table) or a fitted alpha + beta x
  bytes model, growing with the group count.
Tree models cannot be compiled: replay needs physical models.  Power models are per GPU and
are multiplied by the instance's GPU count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from characterize.linear_model import TermsModel
from characterize.model_io import ModelBundle
from characterize.power_model import PowerModel
from characterize.roofline_model import RooflineModel
from characterize.terms import INSTANCE_FEATURES, instance_factor, parse_term

from toolkit.errors import WattlasError

from .config import PP_TRANSFER_S, PoolConfig
from .kvp_combine import CombineModel, NetworkProfile, network_profile


class NotReplayable(WattlasError):
    """The bundle cannot drive a replay: a model is missing, not compilable, or predicts an
    impossible latency (<= 0 or not finite) somewhere in a pool's operating range."""

# sum(c_i^2) over an iteration's prompts is what the engine passes as c2; a profile row of n equal
# prompts has c^2 / n of it, so c^2 * n^-1 compiles to the same coefficient.
PREFILL_TERMS = {(): "k0", (("c", 1.0),): "kc", (("c", 1.0), ("p", 1.0)): "kcp", (("c", 2.0),): "kc2",
                 (("c", 2.0), ("n", -1.0)): "kc2", (("p", 1.0),): "kp"}
DECODE_TERMS = {(): "d0", (("b", 1.0),): "db", (("b", 1.0), ("k", 1.0)): "dbk", (("k", 1.0),): "dk"}


MEMORY_TERMS = {(): "m0", (("p", 1.0),): "mp"}


def _coefficients(model: TermsModel, vocabulary: dict, tp: int, sm_clock_mhz: float | None,
                  piece: str = "coef", allow_extrapolation: bool = False) -> dict[str, float] | None:
    """The model's coefficients for this TP and clock by vocabulary name (``piece``: ``coef``, or
    ``memory_coef`` for a roofline model's memory piece; None when a blended group has none).

    Terms with instance features (TP t, all-reduce share r, clock period q: the transferring
    family) are evaluated at this instance's TP and clock and fold into the iteration term they
    multiply.  Raises ``characterize.linear_model.Extrapolation`` when the TP or clock is outside
    what the model was fitted on, unless ``allow_extrapolation``."""
    from characterize.linear_model import outside_support

    clock = sm_clock_mhz
    if clock is None and model.support and model.support.get("sm_clock_mhz"):
        clock = float(model.support["sm_clock_mhz"][1])  # as predict: the highest profiled clock
    outside, reason = outside_support(model.support, _point(tp, clock), f"{model.phase} {model.target}", model.tp_variable)
    if outside.any() and not allow_extrapolation:
        from characterize.linear_model import Extrapolation

        raise Extrapolation(reason + " (--allow-extrapolation to replay anyway, marked extrapolated)")
    key = {}
    if "tp" in model.group_keys:
        key["tp"] = tp
    if "sm_clock_mhz" in model.group_keys:
        key["sm_clock_mhz"] = sm_clock_mhz
    blend = model._coef_for(key)
    if any(g.get(piece) is None for _, g in blend):
        return None
    terms = model.terms if piece == "coef" else model.memory_terms
    out = dict.fromkeys(vocabulary.values(), 0.0)
    for i, term in enumerate(terms):
        parsed = parse_term(term)
        factors = tuple(sorted(f for f in parsed if f[0] not in INSTANCE_FEATURES))
        if factors not in vocabulary:
            raise NotReplayable(f"{model.phase} term {term!r} is outside what replay compiles "
                                f"({', '.join('*'.join(f'{n}^{p:g}' for n, p in t) or '1' for t in vocabulary)})")
        try:
            scale = instance_factor([f for f in parsed if f[0] in INSTANCE_FEATURES], float(tp), clock)
        except ValueError as exc:
            raise NotReplayable(f"{model.phase} term {term!r}: {exc}") from None
        out[vocabulary[factors]] += scale * sum(w * g[piece][i] for w, g in blend)
    return out


def _point(tp: int, sm_clock_mhz: float | None):
    """A one-row frame of an instance's TP and clock, for support checks."""
    import pandas as pd

    return pd.DataFrame({"tp": [tp], "sm_clock_mhz": [sm_clock_mhz]})


@dataclass
class CompiledPower:
    """A power model reduced to one TP group and SM clock: ``params`` (p_idle_w, dynamic_w,
    load0, v0[, load0_clock_exponent]), the clock relative to the model's reference, ``f_rel``,
    and the model's power limit ``limit_w`` (None: none).  Calling it with a load (tokens in the
    iteration) gives the power of one GPU, W: non-decreasing in load, from p_idle_w up to at
    most the limit (see :mod:`characterize.power_model`)."""

    params: tuple[float, ...]
    f_rel: float
    limit_w: float | None = None
    idle_w: float | None = None  # measured at zero load (the GPU between iterations), where the profile has it

    @classmethod
    def from_model(cls, model: PowerModel, tp: int, sm_clock_mhz: float | None) -> "CompiledPower":
        """``model``'s first group for ``tp`` at ``sm_clock_mhz`` (None, or a model without a
        reference clock: the reference clock).  Raises :class:`NotReplayable` when no group has
        that TP."""
        match = [g for g in model.groups if "tp" not in model.group_keys or g["key"].get("tp") == tp]
        if not match:
            raise NotReplayable(f"the {model.phase} power model has no group for tp={tp}")
        f_rel = (sm_clock_mhz / model.f_ref) if (model.f_ref and sm_clock_mhz) else 1.0
        return cls(tuple(match[0]["params"]), f_rel, getattr(model, "power_limit_w", None), match[0].get("idle_w"))

    def __post_init__(self) -> None:
        p_idle, dynamic, load0, v0 = self.params[:4]
        exponent = self.params[4] if len(self.params) > 4 else 0.0
        f = self.f_rel
        # the clock-dependent constants, once: power(load) = idle + amplitude * (1 - exp(-load / saturation))
        self._idle = p_idle
        self._amplitude = dynamic * f * (v0 + (1 - v0) * f) ** 2
        self._saturation = load0 * f ** exponent
        self._ceiling = math.inf if self.limit_w is None else self.limit_w

    def __call__(self, load: float) -> float:
        if load <= 0 and self.idle_w is not None:
            return self.idle_w
        return min(self._ceiling, self._idle + self._amplitude * (1 - math.exp(-load / self._saturation)))


@dataclass
class InstanceCost:
    """Latency (s) and power (W, all GPUs of the instance) of one instance's iterations."""

    pre: dict[str, float]
    dec: dict[str, float]
    prefill_power: CompiledPower | None
    decode_power: CompiledPower | None
    gpus: int
    pp: int = 1
    kvp: int = 1
    kvp_overhead_s: float | None = None  # fixed combine per iteration with groups > 1 (PoolConfig.kvp_combine_s); None: modeled
    pre_memory: dict[str, float] | None = None  # a roofline prefill model's memory piece (m0, mp)
    pp_transfer_s: float = PP_TRANSFER_S  # SPP: per stage boundary and full pass (PoolConfig.pp_transfer_s)
    combine_model: CombineModel | None = None  # KVP combine when kvp_overhead_s is None (None: llama3-8b, fitted)

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, tp: int, sm_clock_mhz: float | None, pp: int = 1, kvp: int = 1,
                    kvp_overhead_s: float | None = None, pp_transfer_s: float = PP_TRANSFER_S,
                    model_shape: str | None = None, network: str | NetworkProfile | None = None) -> "InstanceCost":
        """The costs of an instance of ``tp * pp * kvp`` GPUs at ``sm_clock_mhz`` (None: the highest
        profiled clock), compiled from ``bundle``'s prefill and decode latency models and its power
        models (prefill power from the ``mixed`` model where there is no ``prefill`` one).

        KVP combine: ``kvp_overhead_s`` per iteration when given, else modeled for ``model_shape``
        (default: the bundle's model when it names a preset, else llama3-8b) over ``network`` (a
        Vidur all_reduce profile or its path; None: the fitted alpha + beta model).

        Raises :class:`NotReplayable` when a latency model is missing, is not a physical (terms or
        roofline) model or has a term replay cannot compile, or a power model has no group for
        ``tp``; ``KeyError`` when a latency model has no group for ``tp``.
        """
        def latency_model(phase):
            model = bundle.find("latency_s", phase)
            if model is None:
                raise NotReplayable(f"model bundle has no latency model for {phase!r}; replay needs prefill and decode")
            if not isinstance(model, TermsModel):
                raise NotReplayable(f"the {phase} latency model is {model.kind}; replay needs a physical (terms) model")
            return model

        def power(phase):
            model = bundle.find("mean_power_w", phase)
            return None if model is None else CompiledPower.from_model(model, tp, sm_clock_mhz)

        prefill, decode = latency_model("prefill"), latency_model("decode")
        allow = bundle.allow_extrapolation
        for model in (prefill, decode):
            if allow and model.outside_support(_point(tp, sm_clock_mhz)).any():
                note = f"{model.phase} latency at TP {tp}, {sm_clock_mhz or 'default'} MHz"
                if note not in bundle.extrapolated:
                    bundle.extrapolated.append(note)
        memory = (_coefficients(prefill, MEMORY_TERMS, tp, sm_clock_mhz, "memory_coef", allow)
                  if isinstance(prefill, RooflineModel) else None)
        return cls(_coefficients(prefill, PREFILL_TERMS, tp, sm_clock_mhz, allow_extrapolation=allow),
                   _coefficients(decode, DECODE_TERMS, tp, sm_clock_mhz, allow_extrapolation=allow),
                   power("prefill") or power("mixed"), power("decode"), gpus=tp * pp * kvp, pp=pp, kvp=kvp,
                   kvp_overhead_s=kvp_overhead_s, pre_memory=memory, pp_transfer_s=pp_transfer_s,
                   combine_model=_combine_model(bundle, tp, model_shape, network) if kvp > 1 else None)

    @property
    def has_power(self) -> bool:
        """Whether both the prefill and the decode power model are there (else power is unknown)."""
        return self.prefill_power is not None and self.decode_power is not None

    def _prefill_memory(self, p: float, n: int = 1, groups: int | None = None) -> float:
        m = self.pre_memory
        return n * m["m0"] + m["mp"] * p / (groups or self.kvp) if m is not None else -math.inf

    def combine_terms(self, groups: int | None = None) -> tuple[float, float]:
        """KVP: (A, B) of combining ``groups`` groups' partial attention (None: all ``kvp``), once
        per iteration: A + B x (the iteration's tokens) s; (0, 0) within one group."""
        groups = groups or self.kvp
        if groups <= 1:
            return 0.0, 0.0
        if self.kvp_overhead_s is not None:
            return self.kvp_overhead_s, 0.0
        if self.combine_model is None:  # (an InstanceCost built by hand)
            self.combine_model = _combine_model(None, max(1, self.gpus // (self.pp * self.kvp)), None, None)
        return self.combine_model.terms(groups)

    def combine(self, groups: int | None, tokens: float) -> float:
        """KVP: combining ``groups`` groups' partial attention (None: all ``kvp``) for an iteration of
        ``tokens`` tokens (s); 0 within one group."""
        a, b = self.combine_terms(groups)
        return a + b * tokens

    @property
    def combine_s(self) -> float:
        """KVP: combining all ``kvp`` groups' partial attention for one decode token, once per iteration."""
        return self.combine(self.kvp, 1)

    @property
    def transfer_s(self) -> float:
        """SPP: the activation sends of one full pipeline pass (one per stage boundary)."""
        return (self.pp - 1) * self.pp_transfer_s if self.pp > 1 else 0.0

    def _prefill_core(self, c: float, cp: float, c2: float, p: float, n: int = 1, groups: int | None = None) -> float:
        """Unsplit time of prefill pieces (sums over them), with ``n`` launches, the prefix KV over
        ``groups`` KVP groups (None: all ``kvp``)."""
        q = self.pre
        attention = (q["kcp"] * cp + q["kp"] * p) / (groups or self.kvp)
        compute = n * q["k0"] + q["kc"] * c + q["kc2"] * c2 + attention
        return max(compute, self._prefill_memory(p, n, groups))

    def piece_latency(self, c: float, p: float, groups: int | None = None) -> float:
        """Unsplit time (s) of one chunk of ``c`` tokens after ``p`` prefix tokens, on all stages
        in turn: what its full pass through the pipeline takes (without transfers)."""
        return self._prefill_core(c, c * p, c * c, p, groups=groups)

    def prefill_latency(self, c: float, cp: float, c2: float, p: float, n: int = 1, groups: int | None = None) -> float:
        """Latency (s) of an iteration of prefill chunks only, from the sums over its chunks of c,
        c*p, c^2 and p (tokens), with SPP and KVP applied (module docstring): with ``pp`` > 1 the
        ``n`` chunks fill ``n`` stage slots (one launch each), without SPP they share one launch;
        the prefix KV over ``groups`` KVP groups (None: all ``kvp``)."""
        return self._prefill_core(c, cp, c2, p, n if self.pp > 1 else 1, groups) / self.pp + self.combine(groups, c)

    def decode_latency(self, b: int, k_sum: float, groups: int | None = None) -> float:
        """Latency (s) of a decode-only iteration of ``b`` >= 1 sequences holding ``k_sum`` KV tokens
        together, spread over ``groups`` KVP groups (None: all ``kvp``): a full pass through every
        stage (SPP adds the inter-stage transfers)."""
        q = self.dec
        kv_reads = (q["dbk"] * k_sum + q["dk"] * (k_sum / b)) / (groups or self.kvp)
        return q["d0"] + q["db"] * b + kv_reads + self.combine(groups, b) + self.transfer_s

    def decode_stretch(self, b: int, k_sum: float, groups: int | None = None) -> tuple[float, float]:
        """(latency of the first, added per later) decode-only iteration of ``b`` >= 1 sequences
        starting at ``k_sum`` KV tokens: each iteration adds ``b`` tokens, so latency is linear in
        the iteration index; each latency at least 1 us, as :meth:`iteration_latency` has it."""
        const, per_token, slope = self.decode_coefficients(b, groups)
        first = const + per_token * k_sum
        second = first + slope
        first, second = max(first, 1e-6), max(second, 1e-6)
        return first, second - first

    def decode_coefficients(self, b: int, groups: int | None = None) -> tuple[float, float, float]:
        """(constant, per KV token, per iteration) of :meth:`decode_latency` for ``b`` sequences
        over ``groups`` KVP groups: latency = constant + per_token * k_sum, and an iteration later
        (each sequence one token longer) ``per_iteration`` more.  Computed once per (b, groups)."""
        cache = self.__dict__.setdefault("_decode_coefficients", {})
        key = (b, groups)
        found = cache.get(key)
        if found is None:
            q, g = self.dec, groups or self.kvp
            const = q["d0"] + q["db"] * b + self.combine(groups, b) + self.transfer_s
            found = cache[key] = (const, (q["dbk"] + q["dk"] / b) / g, (q["dbk"] * b + q["dk"]) / g)
        return found

    def decode_power_w(self, b: int) -> float | None:
        """:meth:`iteration_power` of a decode-only iteration of ``b`` sequences, computed once per ``b``."""
        cache = self.__dict__.setdefault("_decode_power_by_b", {})
        power = cache.get(b, cache)
        if power is cache:
            power = cache[b] = self.iteration_power(0, b)
        return power

    def _decode_share(self, b: int, k_sum: float, groups: int | None = None) -> float:
        """What b decodes add to an iteration that also runs a prefill chunk (launch and combine counted once)."""
        return self.decode_latency(b, k_sum, groups) - self.dec["d0"] - self.combine(groups, b) - self.transfer_s if b else 0.0

    def check_range(self, pool: PoolConfig, points: int = 12) -> None:
        """Refuse a model that predicts a latency <= 0 (or not finite) anywhere the pool can run:
        decodes of 1..max_batch_size sequences holding up to the KV capacity, chunks of
        1..max_batch_tokens after prefixes up to it (a log grid of ``points`` per axis).  A fitted
        model may have negative coefficients; what it may not do is predict an impossible iteration
        there, which the replay would otherwise have to clamp silently."""
        def grid(high: float) -> list[int]:
            return sorted({max(1, int(round(x))) for x in np.geomspace(1, max(1.0, float(high)), points)})

        kv = pool.kv_capacity_tokens * pool.kvp
        where = f"tp={pool.tp}, clock={pool.sm_clock_mhz or 'highest profiled'} MHz"
        for b in grid(pool.max_batch_size):
            for k_sum in (k for k in grid(kv) if k >= b):
                latency = self.decode_latency(b, k_sum)
                if not (math.isfinite(latency) and latency > 0):
                    raise NotReplayable(f"the decode latency model predicts {latency:.4g} s for {b} sequences holding "
                                        f"{k_sum} KV tokens ({where}); replay needs a positive latency everywhere "
                                        f"the pool can run")
        for c in grid(min(pool.max_batch_tokens, kv)):
            for p in (0, *grid(kv - c)):
                latency = self.prefill_latency(c, c * p, c * c, p)
                if not (math.isfinite(latency) and latency > 0):
                    raise NotReplayable(f"the prefill latency model predicts {latency:.4g} s for a {c}-token chunk "
                                        f"after {p} prefix tokens ({where}); replay needs a positive latency everywhere "
                                        f"the pool can run")

    def iteration_latency(self, c: float, cp: float, c2: float, p: float, b: int, k_sum: float, n: int = 1,
                          largest: float = 0.0, groups: int | None = None) -> float:
        """Latency (s) of an iteration of prefill chunks (sums as in :meth:`prefill_latency`, ``n``
        chunks, the longest taking ``largest`` s unsplit - :meth:`piece_latency`) and ``b`` decodes
        holding ``k_sum`` KV tokens, the KV over ``groups`` KVP groups (None: all ``kvp``), launch
        and combine counted once; at least 1 us.

        With SPP and decodes, the iteration is a full pass (module docstring): the slots' total
        or the largest chunk, whichever is longer, plus the decodes' unsplit share and transfers."""
        if c > 0:
            combine = self.combine(groups, c + b)
            prefill = self._prefill_core(c, cp, c2, p, n if self.pp > 1 else 1, groups) / self.pp + combine
            if self.pp > 1 and b > 0:
                prefill = max(prefill, largest + combine) + self.transfer_s
            latency = prefill + self._decode_share(b, k_sum, groups)
        else:
            latency = self.decode_latency(b, k_sum, groups) if b > 0 else 0.0
        return max(latency, 1e-6)

    def largest_chunk(self, p: float, b: int, k_sum: float, slo_s: float, granularity: int = 32,
                      scheduled: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0), n: int = 0,
                      groups: int | None = None, largest: float = 0.0) -> int:
        """Mnemosyne adaptive chunk: the largest c (multiple of granularity) after ``p`` prefix tokens
        keeping the iteration <= SLO, given the ``n`` pieces already ``scheduled`` in it (sums of c,
        c*p, c^2, p; the longest taking ``largest`` s unsplit), the KV over ``groups`` KVP groups
        (None: all ``kvp``).  With SPP the bound is the full pass that carries the decodes (module
        docstring): the chunk's own unsplit time, and the slots' total, each within the budget.  The
        combine grows with the chunk's tokens (also under the longest scheduled piece's full pass)."""
        q, pp, kvp = self.pre, self.pp, groups or self.kvp
        c_s, cp_s, c2_s, p_s = scheduled
        comb_a, comb_b = self.combine_terms(groups)
        budget = (slo_s - self._decode_share(b, k_sum, groups) - (comb_a + comb_b * (c_s + b))
                  - (self.transfer_s if b > 0 else 0.0))

        def solve(const: float, lin: float, a: float) -> float:  # largest c with const + lin*c + a*c^2 <= 0
            if const >= 0:
                return 0.0
            if a > 1e-18:
                return (-lin + math.sqrt(lin * lin - 4 * a * const)) / (2 * a)
            return -const / lin if lin > 0 else float("inf")

        others = q["kc"] * c_s + q["kcp"] * cp_s / kvp + q["kc2"] * c2_s + q["kp"] * p_s / kvp
        lin, a = q["kc"] + q["kcp"] * p / kvp, q["kc2"]
        if pp == 1:  # one launch for every piece of the iteration
            if self._prefill_memory(p_s + p, groups=kvp) > budget:
                return 0  # reading the prefix alone (roofline memory piece) breaks the SLO
            c = solve(q["k0"] + q["kp"] * p / kvp + others - budget, lin + comb_b, a)
        else:
            if b > 0 and self._prefill_memory(p, groups=kvp) > budget:
                return 0
            if self._prefill_memory(p_s + p, n + 1, kvp) / pp > budget:
                return 0
            # the slots' total (n + 1 launches) within the budget ...
            c = solve(((n + 1) * q["k0"] + q["kp"] * p / kvp + others) / pp - budget, lin / pp + comb_b, a / pp)
            if b > 0:  # ... and the full pass of the chunk that carries the decodes
                c = min(c, solve(q["k0"] + q["kp"] * p / kvp - budget, lin + comb_b, a))
                if comb_b > 0:  # (the longest piece already there: its pass grows by this chunk's combine)
                    c = min(c, max(0.0, (budget - largest) / comb_b))
        return int((min(c, 1 << 30) + 1e-6) // granularity * granularity)  # (1e-6: a chunk at the boundary counts)

    def iteration_power(self, prefill_tokens: float, b: int) -> float | None:
        """Power (W, all the instance's GPUs) of an iteration of ``prefill_tokens`` chunk tokens and
        ``b`` decodes: the prefill power model when it has chunk tokens, else the decode one.
        None without power models."""
        if not self.has_power:
            return None
        model = self.prefill_power if prefill_tokens > 0 else self.decode_power
        return model(prefill_tokens + b) * self.gpus

    def idle_power(self) -> float | None:
        """Power (W, all the instance's GPUs) of an idle instance: the decode power model at zero
        load; None without a decode power model."""
        return None if self.decode_power is None else self.decode_power(0.0) * self.gpus


def _combine_model(bundle: ModelBundle | None, tp: int, model_shape: str | None,
                   network: str | NetworkProfile | None) -> CombineModel:
    """The KVP combine model of a ``tp``-GPU group of ``model_shape`` (default: the bundle's model when
    it names a preset, else llama3-8b) over ``network`` (a profile, its path, or None: fitted)."""
    from toolkit.model_shapes import PRESETS

    from .memory_planner import bundle_preset

    shape = PRESETS.get(model_shape or bundle_preset(bundle) or "llama3-8b", PRESETS["llama3-8b"])
    if network is not None and not isinstance(network, NetworkProfile):
        network = network_profile(str(network))
    return CombineModel.for_shape(shape, tp, network)
