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
