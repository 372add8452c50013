"""Versioned Arrow schemas for every artifact wattlas reads or writes.

Each artifact file carries its schema name and version in the Parquet key-value metadata
(``wattlas.schema``, ``wattlas.schema_version``) so readers can refuse files they do not
understand instead of guessing.  A field's ``minimum`` is enforced by validation; units are
part of the column name (``_s``, ``_w``, ``_j``, ``_mhz``) so nobody has to guess them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

SCHEMA_KEY = b"wattlas.schema"
VERSION_KEY = b"wattlas.schema_version"
SIMULATED_KEY = b"wattlas.simulated"


@dataclass(frozen=True)
class Column:
    """One column of an artifact schema.

    ``nullable``: whether cells may be null; ``required``: whether the column must be present
    (optional columns are written only when there is data for them); ``minimum``/``maximum``:
    inclusive bounds that validation enforces (None: unbounded); ``integral``: values must be
    whole numbers; ``doc``: what the column holds, for people.
    """

    name: str
    type: pa.DataType
    nullable: bool = True
    required: bool = True
    minimum: float | None = None
    integral: bool = False
    doc: str = ""
    maximum: float | None = None


@dataclass(frozen=True)
class ArtifactSchema:
    """A named, versioned artifact layout: its columns, the column rows are sorted by (None:
    unsorted) and a description.  ``by_name`` maps column names to columns."""

    name: str
    version: int
    columns: tuple[Column, ...]
    sorted_by: str | None = None
    doc: str = ""
    by_name: dict[str, Column] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {c.name: c for c in self.columns})

    @property
    def required_names(self) -> list[str]:
        """Names of the columns every file of this schema must have, in schema order."""
        return [c.name for c in self.columns if c.required]

    def arrow(self, names: list[str] | None = None, metadata: dict[str, str] | None = None) -> pa.Schema:
        """Arrow schema of the given columns (all required + present optional ones)."""
        cols = [c for c in self.columns if names is None or c.name in names]
        meta = {SCHEMA_KEY: self.name.encode(), VERSION_KEY: str(self.version).encode()}
        for key, value in (metadata or {}).items():
            meta[key.encode() if isinstance(key, str) else key] = str(value).encode()
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in cols], metadata=meta)


def _f64(name: str, doc: str = "", minimum: float | None = None, **kw) -> Column:
    return Column(name, pa.float64(), minimum=minimum, doc=doc, **kw)


def _i64(name: str, doc: str = "", minimum: float | None = 0, **kw) -> Column:
    return Column(name, pa.int64(), minimum=minimum, integral=True, doc=doc, **kw)


# = toolkit.validation.MAX_TOKENS (validation imports this module, so it cannot be imported here;
# a test keeps the two equal): far above any context served, far below int64 overflow.
TRACE_MAX_TOKENS = 2**31 - 1

REQUEST_TRACE = ArtifactSchema(
    name="request_trace",
    version=1,
    sorted_by="arrival_s",
    doc="One row per inference request; arrival relative to the trace start (metadata wattlas.trace_start).",
    columns=(
        _i64("request_id", "row index in the source trace", nullable=False),
        _f64("arrival_s", "seconds since the trace start", minimum=0, nullable=False),
        _i64("input_tokens", "prompt (context) tokens", nullable=False, maximum=TRACE_MAX_TOKENS),
        _i64("output_tokens", "generated tokens", nullable=False, maximum=TRACE_MAX_TOKENS),
        Column("priority", pa.string(), required=False, doc="'high' or 'low' (POLCA capping order)"),
    ),
)

TELEMETRY_SAMPLES = ArtifactSchema(
    name="telemetry_samples",
    version=1,
    doc="One row per GPU per sampling tick. Unsupported readings are null, never 0.",
    columns=(
        Column("host", pa.string(), nullable=False),
        Column("backend", pa.string(), nullable=False, doc="'nvml' (real GPU) or 'sim' (simulated device)"),
        _i64("gpu_index", nullable=False),
        Column("gpu_uuid", pa.string()),
        Column("gpu_name", pa.string()),
        _f64("t_wall_s", "host wall clock, Unix seconds", nullable=False),
        _i64("t_mono_ns", "host monotonic clock", nullable=False),
        _i64("nvml_timestamp_us", "timestamp NVML attached to the instant-power field"),
        _f64("power_instant_w", minimum=0),
        _f64("power_avg_w", "NVML's 1-s averaged board power", minimum=0),
        _f64("energy_j", "cumulative energy counter since driver load", minimum=0),
        _f64("power_limit_w", minimum=0),
        _f64("enforced_power_limit_w", minimum=0),
        _f64("sm_clock_mhz", minimum=0),
        _f64("mem_clock_mhz", minimum=0),
        _i64("clocks_event_reasons", "NVML clocks event (throttle) reason bitmask"),
        _i64("pstate"),
        _f64("gpu_util_pct", minimum=0),
        _f64("mem_util_pct", minimum=0),
        _i64("mem_used_bytes"),
        _i64("mem_total_bytes"),
        _f64("temp_gpu_c"),
        _f64("temp_mem_c"),
        _f64("pcie_tx_kbps", minimum=0),
        _f64("pcie_rx_kbps", minimum=0),
        _i64("nvlink_tx_kib", "cumulative NVLink transmitted KiB, all links"),
        _i64("nvlink_rx_kib", "cumulative NVLink received KiB, all links"),
        Column("power_scope", pa.string(), required=False,
               doc="what the power readings cover: 'gpu'; 'module' (Grace Hopper: GPU + Grace CPU + memory); "
                   "', MIG-partitioned' appended when the GPU is split into MIG instances (NVML meters the whole GPU)"),
        _i64("energy_epoch", "counter epoch: +1 whenever energy_j restarts (it went backwards, or NVML was "
             "re-initialized after a driver reload); deltas are only taken within one epoch", required=False),
        Column("status", pa.string(), doc="null while healthy; otherwise why the row holds no reading "
               "('lost: ...', 'driver_unavailable: ...', 'read_error: ...', 'gap: ...')"),
    ),
)

PHASE_WINDOWS = ArtifactSchema(
    name="phase_windows",
    version=1,
    doc="Named time windows (phases) and the energy measured inside each, per GPU.",
    columns=(
        Column("run_id", pa.string(), nullable=False),
        Column("window", pa.string(), nullable=False),
        _i64("gpu_index", nullable=False),
        Column("backend", pa.string(), nullable=False),
        _f64("start_wall_s", nullable=False),
        _f64("end_wall_s", nullable=False),
        _f64("duration_s", minimum=0),
        _f64("energy_j", minimum=0),
        Column("energy_method", pa.string(), doc="'counter' (TotalEnergyConsumption delta) or 'integrated_power'"),
        _f64("mean_power_w", minimum=0),
        _f64("peak_power_w", minimum=0),
        _i64("n_samples"),
        Column("attrs_json", pa.string(), doc="user attributes of the window, JSON object"),
    ),
)

PROFILE_ITERATIONS = ArtifactSchema(
    name="profile_iterations",
    version=1,
    doc="One row per measured model iteration of the profiler (prefill chunk, decode step or mixed batch).",
    columns=(
        Column("run_id", pa.string(), nullable=False),
        Column("backend", pa.string(), nullable=False),
        Column("gpu_name", pa.string()),
        Column("model", pa.string(), nullable=False),
        Column("phase", pa.string(), nullable=False, doc="'prefill', 'decode', 'mixed' or 'idle' (the GPU between iterations: power only)"),
        _i64("chunk_tokens", "c: prefill tokens in this iteration", nullable=False),
        _i64("prefix_tokens", "p: KV prefix the chunk attends to", nullable=False),
        _i64("batch_size", "b: decode sequences in this iteration", nullable=False),
        _i64("kv_tokens", "k: KV length of each decode sequence", nullable=False),
        _i64("tp", "tensor-parallel degree", nullable=False, minimum=1),
        _f64("sm_clock_mhz", "SM clock NVML reported after locking it, null when unlocked", minimum=0),
        _f64("power_limit_w", "power limit read back after setting it", minimum=0),
        _f64("requested_sm_clock_mhz", "SM clock the sweep asked for, null when unlocked", minimum=0),
        _f64("requested_power_limit_w", "power limit the sweep asked for, null when default", minimum=0),
        _i64("repeat", nullable=False),
        _i64("iterations_per_repeat", "back-to-back iterations in this repeat's energy window (null: 1)", minimum=1),
        _f64("latency_s", "per iteration: the repeat's time / iterations_per_repeat", nullable=False, minimum=0),
        _f64("energy_j", "per iteration: the repeat window's energy / iterations_per_repeat", minimum=0),
        Column("energy_method", pa.string()),
        _f64("mean_power_w", minimum=0),
        _f64("peak_power_w", minimum=0),
        _i64("gpu_index", "NVML index of the profiled GPU (null off a GPU)"),
        _f64("window_start_wall_s", "the repeat's energy window, Unix seconds: joins the telemetry"),
        _f64("window_end_wall_s"),
        _f64("observed_sm_clock_mhz", "mean SM clock the telemetry saw inside the window", minimum=0),
        _f64("power_capped_share", "share of the window's samples with the SW power-cap reason set", minimum=0),
        _f64("max_temp_gpu_c", "hottest GPU temperature the telemetry saw inside the window"),
    ),
)

REPLAY_REQUESTS = ArtifactSchema(
    name="replay_requests",
    version=1,
    doc="Per-request outcome of a replay.",
    columns=(
        _i64("request_id", nullable=False),
        Column("pool", pa.string()),
        _i64("instance"),
        Column("priority", pa.string()),
        _f64("arrival_s", nullable=False, minimum=0),
        _i64("input_tokens", nullable=False),
        _i64("output_tokens", nullable=False),
        _f64("first_token_s"),
        _f64("finish_s"),
        _f64("ttft_s", minimum=0),
        _f64("tbt_mean_s", "mean time between this request's tokens", minimum=0),
        _f64("tbt_max_s", "longest gap between two of this request's tokens", minimum=0),
        _f64("e2e_s", minimum=0),
        _f64("energy_j", minimum=0),
        Column("dropped", pa.bool_(), nullable=False),
        Column("drop_reason", pa.string()),
    ),
)

POWER_TIMELINE = ArtifactSchema(
    name="power_timeline",
    version=2,
    doc="Mean power per instance over runs of equal time bins (energy in the bins / their width): an idle "
        "stretch is one row, so the file's size follows what happened, not the trace's time span.",
    columns=(
        Column("pool", pa.string(), nullable=False),
        _i64("instance", nullable=False),
        _f64("t_s", "start of the run, seconds since trace start", nullable=False, minimum=0),
        _f64("duration_s", "length of the run: a whole number of bins (summary.json bin_s)", nullable=False, minimum=0),
        _f64("power_w", "mean power of the instance's GPUs together", minimum=0),
    ),
)

ENGINE_LOAD = ArtifactSchema(
    name="engine_load",
    version=1,
    doc="A serving engine's load over time (imported vLLM /metrics scrapes), one row per engine per scrape.",
    columns=(
        Column("host", pa.string(), nullable=False),
        Column("engine", pa.string(), nullable=False, doc="the engine's model_name (and engine index) labels"),
        _f64("t_wall_s", "scrape time, Unix seconds", nullable=False),
        _f64("running_requests", "requests being generated (vllm:num_requests_running)", minimum=0),
        _f64("waiting_requests", "requests queued (vllm:num_requests_waiting)", minimum=0),
        _f64("kv_cache_usage", "fraction of the KV cache in use, 0-1", minimum=0),
    ),
)

ALL_SCHEMAS = {s.name: s for s in (REQUEST_TRACE, TELEMETRY_SAMPLES, PHASE_WINDOWS, PROFILE_ITERATIONS, REPLAY_REQUESTS,
                                   POWER_TIMELINE, ENGINE_LOAD)}
