"""Cluster TOML validation (issue #12): every malformed setting is one line naming the file and
the key, at load - never a traceback, a hang, or a silently impossible replay."""

import os
import tomllib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from replay.config import ClusterConfig, PoolConfig, cluster_from_dict, coverage_gap, load_cluster, policy_configs, route_requests
from replay.policies.polca import PolcaController
from toolkit.errors import InputError, WattlasError
from toolkit.validation import MAX_TOKENS

from .conftest import mutate_document, one_error_line

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TEXTS = {name: (EXAMPLES / name).read_text() for name in ("cluster.toml", "polca_row.toml")}


@pytest.fixture
def replay_inputs(tmp_path):
    """A small valid trace (with priorities) and model bundle for the CLI paths."""
    from tests.test_replay import linear_bundle

    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens,priority\n0.0,100,10,high\n0.5,200,5,low\n1.0,300,8,high\n")
    return trace, linear_bundle().save(tmp_path / "m.json")


# (TOML text, key named in the error, words of the message)
BAD_CLUSTERS = [
    ('[[pool]]\ninstances = "2"\n', "pool[0].instances", "must be an integer (got '2')"),
    ("[[pool]]\ninstances = 2.5\n", "pool[0].instances", "must be an integer (got 2.5)"),
    ("[[pool]]\ninstances = 0\n", "pool[0].instances", "must be >= 1"),
    ("[[pool]]\ninstances = true\n", "pool[0].instances", "must be an integer"),
    ('bin_s = "1"\n', "bin_s", "must be a number (got '1')"),
    ("bin_s = nan\n", "bin_s", "must be finite (got nan)"),
    ("bin_s = 0\n", "bin_s", "must be >= 0.001"),
    ("pue = inf\n", "pue", "must be finite"),
    ("pue = -1\n", "pue", "must be >= 1"),
    ("gpu_hour_usd = -0.5\n", "gpu_hour_usd", "must be >= 0"),
    ("carbon_g_per_kwh = -1\n", "carbon_g_per_kwh", "must be >= 0"),
    ("carbon_g_per_kwh = -inf\n", "carbon_g_per_kwh", "must be finite"),
    ('seed = "x"\n', "seed", "must be an integer (got 'x')"),
    ("seed = -1\n", "seed", "must be >= 0"),
    ("seed = 1" + "0" * 40 + "\n", "seed", "out of range"),
    ("[[pool]]\nname = 5\n", "pool[0].name", "must be a non-empty string (got 5)"),
    ("router = 3\n", "router", "must be one of"),
    ('router = "random"\n', "router", "must be one of"),
    ("pool = [1, 2]\n", "pool[0]", "must be a table"),
    ("pool = 3\n", "pool", "must be a list"),
    ("[pool]\ninstances = 1\n", "pool", "must be a list"),
    ("pool = []\n", "pool", "at least 1"),
    ("[[pool]]\nsm_clock_mhz = -1000\n", "pool[0].sm_clock_mhz", "must be > 0"),
    ("[[pool]]\ntp = 0\n", "pool[0].tp", "must be >= 1"),
    ("[[pool]]\ntp = 1e6\n", "pool[0].tp", "must be <= 1024"),
    ("[[pool]]\ntp = 1e30\n", "pool[0].tp", "out of range"),
    ("[[pool]]\nmax_batch_tokens = -5\n", "pool[0].max_batch_tokens", "must be >= 1"),
    ("[[pool]]\nkv_capacity_tokens = 1e10\n", "pool[0].kv_capacity_tokens", "must be <= 2147483647"),
    ('[[pool]]\nchunk_policy = "greedy"\n', "pool[0].chunk_policy", "must be one of 'fixed', 'adaptive'"),
    ("[[pool]]\ntbt_slo_s = 0\n", "pool[0].tbt_slo_s", "must be > 0"),
    ("[[pool]]\nkvp_combine_s = -1e-3\n", "pool[0].kvp_combine_s", "must be >= 0"),
    ('[[pool]]\npriority = "urgent"\n', "pool[0].priority", "must be one of 'high', 'low'"),
    ("[[pool]]\nmodels = 3\n", "pool[0].models", "must be a non-empty string"),
    ("[[pool]]\nmax_input_tokens = 1e13\n", "pool[0].max_input_tokens", "must be <= 1000000000000"),
    ("[[pool]]\nstandby = true\n", "pool", "every pool is standby"),
    ("[[pool]]\nmax_input_tokens = 4096\n", "pool", "no pool accepts input_tokens > 4096"),
    ("[[pool]]\nmax_output_tokens = 512\n", "pool", "no pool accepts output_tokens > 512"),
    ("[[pool]]\nmax_input_tokens = 4096\n[[pool]]\nmax_output_tokens = 512\n", "pool",
     "no pool accepts input_tokens > 4096 with output_tokens > 512"),
    ("[polca]\ncontrol_s = 0\n", "polca.control_s", "must be >= 0.1"),
    ("[polca]\ncontrol_s = -1\n", "polca.control_s", "must be >= 0.1"),
    ("[polca]\nbudget_w = -3000\n", "polca.budget_w", "must be > 0"),
    ("[polca]\nbudget_w = nan\n", "polca.budget_w", "must be finite"),
    ("[polca]\nt1 = 0.97\nt2 = 0.9\n", "polca.t1", "t1 (0.97) must be <= t2 (0.9)"),
    ("[polca]\nuncap = 0.85\n", "polca.uncap", "uncap (0.85) must be < t1 (0.85)"),
    ("[polca]\nt1 = 0.5\n", "polca.t1", "uncap (0.8) must be < t1 (0.5)"),
    ("[polca]\nt2 = 2.0\n", "polca.t2", "must be <= 1.5"),
    ("[polca]\nuncap = 0\n", "polca.uncap", "must be > 0"),
    ("[polca]\nlow_cap_mhz = 1500\n", "polca.low_cap_mhz", "must be <= high_cap_mhz"),
    ('[polca]\nt1 = "high"\n', "polca.t1", "must be a number"),
    ("[polca]\nbudget = 3000\n", None, "unknown key polca.budget (did you mean budget_w?"),
    ("polca = 3\n", "polca", "must be a table"),
    ("[dynamollm]\nperiod_s = 0\n", "dynamollm.period_s", "must be >= 1"),
    ("[dynamollm]\nreshard = 'yes'\n", "dynamollm.reshard", "must be true or false (got 'yes')"),
    ("[dynamollm]\ninput_bins = [4096, 1024]\n", "dynamollm.input_bins[1]", "must be increasing"),
    ('[dynamollm]\ninput_bins = "1024"\n', "dynamollm.input_bins", "must be a list"),
    ('[dynamollm]\noutput_bins = [128, "512"]\n', "dynamollm.output_bins[1]", "must be an integer"),
    ("[dynamollm]\nutilization_target = 1.5\n", "dynamollm.utilization_target", "must be <= 1"),
    ("[dynamollm]\nreactive_check_s = 0\n", "dynamollm.reactive_check_s", "must be >= 1"),
    ("[dynamollm]\ntps = []\n", "dynamollm.tps", "at least 1"),
    ("[dynamollm]\nclocks = [1980, -1]\n", "dynamollm.clocks[1]", "must be > 0"),
    ("[[pool]]\nchunk_polcy = 'x'\n", None, "unknown key pool[0].chunk_polcy (did you mean chunk_policy?"),
    ("[[pool\n", None, "not valid TOML"),
    ("a = " + "[" * 5000 + "]" * 5000 + "\n", None, "not valid TOML"),
    ("seed = " + "9" * 5000 + "\n", None, "not valid TOML"),
    ("  \n\n", None, "empty file"),
]


