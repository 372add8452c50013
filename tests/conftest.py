from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def run_cli():
    """Invoke the wattlas CLI in-process; returns the click Result."""
    from toolkit.cli import cli

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def write_text(tmp_path):
    def write(name: str, text: str | bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    return write


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data, or skip the test when the data is not beside the checkout."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


@pytest.fixture(scope="session")
def demo_output(tmp_path_factory):
    """The demo's output directory, produced once per test session."""
    from toolkit.cli import cli

    out = tmp_path_factory.mktemp("demo") / "out"
    result = CliRunner().invoke(cli, ["demo", "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, result.output


def one_error_line(result, *fragments: str) -> str:
    """The CLI failed with exactly one line "Error: ..." containing every fragment, no traceback."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and result.output.strip().endswith(errors[0]), result.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert "np.float64" not in errors[0]
    return errors[0]


def document_paths(data, prefix=()) -> list[tuple[tuple, object]]:
    """Every (path, value) of a parsed TOML or JSON document: tables, lists and leaves."""
    out = [(prefix, data)] if prefix else []
    if isinstance(data, dict):
        for k, v in data.items():
            out += document_paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += document_paths(v, prefix + (i,))
    return out


def mutate_document(data, pick: int, action: str, value: object) -> None:
    """Delete, or replace with ``value``, the entry ``pick`` (modulo their count) of a parsed document."""
    paths = [path for path, _ in document_paths(data)]
    path = paths[pick % len(paths)]
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    if action == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
