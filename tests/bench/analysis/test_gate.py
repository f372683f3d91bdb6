"""bench/analysis/gate.py and `bench gate`: a regression fails (exit 1) only when the drop exceeds its allowance and the paired
test, Holm-corrected, says it is real; noise passes; small slices say they are underpowered; reports in three formats; usage and data errors and crashes are exit 2."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from bench.cli import main
from bench.analysis.stats import holm
from conftest import write_run


def runs(tmp_path, candidate_lost: int, n: int = 60, name: str = "cand") -> None:
    """A baseline right on the first half of n examples; the candidate loses `candidate_lost` of those."""
    base = [(f"q{i}", 1.0 if i < n // 2 else 0.0) for i in range(n)]
    cand = [(f"q{i}", 0.0 if i < candidate_lost else s) for i, (_, s) in enumerate(base)]
    write_run(tmp_path, "base", {"gsm8k": base, "mmlu": base})
    write_run(tmp_path, name, {"gsm8k": cand, "mmlu": base})


def gate(tmp_path, *extra: str) -> int:
    return main(["gate", "cand", "--baseline", "base", "--results-dir", str(tmp_path), *extra])


def test_holm():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_a_real_regression_fails_with_exit_1_and_reports_everywhere(tmp_path, monkeypatch, capsys):
    runs(tmp_path, candidate_lost=12)
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    out = [f"--{kind}={tmp_path / ('gate.' + ext)}" for kind, ext in (("markdown", "md"), ("json", "json"),
                                                                      ("junit", "xml"))]
    assert gate(tmp_path, "--max-drop", "gsm8k=5", *out) == 1
    text = (tmp_path / "gate.md").read_text()
    assert text.startswith("## forgetbench gate: FAIL") and "| gsm8k | 60 | 50.00 | 30.00 | -20.00" in text
    assert "- gsm8k: examples that got worse: q0, q1, q2, q3, q4, q5, q6, q7, q8, q9, q10, q11\n" in text
    assert summary.read_text().startswith("earlier step\n## forgetbench gate: FAIL")
    verdict = json.loads((tmp_path / "gate.json").read_text())
    assert verdict["verdict"] == "fail" and {t["task"]: t["verdict"] for t in verdict["tasks"]} == \
        {"gsm8k": "fail", "mmlu": "pass"}
    suite = ET.parse(tmp_path / "gate.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    [failure] = suite.iter("failure")
    assert "delta -20.00" in failure.get("message") and "p_holm" in failure.get("message")


def test_a_drop_within_its_allowance_or_not_significant_passes(tmp_path):
    runs(tmp_path / "a", candidate_lost=12)
    assert gate(tmp_path / "a", "--max-drop", "gsm8k=25") == 0, "a 20-point drop within 25 allowed"
    runs(tmp_path / "b", candidate_lost=2)
    assert gate(tmp_path / "b") == 0, "2 of 60 lost is noise (p = 0.5)"


def test_a_run_against_itself_passes(tmp_path, capsys):
    runs(tmp_path, candidate_lost=12)
    assert main(["gate", "cand", "--baseline", "cand", "--results-dir", str(tmp_path)]) == 0
    assert "PASS: cand against baseline:cand" in capsys.readouterr().out


def test_only_the_named_tasks_are_gated(tmp_path, capsys):
    runs(tmp_path, candidate_lost=12)
    assert gate(tmp_path, "--tasks", "mmlu") == 0
    assert gate(tmp_path, "--tasks", "mmlu,gsm8k") == 1
    assert gate(tmp_path, "--tasks", "hellaswag") == 2
    assert "--tasks hellaswag: not scored by both runs" in capsys.readouterr().err


def test_an_underpowered_slice_is_said_and_fails_under_strict(tmp_path, capsys):
    runs(tmp_path, candidate_lost=0, n=8)
    assert gate(tmp_path, "--default-max-drop", "10") == 0
    assert "(underpowered)" in capsys.readouterr().out
    assert gate(tmp_path, "--default-max-drop", "10", "--strict") == 1


def test_a_slice_too_small_for_any_drop_fails_under_strict_at_the_default_allowance(tmp_path, capsys):
    """5 pass/fail examples: even all 5 lost gives McNemar's p = 1/16, never below 0.05."""
    runs(tmp_path, candidate_lost=0, n=5)
    assert gate(tmp_path) == 0
    assert "(underpowered)" in capsys.readouterr().out
    assert gate(tmp_path, "--strict") == 1
    runs(tmp_path / "more", candidate_lost=0, n=60)
    assert gate(tmp_path / "more", "--strict") == 0, "60 examples can show a drop: not underpowered at allowance 0"


