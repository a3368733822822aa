import json

import pytest

from optlib import records
from optlib.records import Record, load_records, write_record


def rec(name="pytorch-fp32", **kw):
    return Record(target="t", notebook="01_baseline", name=name, technique="baseline", backend="pytorch",
                  precision="fp32", **kw)


def test_round_trip_and_schema(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path))
    path = write_record(rec(latency_ms={"total": {"median": 1.5, "p95": float("nan")}}))
    data = json.loads(path.read_text())
    assert path == tmp_path / "t" / "results" / "pytorch-fp32.json"
    assert data["schema"] == records.SCHEMA and data["status"] == "ok"
    assert data["latency_ms"]["total"]["p95"] is None  # NaN is written as null, never invalid JSON
    for field in ("target", "notebook", "name", "technique", "backend", "precision", "status", "reason",
                  "device", "batch_size", "latency_ms", "throughput_per_s", "size_bytes",
                  "peak_memory_bytes", "accuracy", "fidelity", "environment"):
        assert field in data
    assert [r["name"] for r in load_records("t")] == ["pytorch-fp32"]


def test_atomic_write_keeps_old_file_on_failure(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path))
    path = write_record(rec(size_bytes=1))

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(records.json, "dump", boom)
    with pytest.raises(RuntimeError):
        write_record(rec(size_bytes=2))
    assert json.loads(path.read_text())["size_bytes"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["pytorch-fp32.json"]  # no temp file left


def test_status_and_reason_validated():
    with pytest.raises(ValueError, match="status"):
        rec(status="maybe")
    with pytest.raises(ValueError, match="needs a reason"):
        rec(status="skipped")
    assert rec(status="skipped", reason="no GPU").reason == "no GPU"


def test_unreadable_record_is_reported_not_raised(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path))
    write_record(rec())
    (tmp_path / "t" / "results" / "half.json").write_text('{"schema": "optlib.res')
    out = {r["name"]: r for r in load_records("t")}
    assert out["pytorch-fp32"]["status"] == "ok"
    assert out["half"]["status"] == "failed" and "unreadable record" in out["half"]["reason"]
