"""The harness gates itself: the embedded model's committed baseline (results/baselines/harness, `make baseline`),
re-run afresh, must give every prediction the same (texts and pass/fail exactly, float scores within a tolerance
far below what the gate reads, so it runs on every kind of CPU), so a change to prompts, scoring, templates, the engine or a
dependency that moves a number is caught, with the example's id and a diff."""
from __future__ import annotations


import pytest

from conftest import ROOT
from bench.cli import main
from bench.data import default_data_dir
from bench.analysis.baselines import SCORE_TOLERANCE, same_score

HARNESS = ROOT / "results" / "baselines" / "harness"


@pytest.mark.slow
def test_the_harness_reproduces_its_committed_baseline(capsys):
    data_dir = default_data_dir()
    if data_dir is None:
        pytest.skip("no data mirror (../shared/data or $BENCH_DATA_DIR): the baseline's slices are the mirror's")
    code = main(["baseline", "check", str(HARNESS), "--data-dir", str(data_dir)])
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]


def test_a_float_score_within_tolerance_is_the_same_prediction_unless_its_verdict_changes():
    assert same_score(0.44491266, 0.44491335), "the measured difference between CPUs with and without avx512_bf16"
    assert same_score(1.0, 1.0) and not same_score(1.0, 0.0)
    assert not same_score(0.4449, 0.4449 + 2 * SCORE_TOLERANCE)
    assert not same_score(0.4999999, 0.5000001), "within tolerance, but the judge's verdict flipped"
    assert not same_score(0.5, 0.5000001), "a tie became a win"
