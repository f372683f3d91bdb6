"""bench/analysis/compare.py: paired deltas, intervals and tests over the same examples; flips; refusals."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import write_run
from bench.cli import main
from bench.analysis.compare import compare_runs, flips, load_run
from bench.analysis.stats import mcnemar_exact, paired_bootstrap_ci, sign_flip_p
from bench.store import RunStore
from bench.types import BenchError



def compare_runs_named(results_dir, names):
    return compare_runs([load_run(results_dir, name) for name in names])

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
    table = compare_runs_named(tmp_path, ["seed", "sft"]).set_index("run")
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
        compare_runs_named(tmp_path, ["seed", "other"])
    assert main(["compare", "seed", "nope", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no run 'nope'" in err and "other, seed" in err and err.count("\n") == 1
    write_run(tmp_path, "twice", {"gsm8k": [("a", 1.0), ("a", 0.0)]})
    with pytest.raises(BenchError, match="task gsm8k: run twice scored example 'a' more than once"):
        compare_runs_named(tmp_path, ["seed", "twice"])
    write_run(tmp_path, "nan", {"gsm8k": [("a", 1.0), ("b", float("nan"))]})
    with pytest.raises(BenchError, match="task gsm8k: run nan has a score that is not a finite number .example 'b'"):
        compare_runs_named(tmp_path, ["seed", "nan"])
    write_run(tmp_path, "same", {"gsm8k": [("b", 1.0), ("a", 1.0)]})
    assert main(["compare", "seed", "same", "--results-dir", str(tmp_path), "--flips", "nope"]) == 2
    assert "--flips nope" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists(), "a bad --flips is said before any report is written"
    assert main(["compare", "seed", "seed", "--results-dir", str(tmp_path)]) == 2
    assert "run seed is named twice" in capsys.readouterr().err
    assert main(["compare", "seed", "same", "--results-dir", str(tmp_path), "--name", "../out"]) == 2
    assert "--name '../out': a report name must be a plain directory name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "reports").exists()


def test_cli_prints_the_table_and_flips(tmp_path, capsys):
    write_run(tmp_path, "seed", {"gsm8k": [(f"q{i}", 1.0) for i in range(12)]})
    write_run(tmp_path, "sdft", {"gsm8k": [(f"q{i}", 0.0) for i in range(12)]})
    assert main(["compare", "seed", "sdft", "--results-dir", str(tmp_path), "--flips", "gsm8k"]) == 0
    out = capsys.readouterr().out
    assert "-100.00*" in out and "12 lost / 0 gained" in out and "12 examples changed" in out and "right->wrong" in out


def test_scores_that_are_not_pass_fail_change_down_or_up(tmp_path, capsys):
    write_run(tmp_path, "seed", {"drift": [(f"i{i}", 0.0) for i in range(8)]})
    write_run(tmp_path, "sft", {"drift": [(f"i{i}", 0.1 * (i + 1)) for i in range(8)]})
    row = compare_runs_named(tmp_path, ["seed", "sft"]).set_index("run").loc["sft"]
    assert row.test == "paired sign-flip permutation" and (row.right_to_wrong, row.wrong_to_right) == (0, 8)
    assert set(flips(tmp_path, "seed", "sft", "drift")["direction"]) == {"up"}
    assert main(["compare", "seed", "sft", "--results-dir", str(tmp_path)]) == 0
    assert "0 down / 8 up" in capsys.readouterr().out


def test_a_method_over_training_seeds_gets_an_interval_over_seeds_and_examples_and_its_seeds(tmp_path, capsys):
    """Three seeds of one method: the mean delta over seeds, an interval over seeds and examples, each seed's
    delta and how many agree in sign; a method whose seeds disagree gets a wide interval."""
    n = 100
    seed = [(f"q{i}", 1.0 if i < 50 else 0.0) for i in range(n)]
    write_run(tmp_path, "seed", {"arc": seed})
    for s, lost in enumerate((10, 12, 8)):  # consistent: every seed loses about 10 points
        write_run(tmp_path, f"sft-s{s}", {"arc": [(i, 0.0 if k < lost else v) for k, (i, v) in enumerate(seed)]})
    for s, lost in enumerate((20, 0, -20)):  # inconsistent: one loses 20, one gains 20
        rows = [(i, 0.0 if k < lost else 1.0 if 50 <= k < 50 - lost else v) for k, (i, v) in enumerate(seed)]
        write_run(tmp_path, f"sdft-s{s}", {"arc": rows})
    names = ["seed"] + [f"sft-s{s}" for s in range(3)] + [f"sdft-s{s}" for s in range(3)]
    table = compare_runs_named(tmp_path, names).set_index("run")
    sft, sdft = table.loc["sft (3 seeds)"], table.loc["sdft (3 seeds)"]
    assert sft.delta == pytest.approx(-0.10) and sft.seed_deltas == pytest.approx([-0.10, -0.12, -0.08])
    assert sft.seed_numbers == [0, 1, 2]
    assert sft.seeds_agreeing == 3 and sft.delta_high < 0 and sft.significant
    assert sdft.delta == pytest.approx(0.0) and sdft.seeds_agreeing == 1 and not sdft.significant
    assert sdft.delta_high - sdft.delta_low > 2 * (sft.delta_high - sft.delta_low), "the seed spread widens it"
    assert sdft.detectable > sft.detectable
    assert main(["compare", *names, "--results-dir", str(tmp_path), "--name", "seeds"]) == 0
    report = (tmp_path / "reports" / "seeds" / "report.md").read_text()
    assert "seeds s0, s1, s2: -10.00, -12.00, -8.00 (3/3 agree in sign)" in report
    ranking, pairs = report.split("### Each pair of methods")
    assert ranking.startswith("## Verdict\n\n- Forgetting on the untrained capabilities (points, least first): "
                              "1. sdft (3 seeds) ")
    assert "2. sft (3 seeds) 10.00" in ranking and "significant after Holm across each method's tasks: sft (3 seeds): " \
        "arc." in ranking
    assert pairs.startswith("\n\n- sdft (3 seeds) forgets less on its untrained capabilities than sft (3 seeds)")
    from bench.analysis.compare import build_comparison, load_run, method_summaries, method_verdicts

    runs = [load_run(tmp_path, name) for name in names]
    [verdict] = method_verdicts(method_summaries(runs[0], runs[1:], {}))
    [first, second] = build_comparison(runs).ranking["forgetting"]
    p_first = 1 - verdict["p_a_less_forgetting"]  # two methods: least of all is the pair's order
    assert first["method"] == "sdft (3 seeds)" and first["p_least"] + second["p_least"] == pytest.approx(1.0)
    assert first["p_least"] == pytest.approx(p_first), "two methods: least of all is the pair's order, ties halved"
    assert first["tasks"] == second["tasks"] == {"arc": 100} and second["significant_losses"] == ["arc"]
    assert (verdict["a"], verdict["b"], verdict["seeds_a"]) == ("sft (3 seeds)", "sdft (3 seeds)", 3)
    assert verdict["forgetting_a"] == pytest.approx(0.10) and verdict["forgetting_b"] == pytest.approx(0.0)
    assert 0.5 < 1 - verdict["p_a_less_forgetting"] < 1, "sdft's seeds disagree: the order is likely, not certain"


def test_seeds_never_make_significant_what_their_examples_cannot(tmp_path):
    """Three seeds that each gain the same 4 of 48 questions: +8.33 at every seed, but 4 examples cannot reach
    p < 0.05 (all one way: p = 2/16), and the percentile bootstrap alone (p = 0.03) would star it. The same gains
    spread over 12 different questions are 12 examples: significant."""
    seed = [(f"q{i}", 0.0) for i in range(48)]
    write_run(tmp_path, "seed", {"code": seed})
    for s in range(3):
        write_run(tmp_path, f"same-s{s}", {"code": [(i, 1.0 if k < 4 else v) for k, (i, v) in enumerate(seed)]})
        write_run(tmp_path, f"spread-s{s}", {"code": [(i, 1.0 if 4 * s <= k < 4 * s + 4 else v)
                                                       for k, (i, v) in enumerate(seed)]})
    names = ["seed"] + [f"{m}-s{s}" for m in ("same", "spread") for s in range(3)]
    table = compare_runs_named(tmp_path, names).set_index("run")
    same, spread = table.loc["same (3 seeds)"], table.loc["spread (3 seeds)"]
    assert same.delta == spread.delta == pytest.approx(4 / 48)
    assert (same.right_to_wrong, same.wrong_to_right) == (spread.right_to_wrong, spread.wrong_to_right) == (0, 12)
    assert same.delta_low > 0, "the bootstrap's interval alone excludes 0"
    assert same.p_value == pytest.approx(2 / 16) and not same.significant
    assert spread.p_value < 0.05 and spread.significant


def test_two_methods_head_to_head_by_seed_and_for_single_runs(tmp_path, capsys):
    """SDFT against SFT: over training seeds, paired by seed index; single runs keep the paired exact test,
    the same numbers `bench compare A B` gives."""
    from bench.analysis.compare import load_run, method_pairs

    n = 100
    seed = [(f"q{i}", 1.0 if i < 50 else 0.0) for i in range(n)]
    write_run(tmp_path, "seed", {"arc": seed})
    for s, lost in enumerate((10, 12, 8)):
        write_run(tmp_path, f"sft-s{s}", {"arc": [(i, 0.0 if k < lost else v) for k, (i, v) in enumerate(seed)]})
    for s, lost in enumerate((20, 0, -20)):
        rows = [(i, 0.0 if k < lost else 1.0 if 50 <= k < 50 - lost else v) for k, (i, v) in enumerate(seed)]
        write_run(tmp_path, f"sdft-s{s}", {"arc": rows})
    names = ["seed", "sdft-s2", "sft-s0", "sft-s1", "sft-s2", "sdft-s0", "sdft-s1"]  # seeds pair by number, not order
    [row] = method_pairs([load_run(tmp_path, name) for name in names[1:]]).to_dict("records")
    assert (row["a"], row["b"], row["run"]) == ("sdft (3 seeds)", "sft (3 seeds)", "sft (3 seeds) vs sdft (3 seeds)")
    assert row["seed_deltas"] == pytest.approx([0.10, -0.12, -0.28]) and row["seeds_agreeing"] == 2
    assert row["delta"] == pytest.approx(-0.10) and not row["significant"]
    assert main(["compare", *names, "--results-dir", str(tmp_path), "--name", "h2h"]) == 0
    assert "head to head" in capsys.readouterr().out
    md = (tmp_path / "reports" / "h2h" / "report.md").read_text()
    assert "## Head to head" in md and "| arc | accuracy | 100 | Δ -10.00 [" in md
    assert md.index("## Against seed") < md.index("## Head to head") < md.index("<details><summary>Each training seed")
    main_table = md[md.index("## Against seed"):md.index("## Head to head")]
    assert "sft-s0" not in main_table and "sft (3 seeds)" in main_table, "per-seed columns are folded away"
    write_run(tmp_path, "a", {"arc": [(i, 1.0 if k < 60 else 0.0) for k, (i, _) in enumerate(seed)]})
    write_run(tmp_path, "b", {"arc": [(i, 1.0 if k < 45 else 0.0) for k, (i, _) in enumerate(seed)]})
    [single] = method_pairs([load_run(tmp_path, "a"), load_run(tmp_path, "b")]).to_dict("records")
    direct = compare_runs_named(tmp_path, ["a", "b"]).set_index("run").loc["b"]
    assert (single["delta"], single["p_value"], single["test"]) == (direct.delta, direct.p_value, direct.test)
    assert single["right_to_wrong"] == 15 and single["wrong_to_right"] == 0


def test_runs_generated_with_different_token_caps_are_not_paired(tmp_path):
    """A shorter cap is a different measurement (an IFEval word count, a truncated program): refused, named."""
    rows = [(f"q{i}", float(i % 2)) for i in range(10)]
    for name, cap in (("seed", 1280), ("sft", 512)):
        store = RunStore(tmp_path, name)
        identity = {"tasks": {"ifeval": {"n": 10}}}
        store.begin({"identity": identity})
        store.write_task("ifeval", [{"id": i, "score": s} for i, s in rows],
                         {"task": "ifeval", "capability": "instructions", "metric": "prompt_level_strict", "mean": 0.5,
                          "ci_low": 0.2, "ci_high": 0.8, "n": 10, "generation": {"max_new_tokens": cap}})
        store.finish({"identity": identity})
    with pytest.raises(BenchError, match=r"task ifeval: runs seed and sft generated with different settings "
                                         r"\(\{'max_new_tokens': 1280\} vs \{'max_new_tokens': 512\}\)"):
        compare_runs_named(tmp_path, ["seed", "sft"])


def test_ties_in_the_bootstrap_count_half_to_each_method_whatever_their_order(tmp_path):
    """Two methods that differ on one example of 200 tie in about a third of the replicates (that example not drawn):
    neither the first-named method nor the pair's second gets those ties; identical methods are 50/50, said so."""
    from bench.analysis.compare import build_comparison
    from bench.analysis.report import verdict_lines

    seed = [(f"q{i}", 1.0 if i < 100 else 0.0) for i in range(200)]
    write_run(tmp_path, "seed", {"code": seed})
    write_run(tmp_path, "a", {"code": [(i, 0.0 if k < 5 else s) for k, (i, s) in enumerate(seed)]})
    write_run(tmp_path, "b", {"code": [(i, 0.0 if k < 6 else s) for k, (i, s) in enumerate(seed)]})
    write_run(tmp_path, "twin", {"code": [(i, 0.0 if k < 5 else s) for k, (i, s) in enumerate(seed)]})

    def least(names):
        c = build_comparison([load_run(tmp_path, n) for n in names])
        return {e["method"]: e["p_least"] for e in c.ranking["forgetting"]}, c.verdicts

    (ab, [v_ab]), (ba, [v_ba]) = least(["seed", "a", "b"]), least(["seed", "b", "a"])
    assert ab == pytest.approx(ba) and ab["a"] + ab["b"] == pytest.approx(1.0)
    assert 0.78 < ab["a"] < 0.85, "a is least where the one example is drawn (63%), and in half the others"
    assert v_ab["p_a_less_forgetting"] == pytest.approx(1 - v_ba["p_a_less_forgetting"]) == pytest.approx(ab["a"])
    twins, [v] = least(["seed", "a", "twin"])
    assert twins == {"a": 0.5, "twin": 0.5} and v["p_a_less_forgetting"] == 0.5
    assert verdict_lines([v])[0].startswith("a and twin do not differ in forgetting: 2.50 points each")