def test_a_continuous_slice_too_small_for_any_drop_is_underpowered(tmp_path, capsys):
    """5 examples of a score that is not pass/fail, all dropping: the sign-flip test's p is at least 2^(1-5) = 1/16,
    as McNemar's is, so no drop can be shown; the power note says so instead of a finite detectable drop."""
    write_run(tmp_path, "base", {"gsm8k": [(f"q{i}", 0.9) for i in range(5)]})
    write_run(tmp_path, "cand", {"gsm8k": [(f"q{i}", 0.2 + 0.1 * i) for i in range(5)]})
    assert gate(tmp_path) == 0
    assert "(underpowered)" in capsys.readouterr().out
    assert gate(tmp_path, "--strict") == 1


def test_a_max_drop_naming_no_gated_task_or_capability_is_said(tmp_path, capsys):
    runs(tmp_path, candidate_lost=0)
    assert gate(tmp_path, "--max-drop", "gsm8k=2,knowlege=3") == 0
    out = capsys.readouterr().out
    assert "max_drop knowlege: matches no gated task or capability (ignored)" in out and "max_drop gsm8k" not in out


def test_a_floor_fails_a_candidate_below_it(tmp_path):
    runs(tmp_path, candidate_lost=0)
    assert gate(tmp_path, "--require", "mmlu=60") == 1
    assert gate(tmp_path, "--require", "mmlu=40") == 0


def test_config_file_and_its_errors(tmp_path, capsys):
    runs(tmp_path, candidate_lost=12)
    config = tmp_path / "gate.toml"
    config.write_text("alpha = 0.01\n[max_drop]\nmath = 30\n")
    assert gate(tmp_path, "--config", str(config)) == 0, "the capability's allowance covers gsm8k"
    for text, message in (("alpah = 0.1\n", "unknown key 'alpah'"), ("alpha = 'x'\n", "key 'alpha' must be a float"),
                          ("[max_drop]\ngsm8k = 'a'\n", "key max_drop.gsm8k must be a number"),
                          ("alpha = 2\n", "alpha must be in (0, 1)"),
                          ("default_max_drop = inf\n", "max drop default_max_drop must be finite"),
                          ("[max_drop]\ngsm8k = inf\n", "max drop gsm8k must be finite"),
                          (b"alpha = 0.1 # caf\xe9\n", f"--config {config}: not readable TOML")):
        config.write_bytes(text) if isinstance(text, bytes) else config.write_text(text)
        assert gate(tmp_path, "--config", str(config)) == 2
        assert message in capsys.readouterr().err


