"""Runs that survive and scale (core.runstate, core.pipeline, core.cluster, measurement.load), on
small notebooks of the tests' own: skip-unchanged and what reruns after a parameter change, a run
killed with SIGKILL and rerun, the lock, a chapter that hangs or whose kernel dies, two targets
through a local Ray instance, and the contention monitor against psutil's count of a busy process."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import yaml

from optlib.core import params as P
from optlib.core import paths, runstate

BODY = '''import os, time
from optlib.core.params import notebook_params
from optlib.results.records import Record, write_record
P = notebook_params(None, **params)
value = P.bench.samples if NOTEBOOK.startswith("00") else P.quant.calibration_size
write_record(Record(target=P.target, notebook=NOTEBOOK, name=NOTEBOOK + "-rec", technique="baseline",
                    backend="pytorch", precision="fp32", extra={"value": value}))
if os.environ.get("FAKE_DIE") == NOTEBOOK[:2]:
    os.kill(os.getpid(), 9)
time.sleep(float(os.environ.get("FAKE_SLEEP_" + NOTEBOOK[:2], "0")))'''


def make_notebooks(d: Path) -> Path:
    """00_a reads bench.samples, 01_b quant.calibration_size; each writes one record."""
    d.mkdir(parents=True, exist_ok=True)
    for name in ("00_a", "01_b"):
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell('params = {"target": "x"}')
        cell.metadata["tags"] = ["parameters"]
        nb.cells = [cell, nbformat.v4.new_code_cell(f'NOTEBOOK = "{name}"\n' + BODY)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, str(d / f"{name}.ipynb"))
    return d


@pytest.fixture
def project(tmp_path, monkeypatch):
    nbs = make_notebooks(tmp_path / "nbs")
    out = tmp_path / "out"
    monkeypatch.setenv("OPTLIB_NOTEBOOKS_DIR", str(nbs))
    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(out))

    def params(target="fake", **sections):
        f = tmp_path / f"{target}.yaml"
        f.write_text(yaml.safe_dump({"target": target, "bench": {"samples": 5}, "quant": {"calibration_size": 7},
                                     **sections}))
        return f
    return out, params


def cli(*args, env=None, check=True):
    p = subprocess.run([sys.executable, "-m", "optlib", *args], cwd=paths.REPO_DIR, capture_output=True, text=True,
                       timeout=300, env={**os.environ, **(env or {})})
    if check and p.returncode != 0:
        raise AssertionError(f"optlib {args} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def statuses(stdout: str) -> dict[str, str]:
    """{notebook: ok|failed|skipped} from the run's summary lines."""
    out = {}
    for line in stdout.split("summary", 1)[-1].splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("ok", "failed", "skipped"):
            out[parts[1]] = parts[0]
    return out


def test_params_trace_notes_what_is_read_and_nothing_else(tmp_path):
    trace = tmp_path / "read"
    P.trace_reads(trace)
    try:
        p = P.notebook_params(None, bench={"samples": 3}, quant={"calibration_size": 9})  # validation reads all
        p.to_dict(), p.hash()
        assert P.read_value(p, "quant.calibration_size") == 9
        assert p.bench.samples == 3 and p.target == "notebook"
        _ = p.bench.samples  # noted once
    finally:
        P.trace_reads(None)
    assert trace.read_text().split() == ["bench.samples", "target"]


def test_code_closure_covers_what_an_import_really_loads(tmp_path):
    """The static closure of a notebook's imports contains every optlib module that importing
    them really loads (read from sys.modules of a fresh interpreter), and not unrelated ones."""
    make_notebooks(tmp_path)
    closure = set(runstate.code_closure(tmp_path / "01_b.ipynb"))
    code = ("import sys, json; import optlib.core.params, optlib.results.records; "
            "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() if n.startswith('optlib'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], cwd=paths.REPO_DIR, capture_output=True,
                                       text=True, check=True).stdout)
    loaded = {str(Path(f).resolve().relative_to(paths.REPO_DIR)) for f in loaded}
    assert loaded and loaded <= closure
    assert "optlib/techniques/pruning.py" not in closure
    chapter = runstate.code_closure(paths.NOTEBOOKS_DIR / "06_pruning.ipynb")
    assert "optlib/chapters/pruning.py" in chapter and "optlib/techniques/precision.py" not in chapter