@pytest.mark.parametrize("text, key, message", BAD_CLUSTERS)
def test_bad_cluster_setting_is_refused_at_load_naming_file_and_key(tmp_path, text, key, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_cluster(path)
    line = str(err.value)
    assert line.startswith(f"{path}: ") and "\n" not in line
    if key is not None:
        assert f": key {key}: " in line, line
    assert message in line, line


@pytest.mark.parametrize("text, key, message", BAD_CLUSTERS)
def test_replay_run_cli_refuses_a_bad_cluster_in_one_line(tmp_path, replay_inputs, text, key, message):
    from toolkit.cli import cli

    trace, models = replay_inputs
    path = tmp_path / "c.toml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["replay", "run", "--trace", str(trace), "--models", str(models), "--cluster", str(path)])
    one_error_line(result, "c.toml", message, *([f"key {key}"] if key else []))


@pytest.mark.parametrize("text, key, message", [case for case in BAD_CLUSTERS if case[1] and case[1].startswith("polca")])
def test_polca_search_cli_refuses_bad_polca_settings_before_searching(tmp_path, replay_inputs, text, key, message):
    from toolkit.cli import cli

    trace, models = replay_inputs
    path = tmp_path / "row.toml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["replay", "polca-search", "--trace", str(trace), "--models", str(models),
                                      "--cluster", str(path), "--max-extra", "1"])
    one_error_line(result, "row.toml", f"key {key}", message)