def test_missing_runs_and_other_examples_are_usage_errors(tmp_path, capsys):
    runs(tmp_path, candidate_lost=0)
    assert main(["gate", "nope", "--baseline", "base", "--results-dir", str(tmp_path)]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    write_run(tmp_path, "other", {"gsm8k": [("x", 1.0)]})
    assert main(["gate", "other", "--baseline", "base", "--results-dir", str(tmp_path)]) == 2
    assert "share no scored example" in capsys.readouterr().err


def test_a_crash_is_exit_2_never_1(tmp_path, monkeypatch, capsys):
    import bench.analysis.gate

    runs(tmp_path, candidate_lost=12)
    monkeypatch.setattr(bench.analysis.gate, "build_comparison", lambda runs: 1 / 0)
    assert gate(tmp_path) == 2
    assert "bench gate crashed (ZeroDivisionError" in capsys.readouterr().err


def test_long_flip_lists_are_cut_to_fit_a_comment():
    import pandas as pd

    from bench.analysis.gate import GateConfig, Verdict
    from bench.analysis.report import gate_markdown

    rows = pd.DataFrame([{"task": "t", "n": 10, "baseline_score": 1.0, "score": 0.0, "metric": "accuracy",
                          "delta": -1.0, "delta_low": -1.0, "delta_high": -1.0, "p_value": 0.001, "p_holm": 0.001,
                          "allowed_drop": 0.0, "detectable_drop": 60.0, "underpowered": False,
                          "right_to_wrong": 10, "wrong_to_right": 0, "verdict": "fail", "reasons": "drop"}])
    text = gate_markdown(Verdict(rows, True, [], GateConfig(), "c", "b", {"t": [f"id{i}" for i in range(5000)]}))
    assert "and 4980 more" in text and len(text) < 65_536


@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_the_power_floor_is_computed_at_the_gates_alpha(tmp_path, alpha):
    """Nothing changed on 120 pass/fail examples of two gated tasks: the detectable drop is the exact floor, the
    fewest discordant examples, all one way, that McNemar's exact test rejects at Holm's strictest step of the gate's
    own alpha, alpha / 2 (7 at 5%, 9 at 1%): a smaller drop could not fail the gate even as its smallest p."""
    from bench.analysis.stats import mcnemar_exact

    runs(tmp_path, candidate_lost=0, n=120)
    out = tmp_path / "gate.json"
    assert gate(tmp_path, "--alpha", str(alpha), f"--json={out}") == 0
    fewest = next(k for k in range(1, 121) if mcnemar_exact(k, 0) < alpha / 2)
    floors = {t["task"]: t["detectable_drop"] for t in json.loads(out.read_text())["tasks"]}
    assert floors == {"gsm8k": pytest.approx(100 * fewest / 120), "mmlu": pytest.approx(100 * fewest / 120)}
    assert fewest == {0.05: 7, 0.01: 9}[alpha]


def test_a_row_scored_on_fewer_examples_shows_the_shared_examples_scores_and_a_missing_task_is_said(tmp_path):
    """The baseline scored 200 GSM8K examples (the first 100 right), the candidate the first 100 (all right): the row's
    scores, n and Δ are all over the 100 both scored; a task only one run scored is named, not silently dropped."""
    base = [(f"q{i}", 1.0 if i < 100 else 0.0) for i in range(200)]
    write_run(tmp_path, "base", {"gsm8k": base, "mmlu": base[:50]})
    write_run(tmp_path, "cand", {"gsm8k": base[:100], "mmlu": base[:50], "arc": base[:50]})
    out = tmp_path / "gate.json"
    assert gate(tmp_path, f"--markdown={tmp_path / 'gate.md'}", f"--json={out}") == 0
    text = (tmp_path / "gate.md").read_text()
    assert "| gsm8k | 100 | 100.00 | 100.00 | +0.00" in text
    assert "gsm8k: gated on the 100 examples both scored (200 in the baseline, 100 in the candidate)" in text
    assert "arc: not gated, scored only by the candidate" in text


def test_a_required_kl_is_a_ceiling(tmp_path):
    """Drift's KL is lower-is-better: `--require drift=0.5` fails a candidate above 0.5 nats, not one below it."""
    for kl, code in ((0.01, 0), (0.9, 1)):
        results = tmp_path / str(kl)
        write_run(results, "base", {"drift": [(f"d{i}", 0.3) for i in range(20)]})
        write_run(results, "cand", {"drift": [(f"d{i}", kl) for i in range(20)]})
        for path in results.glob("runs/*/drift/metrics.json"):
            path.write_text(json.dumps(json.loads(path.read_text()) | {"metric": "kl", "capability": "drift"}))
        md = results / "gate.md"
        assert main(["gate", "cand", "--baseline", "base", "--results-dir", str(results), "--require", "drift=0.5",
                     "--default-max-drop", "1", f"--markdown={md}"]) == code
        assert ("above the ceiling 0.5" in md.read_text()) == bool(code)