def test_unchanged_chapters_skip_and_a_parameter_reruns_its_chapter_and_dependants(project):
    out, params = project
    f = params()
    assert statuses(cli("run", "--params", str(f)).stdout) == {"00_a": "ok", "01_b": "ok"}
    again = cli("run", "--params", str(f)).stdout
    assert statuses(again) == {"00_a": "skipped", "01_b": "skipped"} and "0 of 2 chapter(s) to run" in again
    m = json.loads((out / "fake" / "runs" / "01_b.json").read_text())
    assert m["inputs"]["params"] == {"quant.calibration_size": 7, "target": "fake"}  # what it read, nothing else
    # a parameter only 01 reads: 01 alone; one 00 reads: 00 and 01, which depends on it
    f = params(quant={"calibration_size": 8})
    run = cli("run", "--params", str(f)).stdout
    assert statuses(run) == {"00_a": "skipped", "01_b": "ok"} and "quant.calibration_size 7 -> 8" in run
    f = params(bench={"samples": 6}, quant={"calibration_size": 8})
    assert statuses(cli("run", "--params", str(f)).stdout) == {"00_a": "ok", "01_b": "ok"}
    rec = json.loads((out / "fake" / "results" / "01_b-rec.json").read_text())
    assert rec["extra"]["value"] == 8 and rec["environment"]["run_id"] == json.loads(
        (out / "fake" / "runs" / "01_b.json").read_text())["complete_run_id"]
    # --force NOTEBOOKS reruns those, with progress and the time left by the previous run's cells
    run = cli("run", "--params", str(f), "--force", "01", env={"OPTLIB_PROGRESS_EVERY_S": "0",
                                                              "FAKE_SLEEP_01": "2"}).stdout
    assert statuses(run) == {"00_a": "skipped", "01_b": "ok"}
    assert "01_b: cell 1/3" in run and "left by the previous run" in run and "about" in run
    # a cell that runs long says so while it runs (here every 0.5 s), not only when it completes
    assert re.search(r"01_b: cell 3/3 running for \d+s, \d+s elapsed, about \d+s left by the previous run", run), run
    (out / "fake" / "results" / "00_a-rec.json").unlink()
    run = cli("run", "--params", str(f)).stdout
    assert statuses(run) == {"00_a": "ok", "01_b": "ok"} and "results/00_a-rec.json was removed" in run


