"""bench/compare.py: paired deltas, intervals and tests over the same examples; flips; refusals."""
from __future__ import annotations

import numpy as np
import pytest

from bench.cli import main
from bench.compare import compare, flips, mcnemar_exact, paired_bootstrap_ci, sign_flip_p
from bench.stats import bootstrap_ci
from bench.store import RunStore
from bench.types import BenchError


def write_run(results_dir, name: str, tasks: dict[str, list[tuple[str, float]]]) -> None:
    """A complete run as `bench eval` leaves it, with the given per-example scores."""
    store = RunStore(results_dir, name)
    identity = {"tasks": {task: {"n": len(rows)} for task, rows in tasks.items()}}
    store.begin({"identity": identity})
    for task, rows in tasks.items():
        scores = [s for _, s in rows]
        low, high = bootstrap_ci(scores)
        store.write_task(task, [{"id": i, "score": s} for i, s in rows],
                         {"task": task, "capability": "math", "metric": "accuracy", "mean": float(np.mean(scores)),
                          "ci_low": low, "ci_high": high, "n": len(rows)})
    store.finish({"identity": identity})


def test_mcnemar_exact_p_values():
    assert mcnemar_exact(0, 6) == pytest.approx(2 * 0.5 ** 6)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_sign_flip_p_and_paired_interval():
    assert sign_flip_p(np.zeros(20)) == 1.0
    assert sign_flip_p(np.full(30, 0.25)) < 0.001
    assert sign_flip_p(np.array([0.1, -0.1] * 15)) > 0.5
    assert sign_flip_p(np.array([0.5, 1.0, 2.0])) == 0.25  # exact: 2 of the 8 sign vectors reach |3.5|
    assert sign_flip_p(np.array([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])) == pytest.approx(2 / 64)
    assert paired_bootstrap_ci(np.zeros(10), np.full(10, 0.5)) == (0.5, 0.5)


def test_compare_pairs_examples_by_id_whatever_their_order(tmp_path):
    seed = [(f"q{i}", 1.0 if i < 20 else 0.0) for i in range(40)]
    tuned = [(f"q{i}", 0.0 if i < 15 else 1.0 if i < 20 else 0.0) for i in range(40)][::-1]  # 15 right->wrong
    write_run(tmp_path, "seed", {"gsm8k": seed})
    write_run(tmp_path, "sft", {"gsm8k": tuned})
    table = compare(tmp_path, ["seed", "sft"]).set_index("run")
    assert table.loc["seed", "score"] == 0.5 and np.isnan(table.loc["seed", "delta"])
    row = table.loc["sft"]
    assert row.delta == pytest.approx(-15 / 40) and row.right_to_wrong == 15 and row.wrong_to_right == 0
    assert row.test == "McNemar exact" and row.p_value == pytest.approx(2 * 0.5 ** 15) and row.significant
    assert row.delta_low <= row.delta <= row.delta_high < 0
    changed = flips(tmp_path, "seed", "sft", "gsm8k")
    assert sorted(changed["id"]) == sorted(f"q{i}" for i in range(15)) and set(changed["direction"]) == {"right->wrong"}


def test_different_examples_missing_runs_and_tasks_are_errors(tmp_path, capsys):
    write_run(tmp_path, "seed", {"gsm8k": [("a", 1.0), ("b", 0.0)]})
    write_run(tmp_path, "other", {"gsm8k": [("a", 1.0), ("c", 0.0)]})
    with pytest.raises(BenchError, match="task gsm8k: runs seed and other scored different examples"):
        compare(tmp_path, ["seed", "other"])
    assert main(["compare", "seed", "nope", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no run 'nope'" in err and "other, seed" in err and err.count("\n") == 1
    write_run(tmp_path, "twice", {"gsm8k": [("a", 1.0), ("a", 0.0)]})
    with pytest.raises(BenchError, match="task gsm8k: run twice scored example 'a' more than once"):
        compare(tmp_path, ["seed", "twice"])
    write_run(tmp_path, "nan", {"gsm8k": [("a", 1.0), ("b", float("nan"))]})
    with pytest.raises(BenchError, match="task gsm8k: run nan has a score that is not a finite number .example 'b'"):
        compare(tmp_path, ["seed", "nan"])
    write_run(tmp_path, "same", {"gsm8k": [("b", 1.0), ("a", 1.0)]})
    assert main(["compare", "seed", "same", "--results-dir", str(tmp_path), "--flips", "nope"]) == 2
    assert "--flips nope" in capsys.readouterr().err


def test_cli_prints_the_table_and_flips(tmp_path, capsys):
    write_run(tmp_path, "seed", {"gsm8k": [(f"q{i}", 1.0) for i in range(12)]})
    write_run(tmp_path, "sdft", {"gsm8k": [(f"q{i}", 0.0) for i in range(12)]})
    assert main(["compare", "seed", "sdft", "--results-dir", str(tmp_path), "--flips", "gsm8k"]) == 0
    out = capsys.readouterr().out
    assert "-100.00*" in out and "12 lost / 0 gained" in out and "12 examples changed" in out and "right->wrong" in out


def test_scores_that_are_not_pass_fail_change_down_or_up(tmp_path, capsys):
    write_run(tmp_path, "seed", {"drift": [(f"i{i}", 0.0) for i in range(8)]})
    write_run(tmp_path, "sft", {"drift": [(f"i{i}", 0.1 * (i + 1)) for i in range(8)]})
    row = compare(tmp_path, ["seed", "sft"]).set_index("run").loc["sft"]
    assert row.test == "paired sign-flip permutation" and (row.right_to_wrong, row.wrong_to_right) == (0, 8)
    assert set(flips(tmp_path, "seed", "sft", "drift")["direction"]) == {"up"}
    assert main(["compare", "seed", "sft", "--results-dir", str(tmp_path)]) == 0
    assert "0 down / 8 up" in capsys.readouterr().out
