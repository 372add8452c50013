"""Cluster configuration for replay, from TOML, with errors that name the file and key.

```toml
router = "power_of_two"          # JSQ over 2 random instances; or "least_loaded" (all), "round_robin",
                                 # "token_jsq" (the instance with the fewest outstanding tokens: prompt
                                 # tokens not yet prefilled + output tokens not yet generated)
seed = 0                         # of the router's random choices
bin_s = 1.0                      # power timeline resolution
gpu_hour_usd = 2.5               # cost of one GPU-hour
carbon_g_per_kwh = 400.0         # grid carbon intensity (constant) ...
carbon_csv = "grid.csv"          # ... or a series: columns t_s (seconds since trace start), g_per_kwh
pue = 1.2                        # facility overhead on IT energy

[[pool]]
name = "default"
instances = 2
tp = 1
pp = 1                           # Mnemosyne sequence-pipeline-parallel stages (prefill)
kvp = 1                          # Mnemosyne KV-parallel groups (GPUs per instance: tp * pp * kvp)
kvp_combine_s = 0.00032          # a fixed cost per iteration whose KV spans > 1 group; omit: modeled
                                 # (replay/kvp_combine.py: an all-reduce a layer, growing with the groups)
kvp_network_csv = "all_reduce.csv"  # the combine's network profile (Vidur data/profiling/network/*/all_reduce.csv);
                                 # omit: the fitted alpha + beta x bytes model
max_tokens_per_kvp_group = 1000000  # KVP groups join as a sequence outgrows this many tokens a group
                                 # (a sequence of n tokens uses ceil(n / this) groups, at most kvp);
                                 # omit: every sequence is split over all kvp groups
scheduler = "fcfs"               # replica batch scheduler (replay/scheduler/): "fcfs" (first come, first
                                 # served) or "lars" (Mnemosyne's length-aware slack: short prompts prefill
                                 # beside a long one within tbt_slo_s, least slack first)
models = "h100.json"             # this pool's model bundle (GPU type); default: the --models bundle
sm_clock_mhz = 1980              # omit: the highest profiled clock
max_batch_tokens = 4096          # token budget of one iteration (decodes + prefill chunk)
max_batch_size = 256             # sequences in flight per instance
pp_transfer_s = 0.00005          # SPP: one inter-stage activation send per stage boundary and pass (estimate)
kv_capacity_tokens = 400000      # KV cache (tokens) of one TP x PP group; an instance holds x kvp.
                                 # omit: derived from model_shape and gpu_memory_gib (replay/memory_planner.py)
model_shape = "llama3-8b"        # a preset (llama3-8b, llama2-70b, tiny); omit: the bundle's model when it
                                 # names a preset - required when kv_capacity_tokens is omitted and it does not
gpu_memory_gib = 80              # memory of one GPU (90 % usable, as vLLM), for the derived KV capacity
dtype_bytes = 2                  # bytes per weight and KV element (bf16: 2, fp8: 1)
chunk_policy = "fixed"           # or "adaptive" (Mnemosyne: largest chunk within tbt_slo_s)
chunk_size = 2048
ttft_slo_s = 2.0
tbt_slo_s = 0.05
max_input_tokens = 1e12          # requests are routed to the first pool that accepts them;
max_output_tokens = 1e12         # omit (or >= 2**31 - 1): any length
priority = "high"                # only requests of this priority (POLCA pools); omit: any

[dynamollm]                      # --policy dynamollm (replay/policies/dynamollm.py, baselines.py)
input_bins = [1024, 4096]
output_bins = [128, 512]         # classes by input and *predicted* output length
period_s = 300                   # TP re-shard decisions and rate forecasts
scale_period_s = 1800            # instance-count decisions
clock_period_s = 5               # SM clock decisions ...
clock_window_s = 30              # ... on the arrival rate of the last this many seconds
utilization_target = 0.7
scale_out_s = 30                 # instance start: powers on now, takes requests this much later (assumed)
power_off_inactive = true        # instances beyond the active count power off once drained
reshard = false                  # true: also pick each class's TP every period_s (re-sharding its GPUs)
reshard_s = 30                   # a new TP layout loads this long; omit: weight bytes per GPU / weight_load_gb_s
weight_load_gb_s = 5             # (assumed)
clock_switch_s = 0.005           # stall per GPU of a clock change, serialised over a node's GPUs (assumed)
gpus_per_node = 8
output_length = "predicted"      # or "oracle": route by the true output length (comparison only)
predictor_quantile = 0.5         # per input-length bucket, of past outputs; refitted every predictor_refit_s
predictor_refit_s = 300          # on the last predictor_window_s less predictor_lag_s
predictor_window_s = 3600
predictor_lag_s = 60
baselines = true                 # also replay peak_static and best_static and report the savings
slo_target = 0.99                # SLO attainment a baseline must reach
peak_window_s = 60               # peak_static is sized for the busiest window of this length
carbon_g_per_kwh = 366           # comparison accounting (every run alike); sources in dynamollm.py
embodied_g_per_gpu_hour = 0
gpu_hour_usd = 2.5
energy_usd_per_kwh = 0.0806

[polca]                          # --policy polca, polca-search (replay/policies/polca.py: sources, assumptions)
budget_w = 3000                  # row power budget (W), with budget_source = "fixed" (the default when set)
budget_source = "fixed"          # or "provisioned_peak" (the servers' full-load power summed: what the row
                                 # was built for; the default without budget_w) or "measured_peak" (polca-search:
                                 # the original row's peak metered power replaying the trace uncapped)
t1 = 0.85                        # cap low priority above t1 x budget (POLCA's scheme; the values are assumed)
t2 = 0.95                        # cap all above t2 x budget
uncap = 0.80                     # lift the caps below uncap x budget (hysteresis); 0 < uncap < t1 <= t2
low_cap_mhz = 1110               # SM clock of capped low-priority servers
high_cap_mhz = 1410              # ... of capped high-priority servers (>= low_cap_mhz)
control_s = 1.0                  # the controller reads the row meter's mean over this window, this often
telemetry_delay_s = 2.0          # the reading is this old when the controller gets it (assumed)
actuation_delay_s = 1.0          # a capping decision reaches the servers this much later (assumed)
brake = true                     # power brake, the last resort: over budget with all caps in effect
brake_mhz = 810                  # ... sends every server to this clock at once (<= low_cap_mhz; assumed)
```

Everything is checked at load, before any replay: types (``instances = "2"`` is not a number),
finiteness (no ``nan``/``inf``), integers where counts are meant, and the bounds below (and in the
policies' ``settings``); the routed pools together must accept every (input, output) length.
An error is one line naming the file and the key: ``c.toml: key pool[0].tp: must be >= 1 (got 0)``.
A pool whose model shard does not fit its GPUs (weights and activations above the usable memory) is
refused with the bytes it needs, at load when ``model_shape`` is set, else at replay.  The replay
summary says which KV capacity each pool used and how (``kv_capacity_tokens``,
``kv_capacity_source``: ``"toml"`` or ``"derived from llama3-8b on 80 GiB"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from toolkit.errors import InputError
from toolkit.model_shapes import PRESETS as MODEL_SHAPES
from toolkit.validation import MAX_CLOCK_MHZ, MAX_TOKENS, Settings, read_text

if TYPE_CHECKING:
    from .policies.dynamollm import DynamoConfig
    from .policies.polca import PolcaConfig


# KVP: the first study's flat estimate of combining the groups' partial attention per iteration
# (one small NVLink collective per layer, ~10 us each for 32 layers).  No longer the default: without
# kvp_combine_s the combine is modeled (replay/kvp_combine.py), growing with the group count.
KVP_COMBINE_S = 3.2e-4
# SPP: sending one micro-batch's activations to the next stage, per stage boundary and pipeline
# pass - latency-bound for decode-sized batches (~tens of us over NVLink or InfiniBand; an
# estimate, not a measurement)
PP_TRANSFER_S = 5e-5

# Bounds of the settings (all inclusive).  Wide enough for any real deployment, narrow enough
# that a typo cannot make the replay allocate without end or loop without progress.
UNBOUNDED_TOKENS = 10**12  # max_input/output_tokens: the default, "accepts any length"
MAX_INSTANCES = 10_000  # instances in one pool (each is simulated and gets a power timeline)
MAX_PARALLEL = 1024  # tp, pp, kvp
MAX_BATCH_SIZE = 65_536  # sequences in flight per instance
MAX_SLO_S = 86_400.0  # TTFT and TBT SLOs: a day
MAX_KVP_COMBINE_S = 1.0  # a per-iteration collective of a second is a typo, not a network
MAX_GPU_MEMORY_GIB = 16_384.0  # one GPU's memory: today's carry 80-192 GiB
MAX_DTYPE_BYTES = 8
MIN_BIN_S, MAX_BIN_S = 1e-3, 86_400.0  # power timeline resolution (bins are allocated per instance)
MAX_GPU_HOUR_USD = 10_000.0
MAX_CARBON_G_PER_KWH = 10_000.0  # coal is ~1,000
MIN_PUE, MAX_PUE = 1.0, 10.0  # PUE is facility over IT energy: 1 at best
MAX_SEED = 2**63 - 1
ROUTERS = ("power_of_two", "least_loaded", "round_robin", "token_jsq")
CHUNK_POLICIES = ("fixed", "adaptive")
PRIORITIES = ("high", "low")  # as in the trace schema; POLCA caps "low" first
MAX_SETTINGS_BYTES = 16 * 2**20  # a cluster TOML is a few hundred bytes


def scheduler_names() -> tuple[str, ...]:
    """The replica batch schedulers a pool may name (``replay/scheduler/``'s registry)."""
    from .scheduler import SCHEDULERS

    return tuple(SCHEDULERS)


@dataclass
class PoolConfig:
    """One pool of identical instances (each of ``tp * pp * kvp`` GPUs): its size, model bundle
    and SM clock (MHz; None: the highest profiled), batching and KV limits (tokens), chunking,
    SLOs (s), the request lengths and priority it accepts (None: any), and whether it is a standby
    layout.  The module docstring describes every setting."""

    name: str = "default"
    instances: int = 2
    tp: int = 1
    pp: int = 1
    kvp: int = 1
    kvp_combine_s: float | None = None  # None: modeled (replay/kvp_combine.py)
    kvp_network_csv: str | None = None  # None: the fitted combine model
    max_tokens_per_kvp_group: int | None = None  # None: every sequence over all kvp groups
    scheduler: str = "fcfs"  # replay/scheduler/: "fcfs" or "lars"
    models: str | None = None
    sm_clock_mhz: float | None = None
    max_batch_tokens: int = 4096
    max_batch_size: int = 256
    pp_transfer_s: float = PP_TRANSFER_S
    # None: derived from the model shape (replay/memory_planner.py) - the TOML default.  Code that
    # builds a PoolConfig without saying gets the old flat 400,000 tokens: policies read this field
    # before any bundle is at hand (DynamoLLM's planner), and bundles built in code name no model.
    kv_capacity_tokens: int | None = 400_000
    model_shape: str | None = None  # None: the bundle's model when it names a preset
    gpu_memory_gib: float = 80.0
    dtype_bytes: int = 2
    chunk_policy: str = "fixed"
    chunk_size: int = 2048
    ttft_slo_s: float = 2.0
    tbt_slo_s: float = 0.05
    max_input_tokens: float = 1e12
    max_output_tokens: float = 1e12
    priority: str | None = None
    # A standby pool is another TP layout of a routed pool's GPUs (DynamoLLM re-sharding): it gets
    # no requests and no power until a controller re-shards to it (``ClusterState.reshard``).
    standby: bool = False
    # How kv_capacity_tokens was decided ("toml", "derived from llama3-8b on 80 GiB"); set by
    # memory_planner.resolve_cluster (a TOML need not set it; a label, it changes nothing).
    kv_capacity_source: str | None = None

    @classmethod
    def from_table(cls, table: Settings) -> "PoolConfig":
        """A pool from its ``[[pool]]`` table, every setting checked (defaults for absent keys)."""
        d = cls()
        count = dict(integer=True, minimum=1)
        tokens = dict(integer=True, minimum=1, maximum=MAX_TOKENS)
        limit = dict(integer=True, minimum=1, maximum=UNBOUNDED_TOKENS)
        slo = dict(minimum=0, exclusive_minimum=True, maximum=MAX_SLO_S)
        pool = cls(
            name=table.text("name", d.name),
            instances=table.number("instances", d.instances, **count, maximum=MAX_INSTANCES),
            tp=table.number("tp", d.tp, **count, maximum=MAX_PARALLEL),
            pp=table.number("pp", d.pp, **count, maximum=MAX_PARALLEL),
            kvp=table.number("kvp", d.kvp, **count, maximum=MAX_PARALLEL),
            kvp_combine_s=table.number("kvp_combine_s", d.kvp_combine_s, minimum=0, maximum=MAX_KVP_COMBINE_S),
            kvp_network_csv=table.text("kvp_network_csv", d.kvp_network_csv),
            max_tokens_per_kvp_group=table.number("max_tokens_per_kvp_group", d.max_tokens_per_kvp_group, **tokens),
            scheduler=table.choice("scheduler", scheduler_names(), d.scheduler),
            models=table.text("models", d.models),
            sm_clock_mhz=table.number("sm_clock_mhz", d.sm_clock_mhz, minimum=0, exclusive_minimum=True,
                                      maximum=MAX_CLOCK_MHZ),
            max_batch_tokens=table.number("max_batch_tokens", d.max_batch_tokens, **tokens),
            max_batch_size=table.number("max_batch_size", d.max_batch_size, **count, maximum=MAX_BATCH_SIZE),
            pp_transfer_s=table.number("pp_transfer_s", d.pp_transfer_s, minimum=0, maximum=MAX_KVP_COMBINE_S),
            kv_capacity_tokens=table.number("kv_capacity_tokens", None, **tokens),  # absent: derived
            model_shape=table.choice("model_shape", tuple(MODEL_SHAPES), d.model_shape),
            gpu_memory_gib=table.number("gpu_memory_gib", d.gpu_memory_gib, minimum=0, exclusive_minimum=True,
                                        maximum=MAX_GPU_MEMORY_GIB),
            dtype_bytes=table.number("dtype_bytes", d.dtype_bytes, integer=True, minimum=1, maximum=MAX_DTYPE_BYTES),
            chunk_policy=table.choice("chunk_policy", CHUNK_POLICIES, d.chunk_policy),
            chunk_size=table.number("chunk_size", d.chunk_size, **tokens),
            ttft_slo_s=table.number("ttft_slo_s", d.ttft_slo_s, **slo),
            tbt_slo_s=table.number("tbt_slo_s", d.tbt_slo_s, **slo),
            max_input_tokens=table.number("max_input_tokens", d.max_input_tokens, **limit),
            max_output_tokens=table.number("max_output_tokens", d.max_output_tokens, **limit),
            priority=table.choice("priority", PRIORITIES, d.priority),
            standby=table.flag("standby", d.standby),
            kv_capacity_source=table.text("kv_capacity_source", None),  # (a label; what asdict() round-trips)
        )
        if pool.model_shape is not None and pool.kv_capacity_tokens is None:
            from .memory_planner import DoesNotFit, plan_for

            try:  # a shard that cannot fit fails now, naming the key, not after the trace is read
                plan_for(pool, pool.model_shape).capacity_tokens
            except DoesNotFit as exc:
                raise table.error("model_shape", exc.message) from None
        return pool


@dataclass
class ClusterConfig:
    """A cluster: its pools (a request goes to the first that accepts it), router and its seed,
    power-timeline bin (s), GPU-hour price (USD), grid carbon intensity (g/kWh, or a series in
    ``carbon_csv``), PUE, and the ``[dynamollm]``/``[polca]`` settings as checked keyword dicts."""

    pools: list[PoolConfig] = field(default_factory=lambda: [PoolConfig()])
    router: str = "power_of_two"
    seed: int = 0
    bin_s: float = 1.0
    gpu_hour_usd: float = 2.5
    carbon_g_per_kwh: float = 400.0
    carbon_csv: str | None = None
    pue: float = 1.2
    dynamollm: dict = field(default_factory=dict)  # DynamoConfig fields ([dynamollm] table)
    polca: dict = field(default_factory=dict)  # PolcaConfig fields ([polca] table)

    @property
    def instances(self) -> int:
        """Instances in all pools, standby pools included."""
        return sum(p.instances for p in self.pools)


def _names(cls) -> set[str]:
    """The field names of a dataclass: the keys its table may set."""
    return {f.name for f in fields(cls)}


def cluster_from_dict(data: dict, source: str | Path | None = None) -> ClusterConfig:
    """A cluster from parsed TOML (or the same dict from code): every setting checked, errors
    naming ``source`` and the key (``pool[0].instances``)."""
    from .policies.dynamollm import DynamoConfig
    from .policies.polca import PolcaConfig

    table = Settings(data, source, known=(_names(ClusterConfig) - {"pools"}) | {"pool"})
    pools = [PoolConfig.from_table(t) for t in table.tables("pool", [{}], known=_names(PoolConfig), min_length=1)]
    if all(p.standby for p in pools):
        raise table.error("pool", "every pool is standby: none takes requests")
    d = ClusterConfig()
    config = ClusterConfig(
        pools=pools,
        router=table.choice("router", ROUTERS, d.router),
        seed=table.number("seed", d.seed, integer=True, minimum=0, maximum=MAX_SEED),
        bin_s=table.number("bin_s", d.bin_s, minimum=MIN_BIN_S, maximum=MAX_BIN_S),
        gpu_hour_usd=table.number("gpu_hour_usd", d.gpu_hour_usd, minimum=0, maximum=MAX_GPU_HOUR_USD),
        carbon_g_per_kwh=table.number("carbon_g_per_kwh", d.carbon_g_per_kwh, minimum=0, maximum=MAX_CARBON_G_PER_KWH),
        carbon_csv=table.text("carbon_csv", d.carbon_csv),
        pue=table.number("pue", d.pue, minimum=MIN_PUE, maximum=MAX_PUE),
        dynamollm=DynamoConfig.settings(table.table("dynamollm", {}, known=_names(DynamoConfig))),
        polca=PolcaConfig.settings(table.table("polca", {}, known=_names(PolcaConfig))),
    )
    gap = coverage_gap(pools)
    if gap:
        raise table.error("pool", f"{gap}; every request needs a pool: leave one pool's max_input_tokens and "
                                  f"max_output_tokens unset (or >= {MAX_TOKENS})")
    return config


def coverage_gap(pools: list[PoolConfig]) -> str | None:
    """What no routed pool accepts, by length alone ("no pool accepts input_tokens > 4096"), or
    None when every (input, output) length up to MAX_TOKENS has a pool.

    A request is routed to the first pool whose limits it is within, so the accepted lengths are
    a union of rectangles [1, max_input] x [1, max_output]; a limit of MAX_TOKENS or more accepts
    any length a trace can hold.  Priorities are left out: whether they match depends on the
    trace (see :func:`route_requests`).
    """
    limits = [(min(p.max_input_tokens, MAX_TOKENS), min(p.max_output_tokens, MAX_TOKENS)) for p in pools if not p.standby]
    # Walk the staircase: inputs above x are accepted only by pools with max_input > x, and only
    # up to the largest of their output limits; the first x where that falls short is the gap.
    for x in sorted({0} | {a for a, _ in limits}):
        if x >= MAX_TOKENS:
            break
        reach = max((b for a, b in limits if a > x), default=0)
        if reach >= MAX_TOKENS:
            continue
        if reach == 0:
            return f"no pool accepts input_tokens > {x}"
        if x == 0:
            return f"no pool accepts output_tokens > {reach}"
        return f"no pool accepts input_tokens > {x} with output_tokens > {reach}"
    return None


def route_requests(config: ClusterConfig, inputs: np.ndarray, outputs: np.ndarray, priority: np.ndarray | None = None,
                   source: str | Path | None = None, row_offset: int = 0) -> np.ndarray:
    """Pool index per request: the first routed (non-standby) pool whose length limits it is
    within and, when both the pool and the trace have priorities, whose priority it has.

    A request no pool accepts is refused, not sent somewhere anyway: an InputError naming
    ``source`` (the trace) and the first such row (1-based, after ``row_offset`` rows of the
    file read before these).
    """
    inputs, outputs = np.asarray(inputs), np.asarray(outputs)
    pool = np.full(len(inputs), -1, dtype=np.int64)
    prio = np.asarray(priority, dtype=object) if priority is not None else None
    for i, p in enumerate(config.pools):
        if p.standby:
            continue
        fits = (pool < 0) & (inputs <= p.max_input_tokens) & (outputs <= p.max_output_tokens)
        if p.priority is not None and prio is not None:
            fits &= prio == p.priority
        pool[fits] = i
    unrouted = np.flatnonzero(pool < 0)
    if unrouted.size:
        r = int(unrouted[0])
        what = f"input_tokens {int(inputs[r])}, output_tokens {int(outputs[r])}"
        if prio is not None and any(p.priority is not None for p in config.pools):
            what += f", priority {prio[r]!r}" if isinstance(prio[r], str) else ", no priority"
        raise InputError(source, f"no pool of the cluster accepts this request ({what}); "
                                 f"{unrouted.size} request(s) in all", row=row_offset + r + 1)
    return pool


def policy_configs(config: ClusterConfig) -> tuple[DynamoConfig, PolcaConfig | None]:
    """(DynamoConfig, PolcaConfig or None) from the cluster's [dynamollm] and [polca] tables."""
    from .policies.dynamollm import DynamoConfig
    from .policies.polca import PolcaConfig

    dyn = dict(config.dynamollm)
    for key in ("input_bins", "output_bins", "tps", "clocks"):
        if key in dyn and dyn[key] is not None:
            dyn[key] = tuple(dyn[key])
    polca = PolcaConfig(**config.polca) if "budget_w" in config.polca else None
    return DynamoConfig(**dyn), polca


def load_carbon_series(path: str | Path) -> tuple:
    """(t_s, g_per_kwh) arrays of a grid carbon-intensity CSV, validated."""
    import pyarrow as pa

    from toolkit.schemas import ArtifactSchema, Column
    from toolkit.validation import RowContext, validate_frame

    from toolkit.validation import read_csv_table

    path = Path(path)
    frame = read_csv_table(path)
    schema = ArtifactSchema("carbon_series", 1, (Column("t_s", pa.float64(), nullable=False, minimum=0),
                                                 Column("g_per_kwh", pa.float64(), nullable=False, minimum=0)), sorted_by="t_s")
    table = validate_frame(frame, schema, RowContext(path, 0, 1))
    return table.column("t_s").to_numpy(), table.column("g_per_kwh").to_numpy()


def load_cluster_or_default(path: str | Path | None, bundle=None) -> ClusterConfig:
    """The cluster TOML at ``path``, or without one the cluster an empty TOML describes (every
    default, KV capacity derived from ``bundle``'s model shape as for a pool that leaves it out).
    A bundle naming no model shape keeps the in-code 400,000-token KV cache, labelled as such in
    ``kv_capacity_source`` (never "toml": no TOML said it)."""
    if path:
        return load_cluster(path)
    from .memory_planner import bundle_preset

    if bundle is not None and bundle_preset(bundle) is None:
        config = ClusterConfig()
        pool = config.pools[0]
        return replace(config, pools=[replace(pool, kv_capacity_source=f"default {pool.kv_capacity_tokens:,} tokens (no "
                                                                        "--cluster; the bundle names no model shape)")])
    return cluster_from_dict({}, "default cluster (no --cluster)")


def load_cluster(path: str | Path) -> ClusterConfig:
    """The cluster of a TOML file, validated (see the module docstring); paths in it are relative
    to the file, and a carbon series is checked now rather than after the replay."""
    path = Path(path)
    text = read_text(path, MAX_SETTINGS_BYTES)
    try:
        data = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer of thousands of digits
        raise InputError(path, f"not valid TOML ({exc})") from None
    except RecursionError:
        raise InputError(path, "not valid TOML (nested too deeply)") from None
    config = cluster_from_dict(data, path)
    for pool in config.pools:
        if pool.models and not Path(pool.models).is_absolute():
            pool.models = str(path.parent / pool.models)
    if config.carbon_csv and not Path(config.carbon_csv).is_absolute():
        config.carbon_csv = str(path.parent / config.carbon_csv)  # relative to the TOML file
    if config.carbon_csv:
        load_carbon_series(config.carbon_csv)
    for i, pool in enumerate(config.pools):  # a KVP network profile: relative to the file, checked now
        if pool.kvp_network_csv:
            if not Path(pool.kvp_network_csv).is_absolute():
                pool.kvp_network_csv = str(path.parent / pool.kvp_network_csv)
            from .kvp_combine import load_network_profile

            try:
                load_network_profile(pool.kvp_network_csv)
            except InputError as exc:
                raise InputError(path, f"{exc}", key=f"pool[{i}].kvp_network_csv") from None
    return config