def test_non_utf8_directory_and_unreadable_cluster_files(tmp_path, monkeypatch):
    bad = tmp_path / "c.toml"
    bad.write_bytes(b"router = '\xff\xfe'\n")
    with pytest.raises(InputError, match=r"c.toml: not UTF-8 text \(byte 0xff at offset 10\)"):
        load_cluster(bad)
    with pytest.raises(InputError, match="is a directory"):
        load_cluster(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        load_cluster(tmp_path / "missing.toml")
    locked = tmp_path / "locked.toml"
    locked.write_text("seed = 1\n")
    if os.geteuid() != 0:  # root reads anything: simulate the refusal below instead
        locked.chmod(0)
        with pytest.raises(InputError, match="locked.toml: permission denied"):
            load_cluster(locked)
    import toolkit.validation

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(toolkit.validation, "open", denied, raising=False)
    with pytest.raises(InputError, match="locked.toml: permission denied"):
        load_cluster(locked)


def test_carbon_series_that_is_a_directory_is_an_input_error(tmp_path):
    (tmp_path / "grid").mkdir()
    path = tmp_path / "c.toml"
    path.write_text("carbon_csv = 'grid'\n")
    with pytest.raises(InputError, match="grid: cannot read"):
        load_cluster(path)


def test_examples_load_and_keep_their_meaning():
    cluster = load_cluster(EXAMPLES / "cluster.toml")
    assert cluster.pools[0].max_input_tokens >= MAX_TOKENS and cluster.router == "power_of_two"
    dyn, polca = policy_configs(cluster)
    assert dyn.input_bins == (1024, 4096) and dyn.reshard is False and polca is None
    row = load_cluster(EXAMPLES / "polca_row.toml")
    _, polca = policy_configs(row)
    assert polca is None  # (no fixed budget: the row's full-load power, computed when the models are known)
    assert row.polca["budget_source"] == "provisioned_peak"
    assert tuple(row.polca[k] for k in ("t1", "t2", "uncap", "control_s")) == (0.85, 0.95, 0.80, 1.0)
    assert [p.priority for p in row.pools] == ["high", "low"]


def test_unbounded_limits_and_integral_floats_are_accepted():
    config = cluster_from_dict({"pool": [{"name": "short", "max_input_tokens": 4096.0, "instances": 2.0},
                                         {"name": "long", "max_input_tokens": 1e12, "max_output_tokens": 3e9}]})
    assert config.pools[0].instances == 2 and isinstance(config.pools[0].instances, int)
    assert coverage_gap(config.pools) is None


def test_sweep_values_are_validated_like_the_toml():
    from replay.sweep import expand, parse_vary

    with pytest.raises(InputError, match=r"--vary: key pool\[0\].instances: must be an integer \(got 'two'\)"):
        expand(ClusterConfig(), parse_vary(["pool.instances=two"]))
    assert len(expand(load_cluster(EXAMPLES / "polca_row.toml"), parse_vary(["pool.sm_clock_mhz=1980,1410"]))) == 2


def test_polca_search_honours_thresholds_without_a_budget():
    from replay.policies.polca import oversubscription_search

    config = cluster_from_dict({"polca": {"t1": 0.6, "t2": 0.7, "uncap": 0.5}})
    assert policy_configs(config)[1] is None  # no budget: the search derives it ...
    seen = []

    class Summary:
        def __init__(self, controller):
            self.summary = {"peak_instance_power_w": 100.0, "peak_row_power_w": 1.0, "duration_s": 1.0, "energy_kwh": 0.0,
                            "policy": {"peak_row_power_w": 1.0, "over_budget_s": 0.0, "capping_events": 0,
                                       "capped_low_s": 0.0, "capped_all_s": 0.0}}
            import pandas as pd

            self.requests = pd.DataFrame({"dropped": [False], "priority": ["high"], "ttft_s": [1.0], "e2e_s": [1.0]})
            if controller is not None:
                seen.append(controller.config)

    def runner(trace, bundle, cluster, priority=None, controller=None):
        return Summary(controller)

    import pandas as pd

    trace = pd.DataFrame({"arrival_s": [0.0], "input_tokens": [10], "output_tokens": [2], "priority": ["high"]})
    oversubscription_search(trace, None, config, None, max_extra=0, runner=runner)
    assert (seen[0].t1, seen[0].t2, seen[0].uncap, seen[0].budget_w) == (0.6, 0.7, 0.5, 200.0)  # ... and keeps the thresholds


# ------------------------------------------------------------------------ routing coverage

def test_route_requests_refuses_the_first_row_no_pool_accepts():
    config = cluster_from_dict({"pool": [{"name": "high", "priority": "high"}, {"name": "low", "priority": "low"}]})
    inputs, outputs = np.array([10, 20, 30, 40]), np.array([1, 2, 3, 4])
    assert route_requests(config, inputs, outputs).tolist() == [0, 0, 0, 0]  # no priorities in the trace: any pool
    assert route_requests(config, inputs, outputs, np.array(["low", "high", "low", "high"], dtype=object)).tolist() == [1, 0, 1, 0]
    with pytest.raises(InputError, match=r"t.csv: row 3: no pool of the cluster accepts this request "
                                         r"\(input_tokens 30, output_tokens 3, priority 'medium'\); 2 request\(s\) in all"):
        route_requests(config, inputs, outputs, np.array(["low", "high", "medium", None], dtype=object), source="t.csv")
    split = ClusterConfig(pools=[PoolConfig(name="short", max_input_tokens=100)])  # built in code: not checked at load
    with pytest.raises(InputError, match=r"row 2: .*input_tokens 200"):
        route_requests(split, np.array([50, 200]), np.array([5, 5]))


def _engine_routing(config, inputs, outputs, priority=None):
    """The engine's routing, when it is importable under its old name (for agreement)."""
    from replay import engine

    return engine._route_pools(config, inputs, outputs, priority) if hasattr(engine, "_route_pools") else None


limits = st.one_of(st.integers(1, 5000), st.just(10**12))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(limits, limits), min_size=1, max_size=4))
def test_coverage_gap_agrees_with_routing(pool_limits):
    """Load-time coverage and run-time routing agree: no gap exactly when every probe length
    (at, just above each limit, and the largest) has a pool; a named gap is really uncovered."""
    pools = [PoolConfig(name=str(i), max_input_tokens=a, max_output_tokens=b) for i, (a, b) in enumerate(pool_limits)]
    config = ClusterConfig(pools=pools)
    edges = sorted({1, MAX_TOKENS} | {min(v + d, MAX_TOKENS) for a, b in pool_limits for v in (a, b) for d in (0, 1)})
    grid_in, grid_out = (g.ravel() for g in np.meshgrid(edges, edges))
    gap = coverage_gap(pools)
    try:
        routed = route_requests(config, grid_in, grid_out)
        assert gap is None, gap
        expected = _engine_routing(config, grid_in, grid_out)
        if expected is not None:
            assert routed.tolist() == expected.tolist()
    except InputError:
        assert gap is not None and gap.startswith("no pool accepts ")
        # the gap names thresholds: one past them is uncovered
        words = gap.split()
        bound = {words[i - 1]: int(words[i + 1]) for i, w in enumerate(words) if w == ">"}
        probe_in, probe_out = bound.get("input_tokens", 0) + 1, bound.get("output_tokens", 0) + 1
        with pytest.raises(InputError):
            route_requests(config, np.array([probe_in]), np.array([probe_out]))


