"""``characterize compose``: whole iterations composed from operator profiles (Vidur style).

The core is tested on small synthetic profiles written here, with times that are exact functions
of the inputs, so every composed number can be computed by hand; the shared Vidur data, when it
is beside the checkout, is only used for a smoke test.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from characterize.compose import (GPUS, ComposeShape, Composer, RooflineAttention, build_composer, compose_bundle,
                                  read_attention_profile, read_mlp_profile, read_network_profile)
from tests.conftest import one_error_line, shared_file
from toolkit.errors import InputError

OPS = ["emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
       "mlp_up_proj", "mlp_act", "mlp_down_proj", "add"]
TOKENS = [1, 16, 64, 256, 1024]
HIDDEN, HEADS, KV_HEADS, FFN, VOCAB = 512, 8, 2, 1024, 1000
AR_ALPHA_MS, AR_BETA = 0.02, 1e-8  # all-reduce: ms, ms per byte
SR_ALPHA_MS, SR_BETA = 0.01, 2e-8  # send/recv


def op_ms(op: str, tokens: float, tp: int) -> float:
    """The synthetic profile's time of one operator: linear in tokens, split by TP."""
    if op == "emb":
        return 0.001 + 1e-6 * tokens
    weight = {"mlp_up_proj": 4.0, "mlp_down_proj": 2.0, "attn_pre_proj": 1.5}.get(op, 1.0)
    return weight * (0.002 + 1e-5 * tokens) / tp


def prefill_ms(c, p):
    return 0.01 + 1e-6 * c + 1e-7 * c * p + 2e-7 * c * c


def decode_ms(b, k):
    return 0.008 + 1e-5 * b + 1e-6 * b * k


@pytest.fixture
def profiles(tmp_path):
    """Paths of a synthetic mlp, attention (A100 and H100 names), all-reduce and send/recv CSV."""
    rows = []
    for tp in (1, 2):
        for t in TOKENS:
            row = {f"time_stats.{op}.median": op_ms(op, t, tp) for op in OPS}
            row.update(n_head=HEADS, n_kv_head=KV_HEADS, n_embd=HIDDEN, n_expanded_embd=FFN, vocab_size=VOCAB,
                       use_gated_mlp=True, num_tokens=t, num_tensor_parallel_workers=tp)
            rows.append(row)
    paths = {"mlp": tmp_path / "compute_h100_synth_mlp.csv"}
    pd.DataFrame(rows).to_csv(paths["mlp"], index=False)
    att = []
    for c in (64, 128, 256, 512):
        for p in (0, 256, 1024):
            att.append({"is_prefill": True, "prefill_chunk_size": c, "kv_cache_size": p, "batch_size": 1,
                        "time_stats.attn_prefill.median": prefill_ms(c, p)})
    for b in (1, 4, 16, 64):
        for k in (32, 512, 2048):
            att.append({"is_prefill": False, "prefill_chunk_size": 0, "kv_cache_size": k, "batch_size": b,
                        "time_stats.attn_decode.median": decode_ms(b, k)})
    att = pd.DataFrame(att).assign(n_embd=HIDDEN, n_q_head=HEADS, n_kv_head=KV_HEADS, num_tensor_parallel_workers=1)
    for gpu in ("h100", "a100"):
        paths[f"attention_{gpu}"] = tmp_path / f"attention_{gpu}_synth.csv"
        att.to_csv(paths[f"attention_{gpu}"], index=False)
    sizes = np.geomspace(2048, 2**26, 12).round()
    for op, alpha, beta, workers, per_node in (("all_reduce", AR_ALPHA_MS, AR_BETA, 2, 2),
                                               ("send_recv", SR_ALPHA_MS, SR_BETA, 2, 2)):
        frame = pd.DataFrame({f"time_stats.{op}.median": alpha + beta * sizes, "rank": 0, "num_workers": workers,
                              "size": sizes, "collective": op, "devices_per_node": per_node, "max_devices_per_node": 8})
        paths[op] = tmp_path / f"network_h100_{op}.csv"
        frame.to_csv(paths[op], index=False)
    return paths


def shape(layers: int = 2, **changes) -> ComposeShape:
    fields = dict(name="synth", layers=layers, hidden=HIDDEN, heads=HEADS, kv_heads=KV_HEADS, intermediate=FFN,
                  vocab=VOCAB, gated=True)
    fields.update(changes)
    return ComposeShape(**fields)


