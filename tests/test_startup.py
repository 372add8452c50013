"""Start-up does only what the command needs: what is imported is counted, never timed
(benchmarks/bench_startup.py times it)."""

import subprocess
import sys

import pytest

HEAVY = ("pandas", "pyarrow", "sklearn", "statsmodels", "scipy", "dask", "matplotlib", "torch")


def imported_after(*argv: str) -> set[str]:
    """Top-level modules loaded in a fresh interpreter that ran ``wattlas ARGV``."""
    code = ("import sys\nfrom toolkit.cli import cli\n"
            "try:\n    cli.main(sys.argv[1:], prog_name='wattlas', standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return set(run.stdout.split())


@pytest.mark.parametrize("argv", [("--version",), ("--help",), ("collect", "--help")])
def test_version_and_help_import_nothing_heavy(argv):
    assert not imported_after(*argv) & set(HEAVY)


def test_predict_needs_neither_statsmodels_nor_scipy(tmp_path):
    from tests.test_replay import linear_bundle

    path = linear_bundle().save(tmp_path / "m.json")
    loaded = imported_after("characterize", "predict", str(path), "--phase", "decode", "-b", "8", "-k", "1024")
    assert "statsmodels" not in loaded and "scipy" not in loaded and "sklearn" not in loaded


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 5, 10, 30, 200])
def test_t_quantile_matches_scipy(dof):
    from scipy import stats

    from characterize.metrics import t_quantile

    tolerance = {3: 0.01, 4: 0.003}.get(dof, 0.001)
    for p in (0.6, 0.9, 0.95, 0.975, 0.995):
        assert t_quantile(p, dof) == pytest.approx(stats.t.ppf(p, dof), rel=tolerance)