def test_single_task_losses_in_the_verdict_are_significant_after_holm_across_the_methods_tasks(tmp_path):
    """Four tasks, each lost on 6 of 100 examples (exact McNemar p = 0.031): each significant alone, none after Holm
    across the four; a loss on 12 (p = 0.0005) stays significant."""
    from bench.analysis.compare import build_comparison

    seed = [(f"q{i}", 1.0 if i < 50 else 0.0) for i in range(100)]
    tasks = ("t1", "t2", "t3", "t4")
    write_run(tmp_path, "seed", {t: seed for t in tasks})
    write_run(tmp_path, "small", {t: [(i, 0.0 if k < 6 else s) for k, (i, s) in enumerate(seed)] for t in tasks})
    write_run(tmp_path, "large", {t: [(i, 0.0 if k < (12 if t == "t1" else 0) else s) for k, (i, s) in enumerate(seed)]
                                  for t in tasks})
    ranking = {e["method"]: e for e in build_comparison([load_run(tmp_path, n) for n in ("seed", "small", "large")]
                                                        ).ranking["forgetting"]}
    assert ranking["small"]["significant_losses_uncorrected"] == list(tasks)
    assert ranking["small"]["significant_losses"] == []
    assert ranking["large"]["significant_losses"] == ranking["large"]["significant_losses_uncorrected"] == ["t1"]
    assert main(["compare", "seed", "small", "large", "--results-dir", str(tmp_path), "--name", "holm"]) == 0
    md = (tmp_path / "reports" / "holm" / "report.md").read_text()
    assert "significant after Holm across each method's tasks: large: t1 (before Holm: large: t1; small: t1, t2, t3, " \
           "t4)" in md


