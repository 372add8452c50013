import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from toolkit.errors import InputError
from toolkit.parquet_io import atomic_write_table, describe_artifact, read_artifact
from toolkit.schemas import ALL_SCHEMAS, PROFILE_ITERATIONS, REQUEST_TRACE


def _trace(n=3, version=None):
    meta = {} if version is None else {"wattlas.schema_version": str(version)}
    schema = REQUEST_TRACE.arrow(["request_id", "arrival_s", "input_tokens", "output_tokens"], meta)
    return pa.table({"request_id": list(range(n)), "arrival_s": [float(i) for i in range(n)],
                     "input_tokens": [1] * n, "output_tokens": [1] * n}, schema=schema)


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    atomic_write_table(_trace(3), path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        atomic_write_table(_trace(5), path)
    assert pq.read_table(path).num_rows == 3
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_read_artifact_refuses_other_schema_and_newer_version(tmp_path):
    path = atomic_write_table(_trace(), tmp_path / "t.parquet")
    assert read_artifact(path, REQUEST_TRACE).num_rows == 3
    with pytest.raises(InputError, match="request_trace"):
        read_artifact(path, PROFILE_ITERATIONS)
    newer = atomic_write_table(_trace(version=99), tmp_path / "n.parquet")
    with pytest.raises(InputError, match="newer"):
        read_artifact(newer, REQUEST_TRACE)
    assert "request_trace v1, 3 rows" in describe_artifact(path)


def test_every_schema_builds_with_metadata():
    for name, schema in ALL_SCHEMAS.items():
        arrow = schema.arrow()
        assert arrow.metadata[b"wattlas.schema"] == name.encode()
        assert len(arrow) == len(schema.columns)