def composer(profiles, layers: int = 2, attention: str | None = "attention_h100", **changes) -> Composer:
    return build_composer(shape(layers, **changes), "h100", profiles["mlp"],
                          profiles[attention] if attention else None, profiles["all_reduce"], profiles["send_recv"])


def layer_linear_ms(tokens: float, tp: int) -> float:
    return sum(op_ms(op, tokens, tp) for op in OPS if op != "emb")


# ----------------------------------------------------------------------------- composition arithmetic

def test_linear_part_is_the_sum_of_the_profiled_operators(profiles):
    comp = composer(profiles)
    for t in (16.0, 256.0, 100.0):  # measured points and a point interpolated between two
        parts = comp.iteration("decode", t, 512, tp=1)
        assert float(parts["linear"]) == pytest.approx(2 * layer_linear_ms(t, 1) / 1e3, rel=1e-9)
        assert float(parts["embedding"]) == pytest.approx(op_ms("emb", t, 1) / 1e3, rel=1e-9)
    # above the profile: linear extrapolation of an exactly linear profile stays exact
    assert float(comp.iteration("decode", 4096, 512, tp=1)["linear"]) == pytest.approx(2 * layer_linear_ms(4096, 1) / 1e3)


def test_doubling_layers_doubles_the_layer_part_only(profiles):
    two, four = composer(profiles, layers=2), composer(profiles, layers=4)
    for phase, x, y in (("prefill", 512, 1024), ("decode", 64, 2048)):
        a, b = two.iteration(phase, x, y, tp=2), four.iteration(phase, x, y, tp=2)
        assert float(b["linear"]) == pytest.approx(2 * float(a["linear"]))
        assert float(b["attention"]) == pytest.approx(2 * float(a["attention"]))
        assert float(b["embedding"]) == pytest.approx(float(a["embedding"]))
        assert float(b["lm_head"]) == pytest.approx(float(a["lm_head"]))
        # two more all-reduces per added layer, of tokens x hidden x 2 bytes
        per_call = (AR_ALPHA_MS + AR_BETA * x * HIDDEN * 2) / 1e3
        assert float(b["all_reduce"] - a["all_reduce"]) == pytest.approx(2 * 2 * per_call, rel=1e-6)


def test_tp_above_one_adds_the_all_reduces(profiles):
    comp = composer(profiles, layers=3)
    tp1, tp2 = comp.iteration("decode", 32, 1024, tp=1), comp.iteration("decode", 32, 1024, tp=2)
    assert float(tp1["all_reduce"]) == 0.0
    expected = ((2 * 3 + 1) * (AR_ALPHA_MS + AR_BETA * 32 * HIDDEN * 2)
                + AR_ALPHA_MS + 0.5 * AR_BETA * 32 * VOCAB * 2) / 1e3  # + the logits all-gather
    assert float(tp2["all_reduce"]) == pytest.approx(expected, rel=1e-6)
    assert float(tp2["linear"]) == pytest.approx(float(tp1["linear"]) / 2)  # the synthetic ops split by TP
    assert float(tp2["total"]) == pytest.approx(sum(float(tp2[k]) for k in
                                                    ("linear", "attention", "all_reduce", "embedding", "lm_head")))


def test_pp_above_one_adds_send_recv_per_stage_boundary(profiles):
    comp = composer(profiles, layers=4)
    one = comp.iteration("prefill", 256, 0, tp=1, pp=1)
    for pp in (2, 4):
        split = comp.iteration("prefill", 256, 0, tp=1, pp=pp)
        per_boundary = (SR_ALPHA_MS + SR_BETA * 256 * HIDDEN * 2) / 1e3
        assert float(split["send_recv"]) == pytest.approx((pp - 1) * per_boundary, rel=1e-6)
        assert float(split["unsplit"]) == pytest.approx(float(one["total"]))  # compute is the same work
        assert float(split["total"]) == pytest.approx(float(one["total"]) + (pp - 1) * per_boundary, rel=1e-9)
    assert float(one["send_recv"]) == 0.0


