"""The harness gates itself: the embedded model's committed baseline (results/baselines/harness, `make baseline`),
re-run afresh, must give every prediction the same, so a change to prompts, scoring, templates, the engine or a
dependency that moves a number is caught, with the example's id and a diff."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT
from bench.cli import main
from bench.data import default_data_dir
from bench.analysis.baselines import BASELINE_FILE, machine

HARNESS = ROOT / "results" / "baselines" / "harness"


@pytest.mark.slow
def test_the_harness_reproduces_its_committed_baseline(capsys):
    saved = json.loads((HARNESS / BASELINE_FILE).read_text())
    data_dir = default_data_dir()
    if data_dir is None:
        pytest.skip("no data mirror (../shared/data or $BENCH_DATA_DIR): the baseline's slices are the mirror's")
    if saved["machine"]["simd"] != machine()["simd"]:
        pytest.skip(f"the baseline was made on a CPU with {saved['machine']['simd']}, this one has "
                    f"{machine()['simd']}: float rounding differs; `make baseline` on this kind of machine")
    code = main(["baseline", "check", str(HARNESS), "--data-dir", str(data_dir)])
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