def test_drift_against_forgetting_correlates_the_training_runs_not_also_their_seed_means(tmp_path):
    import json

    from bench.analysis.compare import build_comparison

    arc = [(f"a{i}", 1.0 if i < 50 else 0.0) for i in range(100)]
    write_run(tmp_path, "seed", {"arc": arc, "drift": [(f"d{i}", 0.0) for i in range(8)]})
    for run, lost, kl in (("sft-s1", 2, 0.10), ("sft-s2", 4, 0.20), ("sdft-s1", 6, 0.30), ("sdft-s2", 8, 0.40)):
        write_run(tmp_path, run, {"arc": [(i, 0.0 if k < lost else s) for k, (i, s) in enumerate(arc)],
                                  "drift": [(f"d{i}", kl) for i in range(8)]})
    for path in tmp_path.glob("runs/*/drift/metrics.json"):
        path.write_text(json.dumps(json.loads(path.read_text()) | {"metric": "kl", "capability": "drift"}))
    names = ["seed", "sft-s1", "sft-s2", "sdft-s1", "sdft-s2"]
    c = build_comparison([load_run(tmp_path, n) for n in names])
    assert set(c.drift["run"]) == {*names[1:], "sft (2 seeds)", "sdft (2 seeds)"}, "the table shows the means too"
    assert c.drift_rho_runs == names[1:] and c.drift_rho == pytest.approx(1.0)


def test_runs_that_read_other_data_or_other_prompt_formats_are_not_paired(tmp_path):
    """The same ids over another mirror (fixed answers) or another prompt format measure something else."""
    import json

    rows = [(f"q{i}", float(i % 2)) for i in range(10)]
    for name in ("seed", "same", "remirrored", "plain"):
        write_run(tmp_path, name, {"gsm8k": rows})
        path = tmp_path / "runs" / name / "run.json"
        run = json.loads(path.read_text())
        run["identity"]["tasks"]["gsm8k"]["data_sha256"] = "b" * 64 if name == "remirrored" else "a" * 64
        if name == "plain":
            run["identity"]["prompt_format"] = "study"
        path.write_text(json.dumps(run))
    assert len(compare_runs_named(tmp_path, ["seed", "same"])) == 2
    with pytest.raises(BenchError, match="task gsm8k: runs seed and remirrored read different data .*--data-dir"):
        compare_runs_named(tmp_path, ["seed", "same", "remirrored"])
    with pytest.raises(BenchError, match=r"runs seed and plain were prompted in different formats \(chat vs study\)"):
        compare_runs_named(tmp_path, ["seed", "plain"])