def test_attention_fit_and_scaling(profiles):
    same = composer(profiles)  # profile shape = target, same GPU: the fit reproduces the exact profile
    assert float(same.attention.prefill_s(np.array(256.0), np.array(512.0), 1)) == pytest.approx(prefill_ms(256, 512) / 1e3, rel=1e-6)
    assert float(same.attention.decode_s(np.array(8.0), np.array(1000.0), 1)) == pytest.approx(decode_ms(8, 1000) / 1e3, rel=1e-6)
    # TP2 halves the heads per shard: every term but the constant halves
    assert float(same.attention.decode_s(np.array(8.0), np.array(1000.0), 2)) == pytest.approx(
        (0.008 + (decode_ms(8, 1000) - 0.008) / 2) / 1e3, rel=1e-6)
    # measured on an A100, composed for an H100: memory terms scale by the peak bandwidth ratio
    moved = composer(profiles, attention="attention_a100")
    ratio = GPUS["a100"].bandwidth / GPUS["h100"].bandwidth
    assert float(moved.attention.decode_s(np.array(8.0), np.array(1000.0), 1)) == pytest.approx(
        (0.008 + (decode_ms(8, 1000) - 0.008) * ratio) / 1e3, rel=1e-6)
    assert any("peak bandwidth ratio" in a for a in moved.assumptions([1], 1))


