"""Model-bundle JSON validation (issue #12): a bundle is checked whole at load - structure, kinds,
terms, one finite coefficient per term, power parameters in range - and ``predict`` never prints an
impossible number; every fault is one line naming the file and the key."""

import copy
import json
import os
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from characterize.model_io import ModelBundle
from toolkit.errors import InputError, WattlasError

from .conftest import mutate_document, one_error_line


@pytest.fixture(scope="module")
def bundle_json():
    """A valid bundle of every model kind, fitted on a small simulated profile, as JSON data."""
    from characterize.fitting import fit_bundle
    from characterize.importers import from_profile
    from characterize.trees import TreeEnsembleModel
    from collectors.profiling.sim_profile import simulate_profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = from_profile(simulate_profile("llama3-8b", "quick"))
        bundle = fit_bundle(frame, {"simulated": True}, tree_estimators=3)
        decode = frame[frame["phase"] == "decode"]
        bundle.models.append(TreeEnsembleModel.fit(decode.assign(phase="decode_trees"), "latency_s", "decode_trees",
                                                   n_estimators=3, max_depth=3))
    data = bundle.to_json()
    kinds = [m["kind"] for m in data["models"]]
    assert {"terms", "roofline", "power_saturating", "gbr_trees"} <= set(kinds)
    return json.loads(json.dumps(data))


def index_of(data, kind, phase=None):
    return next(i for i, m in enumerate(data["models"]) if m["kind"] == kind and (phase is None or m["phase"] == phase))


