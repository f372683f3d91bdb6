"""bench/evaluation/agreement.py and `bench judge agreement`: a judge measured against a reference judge's verdicts,
beside the baselines; alpaca_eval's agreement rule; the readings of both orders; bad pairs files."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench.cli import main
from bench.evaluation.agreement import (ReferencePair, agreement_metrics, baselines, carried, measure, read_pairs,
                                        readings, verdict, why_not_informative)
from bench.evaluation.judge import Preference
from conftest import FIXTURES, MIRROR

PAIRS = FIXTURES / "judgments.jsonl"


def test_agreement_is_alpaca_evals_absolute_rule_on_binary_verdicts():
    """Scored by alpaca_eval's own scoring rule (its analyzer's default) on the same verdicts: a tie counts half."""
    from alpaca_eval.metrics.helpers import AbsoluteScoringRule

    pairs = read_pairs(PAIRS)
    judged = [0.9, 0.5, 0.2, 0.7, 0.1, 0.6]  # the reference's 1.5 (a synonym for happy) is left out
    longer = [p.second for p in baselines(pairs)["longer output"]]
    ours = agreement_metrics(pairs, judged, [(j, j) for j in judged], longer)
    decided = [i for i, p in enumerate(pairs) if p.preference != 1.5]
    theirs = AbsoluteScoringRule().score([1 + verdict(judged[i]) for i in decided],
                                         [1 + verdict(pairs[i].second) for i in decided])
    assert ours["n"] == 5 and ours["agreement"] == pytest.approx(theirs) == pytest.approx((0 + 0.5 + 1 + 1 + 0) / 5)


@pytest.mark.skipif(MIRROR is None, reason="needs the data mirror")
@pytest.mark.parametrize("name, longer_agrees, reference_agrees", [
    ("fusechat-llama-3.2-3b-instruct", 64.5, 47.1), ("claude-2", 83.2, 83.7)])
def test_the_baselines_on_the_mirror_are_the_issues_figures(name, longer_agrees, reference_agrees):
    """Counted here with plain loops over the raw file: the longer output agrees on 516 of the 800 balanced pairs
    that the reference decides and whose lengths differ (64.5%); equal lengths tie, so 517 of 802 with ours."""
    records = [json.loads(line) for line in (MIRROR / "alpaca_eval_judgments" / f"{name}.jsonl").open()]
    decided = [r for r in records if r["preference"] != 1.5]
    longer_wins = sum((len(r["output_2"]) > len(r["output_1"])) == (r["preference"] > 1.5) for r in decided
                      if len(r["output_1"]) != len(r["output_2"]))
    ties = sum(len(r["output_1"]) == len(r["output_2"]) for r in decided)
    rows = measure(read_pairs(MIRROR / "alpaca_eval_judgments" / f"{name}.jsonl"), [])
    assert rows["longer output"]["agreement"] == pytest.approx((longer_wins + ties / 2) / len(decided))
    assert 100 * rows["longer output"]["agreement"] == pytest.approx(longer_agrees, abs=0.05)
    assert 100 * rows["reference (output_1)"]["agreement"] == pytest.approx(reference_agrees, abs=0.05)
    assert rows["position one"]["agreement"] == 0.5 and rows["position one"]["position_consistency"] == 0


def test_calibration_removes_a_position_bias_that_averaging_hides():
    """A judge with a true signal (±1 in log-odds) under a position bias of 2 for the second shown output: every
    verdict flips with the order; averaging gets the verdicts right but no order agrees with the other; each order
    shifted by its own mean bias agrees with itself and the reference, and `agree` alone is all ties."""
    signal = np.array([1, -1, 1, 1, -1, -1, 1, -1])
    sigmoid = lambda x: 1 / (1 + math.exp(-x))
    given = [sigmoid(s + 2) for s in signal]  # the second output shown second
    swapped = [sigmoid(s - 2) for s in signal]  # shown first after the swap (mapped back to the second output)
    prefs = [Preference((a + b) / 2, (a, b)) for a, b in zip(given, swapped)]
    read = readings(prefs)
    assert [verdict(p) for p in read["mean"][0]] == [verdict(sigmoid(s)) for s in signal]
    assert all((a - 0.5) * (b - 0.5) < 0 for a, b in read["mean"][1]), "every single-order verdict flips"
    assert all((a - 0.5) * (b - 0.5) > 0 for a, b in read["calibrated"][1])
    assert [verdict(p) for p in read["calibrated, agree"][0]] == [float(s > 0) for s in signal]
    assert read["agree"][0] == [0.5] * len(signal)


def test_a_judge_without_positions_has_one_reading():
    prefs = [Preference(p, (p, p)) for p in (0.2, 0.8)]
    assert list(readings(prefs)) == ["mean"]


def test_informative_only_when_the_paired_interval_clears_the_longer_output():
    """40 pairs whose reference prefers the shorter output in 16: the longer output agrees on 24; a judge with the
    reference's own verdicts clears it, one that agrees on 26 does not (the paired interval includes zero)."""
    pairs = [ReferencePair(str(i), "q", "a" * (1 + i % 2), "a" * (2 - i % 2), 1.9 if (i % 2 == 0) == (i < 24) else 1.1)
             for i in range(40)]
    longer = [p.second for p in baselines(pairs)["longer output"]]
    metrics = lambda judged: agreement_metrics(pairs, judged, [(v, v) for v in judged], longer)
    informs = lambda judged: carried({"judge: mean": metrics(judged), "longer output": metrics(longer)}, "run")
    assert metrics(longer)["agreement"] == 24 / 40 and not informs(longer)["informative"]
    reference = [p.second for p in pairs]
    assert informs(reference)["informative"] and why_not_informative(informs(reference)) is None
    close = reference[:26] + longer[26:]  # right on 26 (24 of them where the longer is right too)
    assert metrics(close)["agreement"] == pytest.approx(26 / 40) and not informs(close)["informative"]
    assert "65.0% [" in why_not_informative(informs(close)) and "longer output's 60.0%" in why_not_informative(informs(close))
    assert "not measured" in why_not_informative(None)