def test_roofline_attention_without_a_profile(profiles):
    comp = composer(profiles, attention=None)
    assert isinstance(comp.attention, RooflineAttention)
    short, long = (float(comp.iteration("decode", 16, k, tp=1)["attention"]) for k in (1000, 2000))
    kv_bytes = 2 * 2 * KV_HEADS * (HIDDEN // HEADS) * 16 * 1000  # K and V, fp16, per layer
    assert long - short == pytest.approx(2 * kv_bytes / comp.attention.bandwidth, rel=1e-9)
    assert any("roofline" in a for a in comp.assumptions([1], 1))


def test_shape_scaling_of_the_operators(profiles):
    wide = composer(profiles, intermediate=2 * FFN)
    assert wide.op_scale["mlp_up_proj"] == wide.op_scale["mlp_down_proj"] == wide.op_scale["mlp_act"] == 2.0
    assert wide.op_scale["attn_pre_proj"] == wide.op_scale["add"] == 1.0
    base = composer(profiles).iteration("decode", 64, 100, tp=1)
    grown = wide.iteration("decode", 64, 100, tp=1)
    mlp = sum(op_ms(op, 64, 1) for op in ("mlp_up_proj", "mlp_down_proj", "mlp_act"))
    assert float(grown["linear"] - base["linear"]) == pytest.approx(2 * mlp / 1e3)
    assert any("mlp_up_proj x2" in a for a in wide.assumptions([1], 1))


def test_mixed_iteration_without_prefill_is_a_decode(profiles):
    comp = composer(profiles)
    decode = comp.iteration("decode", 32, 700, tp=2)
    mixed = comp.mixed_iteration(32, 700, 0, 0, tp=2, chunks=0.0)
    assert float(mixed["total"]) == pytest.approx(float(decode["total"]))
    assert float(comp.mixed_iteration(32, 700, 256, 0, tp=2)["total"]) > float(decode["total"])


def test_tp_or_pp_without_its_profile_is_refused(profiles):
    comp = build_composer(shape(), "h100", profiles["mlp"])
    comp.check_tp(1)
    with pytest.raises(ValueError, match="all-reduce"):
        comp.iteration("decode", 8, 100, tp=2)
    with pytest.raises(ValueError, match="send/recv"):
        comp.iteration("decode", 8, 100, tp=1, pp=2)
    with pytest.raises(ValueError, match="no rows at TP 4"):
        composer(profiles).check_tp(4)


# ----------------------------------------------------------------------------- the bundle

def test_bundle_loads_compiles_and_replays_the_composition(profiles, tmp_path):
    from characterize.model_io import ModelBundle
    from replay.config import PoolConfig
    from replay.cost_model import InstanceCost

    comp = composer(profiles)
    bundle, grid = compose_bundle(comp, [1, 2], pp=2, sources=list(profiles.values()))
    path = bundle.save(tmp_path / "composed.json")
    loaded = ModelBundle.load(path)
    meta = loaded.metadata
    assert meta["composed_from"] == "operator profiles" and meta["gpu"] == "h100" and meta["pp"] == 2
    assert meta["model_shape"]["layers"] == 2 and meta["model_shape"]["kv_heads"] == KV_HEADS
    assert all("/" not in s for s in meta["sources"]) and "compute_h100_synth_mlp.csv" in meta["sources"]
    assert meta["pp_transfer_s"]["1"]["seconds"][0] == pytest.approx((SR_ALPHA_MS + SR_BETA * HIDDEN * 2) / 1e3, rel=1e-3)
    assert any("all-reduce" in a for a in meta["assumptions"])
    for phase in ("prefill", "decode"):
        model = loaded.find("latency_s", phase)
        assert model.kind == "terms" and model.group_keys == ["tp"]
        assert loaded.validation[f"latency_s/{phase}"]["physical"]["grid_mape"] < 25
    for tp in (1, 2):
        cost = InstanceCost.from_bundle(loaded, tp=tp, sm_clock_mhz=None)
        cost.check_range(PoolConfig(tp=tp, kv_capacity_tokens=50_000, max_batch_tokens=1024, max_batch_size=64))
        # the compiled decode model follows the composed iteration near the grid
        composed = float(comp.iteration("decode", 16, 1024, tp)["unsplit"])
        assert cost.decode_latency(16, 16 * 1024) == pytest.approx(composed, rel=0.3)
    # TP2 is faster than TP1 for a big chunk in the synthetic profile (ops split by TP)
    rows = grid[(grid.phase == "prefill") & (grid.chunk_tokens == 1024) & (grid.prefix_tokens == 0)]
    assert rows.set_index("tp")["latency_s"][2] < rows.set_index("tp")["latency_s"][1]


def test_preset_shape_is_named_so_replay_can_size_its_kv(profiles):
    from toolkit.model_shapes import PRESETS

    tiny = ComposeShape.from_preset("tiny")
    assert (tiny.layers, tiny.hidden, tiny.vocab) == (PRESETS["tiny"].layers, PRESETS["tiny"].hidden, PRESETS["tiny"].vocab)
    assert ComposeShape.from_preset("tiny", vocab=5).name == "tiny-custom"
    assert ComposeShape.from_preset("tiny", vocab=5, name="mine").name == "mine"
    with pytest.raises(ValueError, match="unknown model preset"):
        ComposeShape.from_preset("nope")


# ----------------------------------------------------------------------------- bad input

def test_missing_column_is_one_input_error_naming_it(profiles):
    frame = pd.read_csv(profiles["mlp"]).drop(columns=["time_stats.mlp_up_proj.median"])
    frame.to_csv(profiles["mlp"], index=False)
    with pytest.raises(InputError) as info:
        read_mlp_profile(profiles["mlp"])
    assert info.value.column == "time_stats.mlp_up_proj.median"
    assert str(profiles["mlp"]) in str(info.value)


@pytest.mark.parametrize("which, column, value, message", [
    ("mlp", "time_stats.mlp_down_proj.median", -0.5, "must be >= 0"),
    ("mlp", "num_tokens", 2.5, "must be an integer"),
    ("mlp", "n_embd", 1024, "one model shape"),
    ("mlp", "time_stats.attn_post_proj.median", "fast", "not a finite number"),
    ("attention_h100", "time_stats.attn_decode.median", -1.0, "must be >= 0"),
    ("attention_h100", "is_prefill", "maybe", "true or false"),
    ("all_reduce", "size", float("nan"), "missing value"),
    ("send_recv", "time_stats.send_recv.median", -2.0, "must be >= 0"),
])
def test_bad_cell_names_file_row_and_column(profiles, which, column, value, message):
    path = profiles[which]
    frame = pd.read_csv(path)
    row = 2 if which != "attention_h100" or column == "is_prefill" else 14  # a decode row
    frame[column] = frame[column].astype(object)
    frame.loc[row, column] = value
    frame.to_csv(path, index=False)
    readers = {"mlp": read_mlp_profile, "attention_h100": read_attention_profile,
               "all_reduce": lambda p: read_network_profile(p, "all_reduce"),
               "send_recv": lambda p: read_network_profile(p, "send_recv")}
    with pytest.raises(InputError) as info:
        readers[which](path)
    err = info.value
    assert (err.row, err.column) == (row + 1, column), str(err)
    assert message in err.message and str(path) in str(err)


def test_wrong_collective_file_is_refused(profiles):
    with pytest.raises(InputError, match="missing required column") as info:
        read_network_profile(profiles["send_recv"], "all_reduce")
    assert info.value.column == "time_stats.all_reduce.median"
    frame = pd.read_csv(profiles["send_recv"]).rename(columns={"time_stats.send_recv.median": "time_stats.all_reduce.median"})
    frame.to_csv(profiles["send_recv"], index=False)
    with pytest.raises(InputError, match="expected 'all_reduce'") as info:
        read_network_profile(profiles["send_recv"], "all_reduce")
    assert info.value.row == 1 and info.value.column == "collective"


# ----------------------------------------------------------------------------- CLI

def test_cli_compose_writes_a_bundle_predict_accepts(run_cli, profiles, tmp_path):
    out = tmp_path / "bundle.json"
    result = run_cli("characterize", "compose", "--mlp", profiles["mlp"], "--attention", profiles["attention_a100"],
                     "--all-reduce", profiles["all_reduce"], "--layers", 4, "--name", "synth4", "--tp", "1,2",
                     "-o", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["output"] == str(out) and summary["tp"] == [1, 2] and summary["gpu"] == "h100"
    assert summary["model_shape"]["hidden"] == HIDDEN  # taken from the profile
    assert result.stderr.strip().splitlines()[-1].startswith(f"wrote {out}")
    predicted = run_cli("characterize", "predict", out, "--phase", "decode", "-b", 16, "-k", 1024, "--tp", 2)
    assert predicted.exit_code == 0 and predicted.output.startswith("latency "), predicted.output
    plain = run_cli("characterize", "compose", "--mlp", profiles["mlp"], "--preset", "tiny", "-o", tmp_path / "t.json")
    assert plain.exit_code == 0, plain.output
    assert "TP 2 left out" in plain.stderr  # no all-reduce profile: only TP1
    assert plain.stdout.strip().splitlines()[-1].startswith(f"wrote {tmp_path / 't.json'}: tiny on H100 at TP 1 ")


def test_cli_bad_profile_is_one_error_line(run_cli, profiles, tmp_path):
    frame = pd.read_csv(profiles["mlp"])
    frame.loc[4, "time_stats.add.median"] = -1
    frame.to_csv(profiles["mlp"], index=False)
    result = run_cli("characterize", "compose", "--mlp", profiles["mlp"], "--layers", 2, "-o", tmp_path / "b.json")
    one_error_line(result, "compute_h100_synth_mlp.csv", "row 5", "column time_stats.add.median", "must be >= 0")
    assert not (tmp_path / "b.json").exists()


def test_cli_usage_errors(run_cli, profiles, tmp_path):
    out = tmp_path / "b.json"
    one_error_line(run_cli("characterize", "compose", "--mlp", profiles["mlp"], "-o", out), "--preset or --layers")
    one_error_line(run_cli("characterize", "compose", "--mlp", profiles["mlp"], "--layers", 2, "--tp", "2", "-o", out),
                   "all-reduce")
    one_error_line(run_cli("characterize", "compose", "--mlp", profiles["mlp"], "--layers", 2, "--heads", 7, "-o", out),
                   "not a multiple")
    renamed = tmp_path / "profile.csv"
    renamed.write_bytes(profiles["mlp"].read_bytes())
    one_error_line(run_cli("characterize", "compose", "--mlp", renamed, "--layers", 2, "-o", out), "--gpu")
    one_error_line(run_cli("characterize", "compose", "--mlp", profiles["mlp"], "--layers", 2, "--gpu", "a100", "-o", out),
                   "measured on h100")


# ----------------------------------------------------------------------------- shared data (skipped without it)

def test_vidur_llama2_70b_on_h100_composes_and_replays(tmp_path):
    from characterize.model_io import ModelBundle
    from replay.cost_model import InstanceCost

    mlp = shared_file("vidur", "compute_h100_Llama-2-70b-hf_mlp.csv")
    attention = shared_file("vidur", "legacy_acb95f6_a100_attention.csv")
    all_reduce = shared_file("vidur", "network_h100_dgx_all_reduce.csv")
    send_recv = shared_file("vidur", "network_h100_dgx_send_recv.csv")
    comp = build_composer(ComposeShape.from_preset("llama2-70b"), "h100", mlp, attention, all_reduce, send_recv)
    bundle, _ = compose_bundle(comp, [1, 2, 4, 8], pp=2, sources=[mlp, attention, all_reduce, send_recv])
    loaded = ModelBundle.load(bundle.save(tmp_path / "70b.json"))
    assert loaded.metadata["model"] == "llama2-70b"
    for tp in (2, 4, 8):
        InstanceCost.from_bundle(loaded, tp=tp, sm_clock_mhz=None)
    # 80 layers of 70B at TP4 decoding 8 sequences: kernels of ~10-40 ms in any H100 measurement
    decode = float(comp.iteration("decode", 8, 1024, tp=4)["total"])
    assert 0.010 < decode < 0.040
    # more GPUs, less time per big prefill chunk
    prefill = [float(comp.iteration("prefill", 4096, 0, tp=tp)["total"]) for tp in (1, 2, 4, 8)]
    assert prefill == sorted(prefill, reverse=True)
