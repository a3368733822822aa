import json
import shutil
import subprocess

import numpy as np
import pytest

from optlib.measurement.stats import summarize
from optlib.results import records
from optlib.results.records import Record, load_records, write_record
from optlib.results.values import Artifact, Fidelity, Kernels, LatencySummary, Memory, Ratio


def rec(name="pytorch-fp32", **kw):
    return Record(target="t", notebook="01_baseline", name=name, technique="baseline", backend="pytorch",
                  precision="fp32", **kw)


def test_round_trip_and_schema(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path))
    latency = summarize([np.array([1.0, 1.5, 2.0])])
    latency.p95 = float("nan")
    full = rec(latency_ms={"total": latency}, batch_size=1,
               speedups=[Ratio(2.0, (1.8, 2.2), "pytorch-fp32", "paired", 20, "latency", 1)],
               fidelity=Fidelity("pytorch-fp32", 0.99, 1, 0.01, 1, 0, 0.3, 0.01, 0.002, (-0.001, 0.004)),
               kernels=Kernels("mixed", 0.95, "integer share", {"integer_ops": {"QLinearConv": 19}}),
               memory=Memory(300_000_000, 250_000_000, "child ru_maxrss", [1, 32]),
               artifact=Artifact("onnxruntime", {"model": "artifacts/02/model.onnx"}, {"config": {}}),
               one_time_cost_seconds={"export": 1.5})
    path = write_record(full)
    data = json.loads(path.read_text())
    assert path == tmp_path / "t" / "results" / "pytorch-fp32.json"
    assert data["schema"] == records.SCHEMA == "optlib.result/3" and data["status"] == "ok"
    assert data["latency_ms"]["total"]["p95"] is None  # NaN is written as null, never invalid JSON
    for field in ("target", "notebook", "name", "technique", "backend", "precision", "status", "reason",
                  "device", "batch_size", "latency_ms", "throughput", "speedups", "size_bytes",
                  "memory", "accuracy", "fidelity", "kernels", "one_time_cost_seconds", "artifact", "environment"):
        assert field in data
    (back,) = load_records("t")
    assert isinstance(back, Record) and isinstance(back.latency, LatencySummary) and back.latency.median == 1.5
    assert back.speedup("pytorch-fp32") == full.speedups[0] and back.speedup("other") is None
    assert back.fidelity == full.fidelity and back.kernels == full.kernels and back.memory == full.memory
    assert back.memory.above_resting_bytes == 50_000_000 and back.artifact == full.artifact
    assert back.to_dict() == json.loads(json.dumps(back.to_dict()))  # plain JSON values only


def test_atomic_write_keeps_old_file_on_failure(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path))
    path = write_record(rec(size_bytes=1))

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("optlib.core.io.json.dump", boom)
    with pytest.raises(RuntimeError):
        write_record(rec(size_bytes=2))
    assert json.loads(path.read_text())["size_bytes"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["pytorch-fp32.json"]  # no temp file left


def test_atomic_folder_is_whole_or_absent_and_an_ordinary_folder(tmp_path):
    import os
    import stat

    from optlib.core.io import atomic_folder

    target = tmp_path / "deploy"
    with atomic_folder(target) as d:
        (d / "a.txt").write_text("first")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o777 & ~umask  # not mkdtemp's private 0700
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as d:
            (d / "a.txt").write_text("half")
            raise RuntimeError("stopped midway")
    assert (target / "a.txt").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["deploy"]
    with atomic_folder(target, replace=False) as d:  # a cache entry another process wrote first stays
        (d / "b.txt").write_text("second")
    assert [p.name for p in target.iterdir()] == ["a.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["deploy"]
    with atomic_folder(target) as d:
        (d / "b.txt").write_text("second")
    assert [p.name for p in target.iterdir()] == ["b.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["deploy"]


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
    old = rec(name="old").to_dict()
    old["schema"] = "optlib.result/1"
    (tmp_path / "t" / "results" / "old.json").write_text(json.dumps({**old, "notebook": "02_onnx_and_compilers"}))
    out = {r.name: r for r in load_records("t")}
    assert out["pytorch-fp32"].status == "ok"
    assert out["half"].status == "failed" and "unreadable record" in out["half"].reason
    assert out["old"].status == "failed" and "rerun notebook 02_onnx_and_compilers" in out["old"].reason


def test_written_files_are_ordinary_files(monkeypatch, tmp_path):
    import os
    import stat

    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path))
    mode = stat.S_IMODE(os.stat(write_record(rec())).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # not mkstemp's private 0600


@pytest.mark.skipif(shutil.which("lscpu") is None, reason="needs lscpu (util-linux)")
def test_environment_names_the_cpu_and_its_instruction_sets_as_lscpu_does():
    from optlib.core import env

    out = subprocess.run(["lscpu"], capture_output=True, text=True, env={"LC_ALL": "C"}).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    e = env.environment()
    assert e["cpu"] == fields["Model name"].strip()
    assert e["cpu_isa"] == [f for f in env.ISA_FLAGS if f in flags]
