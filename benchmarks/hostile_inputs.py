"""Hostile inputs through the CLI: every reject must be one line naming the file and the place.

Run: python benchmarks/hostile_inputs.py [--keep DIR] [--only SUBSTRING]

Builds a corpus of malformed traces, cluster TOMLs, model bundles and marker-free collector
inputs (the kinds issue #12 lists), runs each through the command a user would (in-process,
click's runner, each case under a 60-s alarm), and classifies the outcome:

* ``one-line reject``  - non-zero exit, one ``Error:`` line that names the file (and the row,
  line, column or key where the case says one exists);
* ``accept``           - exit 0 where the case is valid (some cases are: epoch-second arrivals);
* ``silent accept``    - exit 0 where the input is wrong;
* ``traceback``        - an exception escaped, or a multi-line / location-free error;
* ``hang``             - the alarm fired.

It prints a table of counts and every case that is not as expected; exit 1 if any is not.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


def azure_rows(n: int = 12) -> list[str]:
    return [f"2023-11-16 18:15:{i:02d}.000000,{100 + 37 * i},{20 + i}" for i in range(n)]


def azure_csv(rows: list[str] | None = None, header: str = AZURE_HEADER) -> str:
    return "\n".join([header, *(azure_rows() if rows is None else rows)]) + "\n"


def replace_cell(row: int, col: int, value: str) -> str:
    rows = azure_rows()
    cells = rows[row].split(",")
    cells[col] = value
    rows[row] = ",".join(cells)
    return azure_csv(rows)


@dataclass
class Case:
    name: str
    files: dict[str, bytes | str]  # name -> content, written into the case's directory
    argv: list[str]  # {dir}: the case's directory; {base}: where the valid trace and bundle are
    valid: bool = False  # True: must be accepted
    where: list[str] = field(default_factory=list)  # words the one-line error must contain (besides the file)
    culprit: str | None = None  # the file the error must name (default: the first file)


def trace_cases() -> list[Case]:
    bad_cells = {
        "token 2^63": (3, 1, str(2**63)), "token 1e30": (3, 1, "1e30"), "negative tokens": (3, 2, "-3"),
        "fractional tokens": (3, 1, "2.5"), "text tokens": (3, 1, "abc"), "NaN tokens": (3, 2, "NaN"),
        "inf tokens": (3, 1, "inf"), "empty token cell": (3, 2, ""), "year typo 2033": (5, 0, "2033-11-16 18:15:05"),
        "year 1500": (3, 0, "1500-01-01 00:00:00"), "year 2263": (3, 0, "2263-01-01 00:00:00"),
        "not a timestamp": (3, 0, "yesterday"), "out of order": (3, 0, "2023-11-16 18:14:00"),
    }
    texts = {f"trace {k}": replace_cell(*v) for k, v in bad_cells.items()}
    texts.update({
        "header only": AZURE_HEADER + "\n", "whitespace only": "   \n\n  \n", "empty file": "",
        "extra field": azure_csv(azure_rows()[:3] + ["2023-11-16 18:16:00,1,2,3"] + azure_rows()[4:]),
        "missing column": azure_csv([",".join(r.split(",")[:2]) for r in azure_rows()], "TIMESTAMP,ContextTokens"),
        "unknown header": azure_csv(header="a,b,c"),
        "quoted newline then bad": azure_csv(azure_rows()[:2] + ['"2023-11-16\n18:15:02",1,2'] + azure_rows()[3:5]
                                             + ["2023-11-16 18:15:09,x,1"]),
        "NUL bytes": "\0" * 200_000,
        "wide header": ",".join(f"c{i}" for i in range(200_000)) + "\n1\n",
    })
    cases = []
    for label, text in texts.items():
        for command in (["trace", "stats"], ["trace", "stats", "--mode", "chunked"], ["trace", "convert"]):
            argv = [*command, "{dir}/trace.csv"] + (["{dir}/out.parquet"] if command[1] == "convert" else [])
            cases.append(Case(f"{label} | {' '.join(command)}", {"trace.csv": text}, argv))
    raw = azure_csv().encode()
    for label, content in {"not gzip .gz": raw, "truncated .csv.gz": gzip.compress(raw * 50)[:300],
                           "random bytes .gz": bytes(range(256)) * 10}.items():
        cases.append(Case(f"{label} | trace stats", {"trace.csv.gz": content}, ["trace", "stats", "{dir}/trace.csv.gz"]))
    cases.append(Case("directory as trace | trace stats", {"d/x": ""}, ["trace", "stats", "{dir}/d"], culprit="d"))
    cases.append(Case("missing trace | trace stats", {}, ["trace", "stats", "{dir}/nope.csv"], culprit="nope.csv"))
    splitwise = "arrival_timestamp,prompt_size,token_size\n" + "".join(
        f"{1_700_000_000 + 0.5 * i},{100 + i},{10 + i}\n" for i in range(10))
    cases.append(Case("epoch-second arrivals (valid) | trace stats", {"trace.csv": splitwise},
                      ["trace", "stats", "{dir}/trace.csv"], valid=True))
    return cases


CLUSTER = (ROOT / "examples" / "cluster.toml").read_text()
POLCA = (ROOT / "examples" / "polca_row.toml").read_text()


def set_key(toml: str, key: str, value: str) -> str:
    """The TOML with ``key = value`` in the first place it is set (or added to the first pool)."""
    pattern = re.compile(rf"^{re.escape(key)}\s*=.*$", re.M)
    if pattern.search(toml):
        return pattern.sub(lambda m: f"{key} = {value}", toml, count=1)
    return toml.replace("[[pool]]\n", f"[[pool]]\n{key} = {value}\n", 1)


def cluster_cases() -> list[Case]:
    mutations = {
        "instances string": ("instances", '"2"'), "instances fraction": ("instances", "2.5"),
        "instances zero": ("instances", "0"), "instances nan": ("instances", "nan"),
        "bin_s string": ("bin_s", '"1"'), "bin_s zero": ("bin_s", "0"), "seed string": ("seed", '"x"'),
        "name number": ("name", "5"), "router number": ("router", "3"), "router unknown": ("router", '"fastest"'),
        "pue negative": ("pue", "-1"), "sm clock negative": ("sm_clock_mhz", "-1000"),
        "gpu_hour negative": ("gpu_hour_usd", "-1"), "carbon inf": ("carbon_g_per_kwh", "inf"),
        "tbt slo zero": ("tbt_slo_s", "0"), "chunk_size huge": ("chunk_size", "1e30"),
        "max_batch_tokens bool": ("max_batch_tokens", "true"), "tp list": ("tp", "[1, 2]"),
        "unknown key": ("turbo", "true"),
        "pool does not cover long inputs": ("max_input_tokens", "100"),
    }
    cases = []
    for label, (key, value) in mutations.items():
        cases.append(Case(f"cluster {label}", {"cluster.toml": set_key(CLUSTER, key, value)},
                          REPLAY + ["--cluster", "{dir}/cluster.toml"], where=[key] if key != "turbo" else ["turbo"],
                          culprit="cluster.toml"))
    polca = {"control_s zero": ("control_s", "0"), "control_s negative": ("control_s", "-1"),
             "budget negative": ("budget_w", "-5"), "t1 above t2": ("t1", "0.99"), "uncap above t1": ("uncap", "0.9"),
             "budget string": ("budget_w", '"lots"')}
    for label, (key, value) in polca.items():
        toml = POLCA.replace("[polca]\n", f"[polca]\n{key} = {value}\n") if key == "control_s" else set_key(POLCA, key, value)
        cases.append(Case(f"polca {label}", {"cluster.toml": toml},
                          REPLAY + ["--cluster", "{dir}/cluster.toml", "--policy", "polca"], culprit="cluster.toml"))
    for label, content in {"non-UTF-8": b"router = \"\xff\xfe\"\n", "not TOML": "[[pool]\ninstances = 2",
                           "pool not a table": "pool = 5\n", "empty": ""}.items():
        # (an empty file is refused too: omitting --cluster is how to ask for every default)
        cases.append(Case(f"cluster {label}", {"cluster.toml": content}, REPLAY + ["--cluster", "{dir}/cluster.toml"],
                          culprit="cluster.toml"))
    return cases


REPLAY = ["replay", "run", "--trace", "{base}/trace.csv", "--models", "{base}/models.json", "-o", "{dir}/out"]


def bundle_cases(bundle: dict) -> list[Case]:
    def mutated(change) -> str:
        copy = json.loads(json.dumps(bundle))
        change(copy)
        return json.dumps(copy)

    def set_coef(value):
        def change(b):
            for group in b["models"][0]["groups"]:
                group["coef"][0] = value
        return change

    changes = {
        "schema_version string": lambda b: b.__setitem__("schema_version", "1"),
        "models dict": lambda b: b.__setitem__("models", {"a": 1}),
        "models string": lambda b: b.__setitem__("models", "prefill"),
        "short coefficients": lambda b: b["models"][0]["groups"][0].__setitem__("coef", [0.001]),
        "metadata list": lambda b: b.__setitem__("metadata", [1, 2]),
        "unknown term": lambda b: b["models"][0].__setitem__("terms", ["1", "__import__('os')", "b*k", "k"]),
        "unknown kind": lambda b: b["models"][0].__setitem__("kind", "pickle"),
        "negative coefficient": set_coef(-5.0),
    }
    power = next(i for i, m in enumerate(bundle["models"]) if m["kind"].startswith("power"))

    def set_param(name, value):
        def change(b):
            group = b["models"][power]["groups"][0]
            group["params"][group["param_names"].index(name)] = value
        return change

    changes["power load0 zero"] = set_param("load0", 0.0)
    changes["power idle negative"] = set_param("p_idle_w", -100.0)
    changes["power params short"] = lambda b: b["models"][power]["groups"][0].__setitem__("params", [1.0])
    texts = {label: mutated(change) for label, change in changes.items()}
    good = json.dumps(bundle)
    texts["NaN coefficient"] = mutated(set_coef(1.0)).replace("1.0", "NaN", 1)
    texts["Infinity coefficient"] = mutated(set_coef(1.0)).replace("1.0", "Infinity", 1)
    texts["deeply nested"] = good[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    texts["truncated"] = good[: len(good) // 2]
    texts["empty"] = ""
    texts["not JSON"] = "models: prefill"
    cases = []
    for label, text in texts.items():
        for argv in (["characterize", "show", "{dir}/models.json"],
                     ["characterize", "predict", "{dir}/models.json", "--phase", "decode", "-b", "8", "-k", "1024", "--tp", "1"]):
            # A bundle whose structure is sound but whose numbers predict an impossible latency is
            # shown as it is (show only prints coefficients); predict and replay must refuse it.
            valid = argv[1] == "show" and label == "negative coefficient"
            cases.append(Case(f"bundle {label} | {' '.join(argv[:2])}", {"models.json": text}, argv, valid=valid))
        cases.append(Case(f"bundle {label} | replay run", {"models.json": text},
                          ["replay", "run", "--trace", "{base}/trace.csv", "--models", "{dir}/models.json",
                           "-o", "{dir}/out"]))
    return cases


class Hang(Exception):
    pass


def run_case(case: Case, base: Path, index: int, timeout_s: int = 60) -> tuple[str, str]:
    from click.testing import CliRunner

    from toolkit.cli import cli

    directory = base / f"case{index:03d}"
    directory.mkdir()
    for name, content in case.files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    argv = [a.replace("{dir}", str(directory)).replace("{base}", str(base.parent)) for a in case.argv]

    def alarm(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout_s)
    try:
        result = CliRunner().invoke(cli, argv, catch_exceptions=True)
    except Hang:
        return "hang", ""
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if isinstance(result.exception, Hang):
        return "hang", ""
    output = result.output.strip()
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return "traceback", f"{type(result.exception).__name__}: {result.exception}"[:300]
    if result.exit_code == 0:
        return ("accept" if case.valid else "silent accept"), output.splitlines()[-1][:200] if output else ""
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    if len(errors) != 1 or errors[0] != output.splitlines()[-1]:
        return "traceback", output[-300:]
    culprit = case.culprit or next(iter(case.files), "")
    if culprit and culprit not in errors[0]:
        return "no location", errors[0][:300]
    if any(w not in errors[0] for w in case.where):
        return "no location", errors[0][:300]
    return ("rejected valid input" if case.valid else "one-line reject"), errors[0][:300]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", type=Path, default=None, help="Keep the corpus and outputs in this directory.")
    parser.add_argument("--only", default=None, help="Only cases whose name contains this.")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="wattlas-hostile-")) if args.keep is None else args.keep
    base.mkdir(parents=True, exist_ok=True)
    from click.testing import CliRunner

    from toolkit.cli import cli

    for argv in (["collect", "profile", "--backend", "sim", "--preset", "llama3-8b", "-o", str(base / "profile.parquet")],
                 ["characterize", "fit", str(base / "profile.parquet"), "-o", str(base / "models.json"), "--trees", "20"]):
        result = CliRunner().invoke(cli, argv, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    (base / "trace.csv").write_text(azure_csv())
    bundle = json.loads((base / "models.json").read_text())
    cases = [c for c in trace_cases() + cluster_cases() + bundle_cases(bundle) if not args.only or args.only in c.name]
    work = base / "cases"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    counts: dict[str, int] = {}
    wrong = []
    for i, case in enumerate(cases):
        outcome, detail = run_case(case, work, i)
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome not in ("one-line reject", "accept"):
            wrong.append((case.name, outcome, detail))
    print(f"{len(cases)} hostile inputs:")
    for outcome, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {outcome:22s} {n}")
    for name, outcome, detail in wrong:
        print(f"- {outcome}: {name}: {detail}")
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