def test_sigkill_mid_chapter_then_rerun_and_a_second_run_is_refused(project):
    """A run killed while 01 sleeps after writing its record: that record reads back as from an
    incomplete run (summary says so), a concurrent run is refused naming the lock and the process,
    and the next run redoes 01 only and completes."""
    out, params = project
    f = params()
    proc = subprocess.Popen([sys.executable, "-m", "optlib", "run", "--params", str(f)], cwd=paths.REPO_DIR,
                            env={**os.environ, "FAKE_SLEEP_01": "120"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        rec = out / "fake" / "results" / "01_b-rec.json"
        deadline = time.time() + 120
        while not rec.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert rec.exists(), "01 never wrote its record"
        second = cli("run", "--params", str(f), check=False)
        assert second.returncode == 2
        assert f"pid {proc.pid}" in second.stderr and str(out / "fake" / "runs" / ".lock") in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    summary = cli("summary", "--target", "fake", "--format", "json").stdout
    by_name = {r["name"]: r for r in json.loads(summary)}
    assert by_name["00_a-rec"]["status"] == "ok"
    assert by_name["01_b-rec"]["status"] == "failed" and "incomplete run of 01_b" in by_name["01_b-rec"]["reason"]
    run = cli("run", "--params", str(f)).stdout
    assert statuses(run) == {"00_a": "skipped", "01_b": "ok"} and "was stopped" in run
    by_name = {r["name"]: r for r in json.loads(cli("summary", "--target", "fake", "--format", "json").stdout)}
    assert by_name["01_b-rec"]["status"] == "ok"


def test_a_hung_chapter_times_out_and_a_dead_kernel_fails_its_chapter(project):
    out, params = project
    f = params(run={"chapter_timeout_s": 4})
    p = cli("run", "--params", str(f), env={"FAKE_SLEEP_00": "600", "FAKE_DIE": "01"}, check=False)
    assert p.returncode == 1 and statuses(p.stdout) == {"00_a": "failed", "01_b": "failed"}
    assert "timed out" in p.stdout and "run.chapter_timeout_s = 4 s" in p.stdout
    assert "the kernel died" in p.stdout
    for nb in ("00_a", "01_b"):  # the executed copies stay as the logs
        assert (out / "fake" / "notebooks" / f"{nb}.ipynb").is_file()
        assert json.loads((out / "fake" / "runs" / f"{nb}.json").read_text())["status"] == "failed"
    assert not [c for c in psutil.Process().children(recursive=True) if "ipykernel" in " ".join(c.cmdline())]


def test_two_targets_through_a_local_ray_instance_one_at_a_time(project):
    pytest.importorskip("ray")
    out, params = project
    a, b = params("fake-a"), params("fake-b", quant={"calibration_size": 9})
    p = cli("run", "--targets", f"{a},{b}", "--cluster", "local", env={"FAKE_SLEEP_01": "2"})
    spans = []
    for t, value in (("fake-a", 7), ("fake-b", 9)):
        assert json.loads((out / t / "results" / "01_b-rec.json").read_text())["extra"]["value"] == value
        assert (out / t / "notebooks" / "01_b.ipynb").is_file()
        ms = [json.loads((out / t / "runs" / f"{nb}.json").read_text()) for nb in ("00_a", "01_b")]
        assert all(m["status"] == "complete" for m in ms)
        spans.append((min(m["started_unix"] for m in ms), max(m["finished_unix"] for m in ms)))
    (s1, e1), (s2, e2) = sorted(spans)
    assert e1 <= s2, f"the two measuring tasks overlapped: {spans}"
    assert "summary of target 'fake-a'" in p.stdout and "summary of target 'fake-b'" in p.stdout
    # back here, they resume like any local run
    assert statuses(cli("run", "--params", str(a)).stdout) == {"00_a": "skipped", "01_b": "skipped"}


def test_cluster_needs_both_options_and_names_a_missing_resource(project):
    pytest.importorskip("ray")
    _, params = project
    p = cli("run", "--targets", "cpu", check=False)
    assert p.returncode == 2 and "--targets and --cluster go together" in p.stderr
    board = params("fake-board", run={"node_resource": "edge_board"})
    p = cli("run", "--targets", str(board), "--cluster", "local", check=False)
    assert p.returncode == 2 and "target 'fake-board' needs ['edge_board']" in p.stderr


def test_load_monitor_counts_a_competing_process(tmp_path):
    """Other processes' CPU over a block, against psutil's own count of a busy-looping child."""
    from optlib.measurement.load import LoadMonitor

    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<30: pass"])
    try:
        proc = psutil.Process(child.pid)
        time.sleep(0.5)
        mon = LoadMonitor(threshold=0.25)
        c0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
        with mon.block("x"):
            time.sleep(2.0)
        child_cores = (sum(proc.cpu_times()[:2]) - c0) / (time.perf_counter() - t0)
    finally:
        child.kill()
        child.wait()
    s = mon.summary("x")
    assert child_cores > 0.25  # it ran (beside make test's other worker it gets a share of a core)
    assert s["measured"] and s["contended"] and s["other_cpu_cores"] >= child_cores - 0.15
    assert not mon.summary("never-timed")["contended"]


def test_wait_for_quiet_gives_up_on_a_busy_machine_and_says_so():
    from optlib.measurement.load import wait_for_quiet

    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<30: pass"])
    try:
        time.sleep(0.3)
        seen = wait_for_quiet(threshold=0.25, max_wait_s=1.0, window_s=0.4)
    finally:
        child.kill()
        child.wait()
    assert not seen["quiet"] and seen["waited_s"] >= 1.0 and seen["other_cpu_cores_before"] > 0.25


def test_a_contended_record_is_flagged_in_the_tables():
    import numpy as np

    from optlib.measurement.stats import summarize
    from optlib.results.compare import results_table
    from optlib.results.records import Record
    from optlib.results.report import comparison_table

    def record(name, load):
        return Record(target="t", notebook="01_baseline", name=name, technique="baseline", backend="pytorch",
                      precision="fp32", batch_size=1, latency_ms={"total": summarize([np.array([1.0, 2.0, 3.0])])},
                      extra={"load": load})
    quiet = {"measured": True, "other_cpu_cores": 0.02, "contended": False, "cores": 2}
    busy = {"measured": True, "other_cpu_cores": 0.9, "contended": True, "cores": 2}
    assert "contended" not in results_table([record("a", quiet)]).columns
    table = results_table([record("a", quiet), record("b", busy)])
    assert table.loc["b", "contended"] == "yes: others took 0.90 of 2 cores" and table["contended"].isna()["a"]
    cmp = comparison_table([record("a", quiet), record("b", busy)]).set_index("name")
    assert cmp.loc["b", "other_cpu_cores"] == 0.9 and cmp.loc["b", "contended"].startswith("yes")