def write(tmp_path, data, name="m.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))  # (NaN and Infinity as JSON allows them)
    return path


def cli(*args):
    from toolkit.cli import cli as root

    return CliRunner().invoke(root, [str(a) for a in args])


def _set(path, value):
    def mutate(data):
        *parents, last = path(data)
        target = data
        for part in parents:
            target = target[part]
        target[last] = value
    return mutate


def _both(first, second):
    def mutate(data):
        first(data)
        second(data)
    return mutate


def _del(path):
    def mutate(data):
        *parents, last = path(data)
        target = data
        for part in parents:
            target = target[part]
        del target[last]
    return mutate


T = lambda d: index_of(d, "terms")  # noqa: E731
R = lambda d: index_of(d, "roofline")  # noqa: E731
P = lambda d: index_of(d, "power_saturating")  # noqa: E731
G = lambda d: index_of(d, "gbr_trees")  # noqa: E731


# (mutation, key path the error names (a function of the data, for model indices), words of the message)
BAD_BUNDLES = [
    (_set(lambda d: ["schema_version"], "1"), lambda d: "schema_version", "must be an integer (got '1')"),
    (_set(lambda d: ["schema_version"], 2), lambda d: "schema_version", "newer than this wattlas understands"),
    (_set(lambda d: ["schema_version"], 0), lambda d: "schema_version", "must be >= 1"),
    (_set(lambda d: ["models"], {}), lambda d: "models", "must be a list"),
    (_set(lambda d: ["models"], "prefill"), lambda d: "models", "must be a list"),
    (_set(lambda d: ["models", 0], "terms"), lambda d: "models[0]", "must be a table"),
    (_set(lambda d: ["metadata"], []), lambda d: "metadata", "must be a table"),
    (_set(lambda d: ["metadata", "simulated"], "yes"), lambda d: "metadata.simulated", "must be true or false"),
    (_set(lambda d: ["validation", "latency_s/decode"], 5), lambda d: "validation.latency_s/decode", "must be a table"),
    (_set(lambda d: ["validation", "latency_s/decode", "physical", "cv_mape"], float("nan")),
     lambda d: "validation.latency_s/decode.physical.cv_mape", "must be finite"),
    (_set(lambda d: ["models", T(d), "kind"], "magic"), lambda d: f"models[{T(d)}].kind", "must be one of"),
    (_set(lambda d: ["models", T(d), "kind"], "power_saturating"), lambda d: f"models[{T(d)}].kind", "cannot predict latency_s"),
    (_set(lambda d: ["models", T(d), "target"], 3), lambda d: f"models[{T(d)}].target", "must be one of"),
    (_set(lambda d: ["models", T(d), "terms"], ["__import__('os').system('true')"]), lambda d: f"models[{T(d)}].terms[0]",
     "bad model term"),
    (_set(lambda d: ["models", T(d), "terms"], "1, b"), lambda d: f"models[{T(d)}].terms", "must be a list"),
    (_set(lambda d: ["models", T(d), "terms"], []), lambda d: f"models[{T(d)}].terms", "at least 1"),
    (_set(lambda d: ["models", T(d), "group_keys"], ["gpu"]), lambda d: f"models[{T(d)}].group_keys[0]", "must be one of"),
    (_set(lambda d: ["models", T(d), "groups"], {"tp": 1}), lambda d: f"models[{T(d)}].groups", "must be a list"),
    (_set(lambda d: ["models", T(d), "groups", 0, "coef"], [0.01, 1e-5]), lambda d: f"models[{T(d)}].groups[0].coef",
     "must have one coefficient per term"),
    (_set(lambda d: ["models", T(d), "groups", 0, "coef", 3], float("nan")), lambda d: f"models[{T(d)}].groups[0].coef[3]",
     "must be finite (got nan)"),
    (_set(lambda d: ["models", T(d), "groups", 0, "coef", 1], float("inf")), lambda d: f"models[{T(d)}].groups[0].coef[1]",
     "must be finite"),
    (_set(lambda d: ["models", T(d), "groups", 0, "coef", 0], "0.006"), lambda d: f"models[{T(d)}].groups[0].coef[0]",
     "must be a number (got '0.006')"),
    (_set(lambda d: ["models", T(d), "groups", 0, "cov"], [[0.0]]), lambda d: f"models[{T(d)}].groups[0].cov", "one row per term"),
    (_set(lambda d: ["models", T(d), "groups", 0, "cov", 2, 2], None), lambda d: f"models[{T(d)}].groups[0].cov[2][2]",
     "must be a number"),
    (_set(lambda d: ["models", T(d), "groups", 0, "df_resid"], 0), lambda d: f"models[{T(d)}].groups[0].df_resid", "must be > 0"),
    # the transferring family has TP and clock as variables, not group keys: key a group by them to test their checks
    (_set(lambda d: ["models", T(d), "group_keys"], ["tp"]), lambda d: f"models[{T(d)}].groups[0].key.tp", "missing"),
    (_both(_set(lambda d: ["models", T(d), "group_keys"], ["sm_clock_mhz"]),
           _set(lambda d: ["models", T(d), "groups", 0, "key", "sm_clock_mhz"], -1980)),
     lambda d: f"models[{T(d)}].groups[0].key.sm_clock_mhz", "must be > 0"),
    (_set(lambda d: ["models", T(d), "support", "sm_clock_mhz"], [1980, 1410]), lambda d: f"models[{T(d)}].support.sm_clock_mhz",
     "is above the highest"),
    (_set(lambda d: ["models", T(d), "support", "tp"], [0]), lambda d: f"models[{T(d)}].support.tp[0]", "must be >= 1"),
    (_set(lambda d: ["models", R(d), "memory_terms"], ["1", "p", "z"]), lambda d: f"models[{R(d)}].memory_terms[2]", "bad model term"),
    (_set(lambda d: ["models", R(d), "groups", 0, "memory_coef"], [0.004]), lambda d: f"models[{R(d)}].groups[0].memory_coef",
     "must have one coefficient per term"),
    (_set(lambda d: ["models", P(d), "groups", 0, "params", 2], 0), lambda d: f"models[{P(d)}].groups[0].params[2]", "must be > 0"),
    (_set(lambda d: ["models", P(d), "groups", 0, "params", 0], -50), lambda d: f"models[{P(d)}].groups[0].params[0]", "must be >= 0"),
    (_set(lambda d: ["models", P(d), "groups", 0, "params", 1], -500), lambda d: f"models[{P(d)}].groups[0].params[1]", "must be >= 0"),
    (_set(lambda d: ["models", P(d), "groups", 0, "params", 3], 2.5), lambda d: f"models[{P(d)}].groups[0].params[3]", "must be <= 1"),
    (_set(lambda d: ["models", P(d), "groups", 0, "params", 0], 1e9), lambda d: f"models[{P(d)}].groups[0].params[0]", "must be <= 10000"),
    (_set(lambda d: ["models", P(d), "groups", 0, "params"], [90, 500, 300]), lambda d: f"models[{P(d)}].groups[0].params",
     "has 3 parameters, expected 4"),
    (_set(lambda d: ["models", P(d), "f_ref"], -1), lambda d: f"models[{P(d)}].f_ref", "must be > 0"),
    (_set(lambda d: ["models", P(d), "load_column"], "__class__"), lambda d: f"models[{P(d)}].load_column", "must be one of"),
    (_set(lambda d: ["models", G(d), "trees", 0, "left", 0], 0), lambda d: f"models[{G(d)}].trees[0].left[0]",
     "child must be a later node"),
    (_set(lambda d: ["models", G(d), "trees", 0, "feature", 0], 99), lambda d: f"models[{G(d)}].trees[0].feature[0]",
     "splits on feature 99"),
    (_set(lambda d: ["models", G(d), "trees", 0, "value"], [0.0]), lambda d: f"models[{G(d)}].trees[0].value", "has 1 entries"),
    (_set(lambda d: ["models", G(d), "trees", 0, "threshold", 0], float("-inf")), lambda d: f"models[{G(d)}].trees[0].threshold[0]",
     "must be finite"),
    (_set(lambda d: ["models", G(d), "features"], ["tp", "tp"]), lambda d: f"models[{G(d)}].features[1]", "listed twice"),
    (_set(lambda d: ["models", G(d), "learning_rate"], 0), lambda d: f"models[{G(d)}].learning_rate", "must be > 0"),
    (_set(lambda d: ["models", G(d), "phase"], "decode"), lambda d: f"models[{G(d)}]", "a second latency_s model for phase 'decode'"),
]


@pytest.mark.parametrize("case", range(len(BAD_BUNDLES)))
def test_bad_bundle_is_refused_at_load_naming_file_and_key(tmp_path, bundle_json, case):
    mutate, key, message = BAD_BUNDLES[case]
    data = copy.deepcopy(bundle_json)
    expected_key = key(data)
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(InputError) as err:
        ModelBundle.load(path)
    line = str(err.value)
    assert line.startswith(f"{path}: key {expected_key}: ") and "\n" not in line, line
    assert message in line, line
    for command in (["show", path], ["predict", path, "--phase", "prefill", "-c", "512", "--tp", "1"]):
        one_error_line(cli("characterize", *command), "m.json", f"key {expected_key}", message)


@pytest.mark.parametrize("text, message", [
    ("", "empty file"),
    ("   \n", "empty file"),
    ("{", "not a JSON model bundle"),
    ("[1, 2]", "not a wattlas model bundle"),
    ('"wattlas.model_bundle"', "not a wattlas model bundle"),
    ("{}", "not a wattlas model bundle"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"schema": "wattlas.model_bundle", "schema_version": 1, "models": [' + "[" * 50_000 + "]" * 50_000 + "]}",
     "nested too deeply"),
    ('{"schema": "wattlas.model_bundle", "schema_version": 1, "n": ' + "9" * 5000 + "}", "not a JSON model bundle"),
    ('{"schema": "wattlas.model_bundle", "schema_version": 1' + "0" * 400 + "}", "out of range"),
])
def test_unreadable_bundle_text_is_one_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(InputError, match=message):
        ModelBundle.load(path)
    one_error_line(cli("characterize", "show", path), "m.json", message)


def test_bundle_that_is_a_directory_not_utf8_or_unreadable(tmp_path, monkeypatch):
    one_error_line(cli("characterize", "show", tmp_path), "is a directory")
    bad = tmp_path / "b.json"
    bad.write_bytes(b'{"schema": "\xff"}')
    one_error_line(cli("characterize", "predict", bad, "--phase", "prefill"), "b.json", "not UTF-8 text (byte 0xff at offset 12)")
    locked = tmp_path / "locked.json"
    locked.write_text("{}")
    if os.geteuid() != 0:  # root reads anything: the simulated refusal below covers it
        locked.chmod(0)
        one_error_line(cli("characterize", "show", locked), "locked.json", "permission denied")
    import toolkit.validation

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(toolkit.validation, "open", denied, raising=False)
    one_error_line(cli("characterize", "show", locked), "locked.json", "permission denied")


def test_replay_run_refuses_a_bad_bundle_in_one_line(tmp_path, bundle_json):
    data = copy.deepcopy(bundle_json)
    data["models"][P(data)]["groups"][0]["params"][2] = 0  # load0 = 0 divides by zero
    models = write(tmp_path, data)
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens\n0.0,100,10\n")
    one_error_line(cli("replay", "run", "--trace", trace, "--models", models), "m.json", "params[2]", "must be > 0")


def test_valid_bundle_round_trips_and_predicts(tmp_path, bundle_json):
    path = write(tmp_path, bundle_json)
    bundle = ModelBundle.load(path)
    assert [m.kind for m in bundle.models] == [m["kind"] for m in bundle_json["models"]]
    assert json.loads(json.dumps(bundle.to_json())) == bundle_json
    shown = cli("characterize", "show", path)
    assert shown.exit_code == 0 and "p_idle_w=" in shown.output, shown.output
    out = cli("characterize", "predict", path, "--phase", "prefill", "-c", "2048", "--tp", "1")
    assert out.exit_code == 0 and "latency" in out.output and "nan" not in out.output, out.output


@pytest.mark.parametrize("coef, phase, point, what", [
    (-1.0, "decode", ["-b", "4", "-k", "100"], "latency"),  # a negative intercept outweighs the rest
    (1e308, "decode", ["-b", "4", "-k", "100"], "latency"),  # finite coefficients, an infinite prediction
])
def test_predict_refuses_impossible_values(tmp_path, bundle_json, coef, phase, point, what):
    data = copy.deepcopy(bundle_json)
    for group in data["models"][T(data)]["groups"]:
        group["coef"] = [coef] * len(group["coef"]) if coef > 1 else [coef] + group["coef"][1:]
    path = write(tmp_path, data)
    ModelBundle.load(path)  # finite coefficients: the bundle loads ...
    result = cli("characterize", "predict", path, "--phase", phase, "--tp", "1", *point)
    one_error_line(result, "m.json", f"key models[{T(data)}]", f"predicts an impossible {what}")  # ... but is not printed
    assert "nan" not in result.output and "inf ms" not in result.output


@pytest.mark.parametrize("args, message", [
    (["-c", "-5"], "-5 is not in the range"),
    (["--freq", "nan"], "must be finite"),
    (["--freq", "-1000"], "must be > 0"),
    (["--tp", "0"], "0 is not in the range"),
])
def test_predict_refuses_impossible_points(tmp_path, bundle_json, args, message):
    result = cli("characterize", "predict", write(tmp_path, bundle_json), "--phase", "prefill", *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_predict_asks_for_the_tp_only_when_the_bundle_has_several(tmp_path, bundle_json):
    path = write(tmp_path, bundle_json)
    several = cli("characterize", "predict", path, "--phase", "decode", "-b", "8", "-k", "1024")
    assert several.exit_code == 2 and "depends on tp (fitted on 1, 2" in several.output and "give --tp" in several.output, several.output
    data = copy.deepcopy(bundle_json)
    for model in data["models"]:  # keep TP 1 only
        if "groups" in model:
            model["groups"] = [g for g in model["groups"] if g["key"].get("tp", 1) == 1]
        if model.get("support"):  # the transferring family: fitted on TP 1 only
            model["support"]["tp"] = [1]
    single = cli("characterize", "predict", write(tmp_path, data, "one.json"), "--phase", "decode", "-b", "8", "-k", "1024")
    assert single.exit_code == 0 and "power" in single.output, single.output


def test_chunks_json_is_strict_json(tmp_path, bundle_json):
    result = cli("characterize", "chunks", write(tmp_path, bundle_json), "--tbt-slo", "0.001", "--tp", "1", "--json")
    assert result.exit_code == 0, result.output

    def refuse(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    rows = json.loads(result.output, parse_constant=refuse)
    assert rows and all(r["predicted_latency_s"] is None for r in rows if r["chunk_tokens"] == 0)
    assert cli("characterize", "chunks", write(tmp_path, bundle_json), "--tbt-slo", "nan").exit_code == 2


# ------------------------------------------------------------------------ property: mutations


VALUES = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.text(max_size=8), st.sampled_from(["1", "c*p", "c^2", "latency_s", "mean_power_w", "terms", "roofline",
                                          "gbr_trees", "power_saturating", "tp", "sm_clock_mhz", "load_tokens"]),
    st.just(float("nan")), st.just(1e308), st.just(-1), st.just(0), st.just(10**400),
    st.lists(st.one_of(st.integers(-3, 40), st.floats(-1e3, 1e3)), max_size=5),
    st.dictionaries(st.sampled_from(["tp", "sm_clock_mhz", "coef", "x"]), st.integers(-2, 4), max_size=2),
)
POINT = pd.DataFrame({"chunk_tokens": [512, 0], "prefix_tokens": [1000, 0], "batch_size": [0, 8], "kv_tokens": [0, 2000],
                      "load_tokens": [512, 8], "tp": [1, 2], "sm_clock_mhz": [1980.0, 1410.0], "model": ["m", "m"]})


def _usable(bundle: ModelBundle) -> None:
    """A bundle that loaded predicts without anything but a clean refusal (a group it lacks), its
    trees always reach a leaf, and ``predict`` prints finite, non-negative numbers or one error line."""
    for model in bundle.models:
        for tree in getattr(model, "trees", []):
            left, right = np.asarray(tree["left"]), np.asarray(tree["right"])
            split = left != -1
            assert (left[split] > np.flatnonzero(split)).all() and (right[split] > np.flatnonzero(split)).all()
        try:
            model.predict(POINT, strict=False)
        except KeyError:
            pass
    for phase in {m.phase for m in bundle.models}:
        result = cli("characterize", "predict", "m.json", "--phase", phase, "-c", "512", "-p", "1000", "-b", "4",
                     "-k", "2000", "--tp", "1")
        if result.exit_code == 0:
            printed = re.findall(r"(latency|power|energy) (\S+) (ms|W|J)", result.output)
            assert printed and all(np.isfinite(float(v)) and float(v) >= 0 for _, v, _ in printed), result.output
        else:
            one_error_line(result)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # a 1e308 coefficient overflows, then is refused
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pick=st.integers(0, 10**9), action=st.sampled_from(["replace", "replace", "delete"]), value=VALUES)
def test_mutated_bundles_load_or_fail_as_input_errors(tmp_path, monkeypatch, bundle_json, pick, action, value):
    data = copy.deepcopy(bundle_json)
    mutate_document(data, pick, action, value)
    monkeypatch.chdir(tmp_path)
    write(tmp_path, data)
    try:
        bundle = ModelBundle.load("m.json")
    except WattlasError as exc:
        event("refused")
        assert str(exc).startswith("m.json: ") and "\n" not in str(exc) and "np.float64" not in str(exc)
        return
    event("loaded")
    _usable(bundle)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10**9), junk=st.binary(max_size=8), action=st.sampled_from(["truncate", "insert", "overwrite"]))
def test_mutated_bundle_files_load_or_fail_as_input_errors(tmp_path, monkeypatch, bundle_json, cut, junk, action):
    raw = json.dumps(bundle_json).encode()
    at = cut % (len(raw) + 1)
    text = {"truncate": raw[:at], "insert": raw[:at] + junk + raw[at:], "overwrite": raw[:at] + junk + raw[at + len(junk):]}[action]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.json").write_bytes(text)
    try:
        bundle = ModelBundle.load("m.json")
    except WattlasError as exc:
        event("refused")
        assert str(exc).startswith("m.json: ") and "\n" not in str(exc)
        return
    event("loaded")
    _usable(bundle)
