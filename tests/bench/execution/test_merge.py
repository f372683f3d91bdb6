"""`bench eval --shard I/N` and `bench merge`, and `bench eval` under torchrun: the run merged from shards equals
the run made in one process (rows in order, metrics, identity), on generated, executed, instruction, drift and
judged and lm-eval's knowledge tasks; and every way to get the shards wrong is one line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.machine import machine
from conftest import ROOT, make_adapter

TASKS = "gsm8k,humaneval,ifeval,drift,alpaca_eval,arc_easy"
VOLATILE = {"duration", "seconds_per_pair"}  # wall-clock readings, not results


def eval_args(model: Path, data: Path, results: Path, *extra: str) -> list[str]:
    return ["eval", str(model), "--tasks", TASKS, "--data-dir", str(data), "--results-dir", str(results),
            "--dtype", "float32", "--judge", f"local:{model}", "--max-new-tokens", "gsm8k=16,ifeval=16,humaneval=24",
            "--task-limits", "gsm8k=5,arc_easy=7", *extra]


def without(value, keys=VOLATILE):
    if isinstance(value, dict):
        return {k: without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without(v, keys) for v in value]
    return value


def read_run(results: Path, name: str) -> tuple[dict, dict, dict]:
    """run.json, rows and metrics, the results directory's path (in messages) written as RESULTS."""
    def read(path: Path) -> str:
        return path.read_text().replace(str(results), "RESULTS")

    run_dir = results / "runs" / name
    run = json.loads(read(run_dir / "run.json"))
    rows = {t: [json.loads(line) for line in read(run_dir / t / "predictions.jsonl").splitlines()]
            for t in run["identity"]["tasks"]}
    metrics = {t: json.loads(read(run_dir / t / "metrics.json")) for t in run["identity"]["tasks"]}
    return run, rows, metrics


def assert_close(ours, theirs, where: str = "") -> None:
    """Equal, but for floats, which agree to 1e-5: a log-probability computed in a batch of another make-up
    (drift's KL, the judge's preference) differs in its last bits, and a spread of such values (a standard
    error over three pairs) a little more; texts and discrete scores may not differ."""
    if isinstance(ours, float) and isinstance(theirs, float):
        assert theirs == pytest.approx(ours, rel=1e-5, abs=1e-5), where
    elif isinstance(ours, dict) and isinstance(theirs, dict):
        assert ours.keys() == theirs.keys(), where
        for key in ours:
            assert_close(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, list) and isinstance(theirs, list):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_close(a, b, f"{where}[{i}]")
    else:
        assert ours == theirs, where


def assert_same_run(whole: tuple[dict, dict, dict], merged: tuple[dict, dict, dict]) -> None:
    (run_a, rows_a, metrics_a), (run_b, rows_b, metrics_b) = whole, merged
    assert run_b["identity"] == run_a["identity"] and run_b["complete"]
    assert run_b["data"] == run_a["data"] and run_b["git"] == run_a["git"]
    assert_close(without(rows_a), without(rows_b), "rows")
    assert_close(without(metrics_a), without(metrics_b), "metrics")


@pytest.fixture
def adapter(tiny_model_dir, tmp_path) -> Path:
    return make_adapter(tiny_model_dir, tmp_path / "adapter")