@pytest.mark.parametrize("line, message", [
    ("not json", "line 2: not JSON"),
    ('{"instruction": "i", "output_1": "a", "preference": 1.2}', "line 2: missing or non-string 'output_2'"),
    ('{"instruction": "i", "output_1": "a", "output_2": "b", "preference": 2.5}',
     "line 2: 'preference' must be a number in [1, 2], got 2.5"),
    ('{"instruction": "i", "output_1": "a", "output_2": "b", "preference": "2"}',
     "line 2: 'preference' must be a number in [1, 2], got '2'"),
])
def test_a_bad_pairs_file_is_one_line_naming_file_and_line(tmp_path, capsys, line, message):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(PAIRS.read_text().splitlines()[0] + "\n" + line + "\n")
    assert main(["judge", "agreement", "--pairs", str(bad), "--judge", "local:unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bench: error: {bad}, {message}") and "\n" not in err


def test_a_judge_spec_that_does_not_parse_is_one_line(tmp_path, capsys):
    assert main(["judge", "agreement", "--pairs", str(PAIRS), "--judge", "pointwise:",
                 "--results-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "bench: error: --judge pointwise:: name the model after 'pointwise:'"
    assert main(["judge", "agreement", "--pairs", str(tmp_path / "none.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["local", "pointwise"])
def test_bench_judge_agreement_stores_a_run_and_resumes_from_it(tiny_model_dir, tmp_path, capsys, kind):
    argv = ["judge", "agreement", "--pairs", str(PAIRS), "--judge", f"{kind}:{tiny_model_dir}", "--limit", "4",
            "--results-dir", str(tmp_path), "--dtype", "float32"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    first = first[first.index("Judge agreement:"):]  # after the progress bar
    [run] = (tmp_path / "runs").iterdir()
    record = json.loads((run / "run.json").read_text())
    metrics = json.loads((run / "judge_agreement" / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run / "judge_agreement" / "predictions.jsonl").open()]
    assert record["complete"] and record["identity"]["pairs"] == 4 and record["identity"]["judge"]["fingerprint"]
    assert [r["id"] for r in rows] == [f"judgments-{i}" for i in (1, 2, 3, 4)]
    assert metrics["readings"]["judge: mean"]["n"] == 3  # pair 4 is the reference's tie
    assert all(r["seconds"] > 0 for r in rows)
    assert "| longer output | 66.7 [" in first and "| judge: mean |" in first
    (run / "judge_agreement" / "predictions.jsonl").unlink()  # a finished run is read, not judged again
    assert main(argv) == 0 and capsys.readouterr().out == first, "the same table, read from the finished run"