# ------------------------------------------------------------------------ property: mutations

SCALARS = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.text(max_size=8), st.just(float("nan")), st.just(1e300), st.just(-1), st.just(0), st.just(10**400),
    st.lists(st.integers(-5, 5000), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _assert_usable(config: ClusterConfig) -> None:
    """A config that loaded can be used: policies build, and their control loops move forward."""
    assert isinstance(config, ClusterConfig) and config.pools and coverage_gap(config.pools) is None
    assert config.bin_s > 0 and all(p.instances >= 1 for p in config.pools)
    dyn, polca = policy_configs(config)
    assert dyn.period_s > 0 and dyn.reactive_check_s > 0
    if polca is not None:  # a bounded run of the controller: its clock must advance every step

        class Row:
            instances = []

            def row_power(self, t, window):
                return polca.budget_w * (0.5 + t % 3 / 2)

        controller, t = PolcaController(polca), 0.0
        for _ in range(5):
            controller.act(t, Row())
            assert controller.next_time() > t
            t = controller.next_time()


def _load_mutated(tmp_path, name: str, data: dict):
    try:
        config = cluster_from_dict(data, tmp_path / name)
    except WattlasError as exc:
        event("refused")
        assert "\n" not in str(exc) and "np.float64" not in str(exc)
        return
    event("loaded")
    _assert_usable(config)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(TEXTS)), pick=st.integers(0, 10**6), action=st.sampled_from(["replace", "delete"]),
       value=SCALARS)
def test_mutated_cluster_settings_load_or_fail_as_input_errors(tmp_path, name, pick, action, value):
    data = tomllib.loads(TEXTS[name])
    mutate_document(data, pick, action, value)
    _load_mutated(tmp_path, name, data)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(TEXTS)), cut=st.integers(0, 10**6), junk=st.binary(max_size=12),
       action=st.sampled_from(["truncate", "insert", "overwrite"]))
def test_mutated_cluster_files_load_or_fail_as_input_errors(tmp_path, name, cut, junk, action):
    raw = TEXTS[name].encode()
    at = cut % (len(raw) + 1)
    text = {"truncate": raw[:at], "insert": raw[:at] + junk + raw[at:],
            "overwrite": raw[:at] + junk + raw[at + len(junk):]}[action]
    path = tmp_path / name
    path.write_bytes(text)
    try:
        config = load_cluster(path)
    except WattlasError as exc:
        event("refused")
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        return
    event("loaded")
    _assert_usable(config)