@pytest.mark.slow
def test_three_shards_merged_are_the_run_made_whole(capsys, tiny_model_dir, fixture_data, adapter, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"  # apart: the shards generate, not read the whole's cache
    assert main([*eval_args(tiny_model_dir, fixture_data, whole), "--adapter", str(adapter), "--name", "tuned"]) == 0
    for i in range(3):
        assert main([*eval_args(tiny_model_dir, fixture_data, parts), "--adapter", str(adapter), "--name", "tuned",
                     "--shard", f"{i}/3"]) == 0
    shard = json.loads((parts / "runs" / "tuned.shard-1-of-3" / "run.json").read_text())
    assert shard["identity"]["shard"] == {"index": 1, "count": 3}
    sizes = {task: len(rows) for task, rows in read_run(parts, "tuned.shard-1-of-3")[1].items()}
    assert sizes == {task: len(range(1, n, 3)) for task, n in
                     ((t, len(rows)) for t, rows in read_run(whole, "tuned")[1].items())}
    capsys.readouterr()
    names = [f"tuned.shard-{i}-of-3" for i in (2, 0, 1)]  # any order
    assert main(["merge", *names, "--name", "tuned", "--results-dir", str(parts)]) == 0
    assert "merged from 3 shards" in capsys.readouterr().out
    assert_same_run(read_run(whole, "tuned"), read_run(parts, "tuned"))
    assert read_run(parts, "tuned")[0]["shard_machines"] == [machine()] * 3  # each shard's, in shard order
    outputs = json.loads((parts / "runs" / "tuned" / "alpaca_eval" / "model_outputs.json").read_text())
    assert outputs == json.loads((whole / "runs" / "tuned" / "alpaca_eval" / "model_outputs.json").read_text())
    assert main(["merge", *names, "--name", "tuned", "--results-dir", str(parts)]) == 0  # merged already: reused
    shutil.copytree(whole / "runs" / "tuned", parts / "runs" / "whole")  # the merged run reads as the whole one
    assert main(["compare", "whole", "tuned", "--results-dir", str(parts)]) == 0
    rows = json.loads((parts / "reports" / "whole-vs-tuned" / "report.json").read_text())["tasks"]
    paired = [r for r in rows if r["run"] == "tuned" and r.get("delta") is not None]
    assert paired and all(r["delta"] == pytest.approx(0, abs=1e-6) for r in paired), paired


@pytest.mark.slow
def test_two_processes_under_torchrun_write_the_run_one_process_writes(tiny_model_dir, fixture_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = eval_args(tiny_model_dir, fixture_data, one, "--name", "seed")
    assert main(args) == 0
    args = eval_args(tiny_model_dir, fixture_data, two, "--name", "seed")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("results:") == 1  # rank 0 reports the merged run
    assert_same_run(read_run(one, "seed"), read_run(two, "seed"))
    assert sorted(p.name for p in (two / "runs").iterdir() if not p.name.startswith("agreement")) == \
        ["seed", "seed.shard-0-of-2", "seed.shard-1-of-2"]


def test_bad_shards_are_one_line(capsys, tiny_model_dir, fixture_data, tmp_path):
    quick = ["eval", str(tiny_model_dir), "--tasks", "gsm8k", "--limit", "3", "--data-dir", str(fixture_data),
             "--results-dir", str(tmp_path), "--dtype", "float32", "--max-new-tokens", "gsm8k=4", "--name", "r"]
    for spec in ("3/3", "a/2", "1/0", "1", "1/2/3"):
        assert main([*quick, "--shard", spec]) == 2
        assert f"--shard {spec}: expected I/N with 0 <= I < N" in capsys.readouterr().err
    assert main([*quick, "--shard", "0/4"]) == 2
    assert "4 shards but task gsm8k has 3 examples: every shard needs at least one" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "r.shard-0-of-4").exists()

    assert main([*quick, "--shard", "0/2"]) == 0 and main([*quick, "--shard", "0/3"]) == 0
    assert main([*quick[:5], "2", *quick[6:], "--shard", "1/2", "--name", "other"]) == 0
    capsys.readouterr()
    merge = ["merge", "--name", "m", "--results-dir", str(tmp_path)]
    cases = {("r.shard-0-of-2",): "shard 1/2 missing: evaluate it with --shard and merge again",
             ("r.shard-0-of-2", "r.shard-0-of-2"): "shard 0/2 given twice (r.shard-0-of-2, r.shard-0-of-2)",
             ("r.shard-0-of-2", "r.shard-0-of-3"): "split the examples into 2 and 3 shards",
             ("r.shard-0-of-2", "other.shard-1-of-2"): "are shards of different evaluations (limit, tasks differ)",
             ("r.shard-0-of-2", "nothing"): "run nothing: no such run in",
             ("r",): "run r: no such run"}
    for runs, message in cases.items():
        assert main([*merge[:1], *runs, *merge[1:]]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs" / "m").exists()
    whole = tmp_path / "runs" / "w"
    assert main([*quick[:-1], "w"]) == 0
    capsys.readouterr()
    assert main(["merge", "w", "--name", "m", "--results-dir", str(tmp_path)]) == 2
    assert "run w is not a shard (bench eval --shard I/N writes one)" in capsys.readouterr().err
    run = json.loads((whole / "run.json").read_text())
    (tmp_path / "runs" / "r.shard-0-of-2" / "run.json").write_text(json.dumps({**run, "complete": False,
                                                                              "name": "r.shard-0-of-2"}))
    assert main(["merge", "r.shard-0-of-2", "--name", "m", "--results-dir", str(tmp_path)]) == 2
    assert "run r.shard-0-of-2 is not complete" in capsys.readouterr().err
