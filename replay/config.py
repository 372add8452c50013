"""Cluster configuration for replay, from TOML, with errors that name the file and key.

```toml
router = "power_of_two"          # JSQ over 2 random instances; or "least_loaded" (all), "round_robin"
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
kvp_combine_s = 0.00032          # per iteration with kvp > 1: combining partial attention (estimate)
models = "h100.json"             # this pool's model bundle (GPU type); default: the --models bundle
sm_clock_mhz = 1980              # omit: the highest profiled clock
max_batch_tokens = 4096          # token budget of one iteration (decodes + prefill chunk)
max_batch_size = 256             # sequences in flight per instance
kv_capacity_tokens = 400000      # KV cache (tokens) of one TP group; an instance holds x pp x kvp
chunk_policy = "fixed"           # or "adaptive" (Mnemosyne: largest chunk within tbt_slo_s)
chunk_size = 2048
ttft_slo_s = 2.0
tbt_slo_s = 0.05
max_input_tokens = 1e12          # requests are routed to the first pool that accepts them
max_output_tokens = 1e12
priority = "high"                # only requests of this priority (POLCA pools); omit: any

[dynamollm]                      # --policy dynamollm (replay/policies/dynamollm.py)
input_bins = [1024, 4096]
output_bins = [128, 512]
period_s = 300
utilization_target = 0.7
scale_out_s = 30                 # an activated instance powers on now, takes requests this much later
power_off_inactive = true        # instances beyond the active count power off once drained
reshard = false                  # true: also pick each class's TP every period (re-sharding its GPUs)
reshard_s = 30                   # a new TP layout loads its weights this long

[polca]                          # --policy polca (replay/policies/polca.py)
budget_w = 3000                  # row power budget; omit: the servers' full-load power
t1 = 0.85
t2 = 0.95
uncap = 0.80
```
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from toolkit.errors import InputError


# KVP: combining the groups' partial attention per iteration - one small NVLink collective per
# layer, ~10 us each on H100 for a 32-layer model (an estimate, not a measurement)
KVP_COMBINE_S = 3.2e-4


@dataclass
class PoolConfig:
    name: str = "default"
    instances: int = 2
    tp: int = 1
    pp: int = 1
    kvp: int = 1
    kvp_combine_s: float = KVP_COMBINE_S
    models: str | None = None
    sm_clock_mhz: float | None = None
    max_batch_tokens: int = 4096
    max_batch_size: int = 256
    kv_capacity_tokens: int = 400_000
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

    def check(self, where: str, source) -> None:
        problems = [
            (self.instances >= 1, "instances", "must be >= 1"),
            (self.tp >= 1, "tp", "must be >= 1"),
            (self.pp >= 1, "pp", "must be >= 1"),
            (self.kvp >= 1, "kvp", "must be >= 1"),
            (self.max_batch_tokens >= 1, "max_batch_tokens", "must be >= 1"),
            (self.max_batch_size >= 1, "max_batch_size", "must be >= 1"),
            (self.kv_capacity_tokens >= 1, "kv_capacity_tokens", "must be >= 1"),
            (self.chunk_policy in ("fixed", "adaptive"), "chunk_policy", "must be 'fixed' or 'adaptive'"),
            (self.chunk_size >= 1, "chunk_size", "must be >= 1"),
            (self.tbt_slo_s > 0 and self.ttft_slo_s > 0, "tbt_slo_s", "SLOs must be > 0"),
            (self.kvp_combine_s >= 0, "kvp_combine_s", "must be >= 0"),
        ]
        for ok, key, message in problems:
            if not ok:
                raise InputError(source, f"{where}.{key} {message}")


@dataclass
class ClusterConfig:
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
        return sum(p.instances for p in self.pools)


def _build(cls, data: dict, where: str, source):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(source, f"unknown key {where + '.' if where else ''}{unknown[0]} (known: {', '.join(sorted(known))})")
    try:
        return cls(**data)
    except TypeError as exc:
        raise InputError(source, f"bad {where or 'cluster'} settings ({exc})") from None


def cluster_from_dict(data: dict, source: str | Path | None = None) -> ClusterConfig:
    data = dict(data)
    pools = [_build(PoolConfig, p, f"pool[{i}]", source) for i, p in enumerate(data.pop("pool", [{}]))]
    config = _build(ClusterConfig, data, "", source)
    config.pools = pools
    for i, pool in enumerate(pools):
        pool.check(f"pool[{i}]", source)
    if config.router not in ("power_of_two", "least_loaded", "round_robin"):
        raise InputError(source, "router must be 'power_of_two', 'least_loaded' or 'round_robin'")
    if config.bin_s <= 0:
        raise InputError(source, "bin_s must be > 0")
    from .policies.dynamollm import DynamoConfig
    from .policies.polca import PolcaConfig

    for key, message in _build(DynamoConfig, config.dynamollm, "dynamollm", source).problems():
        raise InputError(source, f"dynamollm.{key} {message}")
    _build(PolcaConfig, {"budget_w": 1.0, **config.polca}, "polca", source)
    return config


def policy_configs(config: ClusterConfig):
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
    import pandas as pd
    import pyarrow as pa

    from toolkit.schemas import ArtifactSchema, Column
    from toolkit.validation import RowContext, validate_frame

    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable CSV ({exc})") from None
    schema = ArtifactSchema("carbon_series", 1, (Column("t_s", pa.float64(), nullable=False, minimum=0),
                                                 Column("g_per_kwh", pa.float64(), nullable=False, minimum=0)), sorted_by="t_s")
    table = validate_frame(frame, schema, RowContext(path, 0, 1))
    return table.column("t_s").to_numpy(), table.column("g_per_kwh").to_numpy()


def load_cluster(path: str | Path) -> ClusterConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, f"not valid TOML ({exc})") from None
    config = cluster_from_dict(data, path)
    for pool in config.pools:
        if pool.models and not Path(pool.models).is_absolute():
            pool.models = str(path.parent / pool.models)
    if config.carbon_csv and not Path(config.carbon_csv).is_absolute():
        config.carbon_csv = str(path.parent / config.carbon_csv)  # relative to the TOML file
    if config.carbon_csv:
        load_carbon_series(config.carbon_csv)  # a bad series fails now, not after the replay
    return config
