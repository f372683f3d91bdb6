"""examples/: what users copy into their repositories runs here, on the embedded model, so it cannot rot."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from bench.cli import main
from bench.data import default_data_dir



@pytest.mark.slow
def test_the_github_gate_script_evaluates_a_candidate_and_gates_it(tmp_path):
    from bench.generation.models import embedded_model_dir
    from conftest import make_adapter

    data_dir = default_data_dir()
    if data_dir is None:
        pytest.skip("no data mirror (../shared/data or $BENCH_DATA_DIR)")
    results, limits = tmp_path / "results", "arc_easy=40"
    assert main(["eval", "default", "--tasks", "arc_easy", "--task-limits", limits, "--dtype", "float32",
                 "--name", "seed", "--results-dir", str(results), "--data-dir", str(data_dir)]) == 0
    assert main(["baseline", "save", "seed", str(tmp_path / "baseline"), "--results-dir", str(results)]) == 0
    adapter = make_adapter(embedded_model_dir(), tmp_path / "adapter")
    env = {**os.environ, "BENCH": f"{sys.executable} -m bench.cli", "RESULTS": str(results), "TASKS": "arc_easy",
           "LIMITS": limits, "DATA_DIR": str(data_dir), "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    done = subprocess.run(["bash", str(ROOT / "examples" / "github" / "forgetbench-gate.sh"), str(adapter),
                           str(tmp_path / "baseline"), str(tmp_path / "reports")], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    verdict = json.loads((tmp_path / "reports" / "gate.json").read_text())
    # Measured: this small random LoRA moves no ARC-Easy answer of the 40 (Δ 0.00), so the gate passes and says so;
    # a candidate that regresses is bench gate's own tests' (tests/bench/analysis/test_gate.py), exit 1.
    assert (verdict["verdict"], done.returncode) == ("pass", 0), done.stderr[-2000:]
    assert verdict["tasks"][0]["delta"] == 0.0
    assert verdict["tasks"][0]["task"] == "arc_easy" and verdict["baseline"] == "baseline:seed"
    assert (tmp_path / "reports" / "gate.xml").is_file()
    assert (tmp_path / "summary.md").read_text() == (tmp_path / "reports" / "gate.md").read_text() + "\n"


FAKE_SBATCH = """#!/usr/bin/env bash
# sbatch as far as examples/slurm needs it: runs the job now, an array's tasks one after the other.
array= wrap=
for arg in "$@"; do
  case $arg in --array=*) array=${arg#--array=} ;; --wrap=*) wrap=${arg#--wrap=} ;; esac
done
echo "$wrap" >> "$SBATCH_LOG"
if [ -n "$array" ]; then
  for i in $(seq ${array%-*} ${array#*-}); do SLURM_ARRAY_TASK_ID=$i bash -c "$wrap" >&2 || exit 1; done
else
  bash -c "$wrap" >&2 || exit 1
fi
echo 42
"""


def test_the_slurm_array_example_evaluates_shards_then_merges_them(tiny_model_dir, fixture_data, tmp_path):
    """examples/slurm/eval-shards.sh under a stand-in sbatch that runs each job at once: the array's shards, then
    the merge, which writes the run one process writes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    results, log = tmp_path / "results", tmp_path / "sbatch.log"
    options = ["--tasks", "gsm8k", "--limit", "3", "--max-new-tokens", "gsm8k=8", "--dtype", "float32",
               "--data-dir", str(fixture_data), "--results-dir", str(results)]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "BENCH": f"{sys.executable} -m bench",
           "SBATCH_LOG": str(log)}
    done = subprocess.run(["bash", str(ROOT / "examples" / "slurm" / "eval-shards.sh"), str(tiny_model_dir), "seed",
                           "2", *options], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = log.read_text().splitlines()
    assert len(jobs) == 2 and "--shard $SLURM_ARRAY_TASK_ID/2" in jobs[0] and " merge seed.shard-0-of-2 " in jobs[1]
    merged = json.loads((results / "runs" / "seed" / "run.json").read_text())
    assert merged["complete"] and merged["shards"] == ["seed.shard-0-of-2", "seed.shard-1-of-2"]
    assert main(["eval", str(tiny_model_dir), *options, "--name", "whole"]) == 0
    whole = json.loads((results / "runs" / "whole" / "run.json").read_text())
    assert merged["identity"] == whole["identity"]
    rows = [(results / "runs" / name / "gsm8k" / "predictions.jsonl").read_text() for name in ("seed", "whole")]
    assert rows[0] == rows[1]
