"""bench/analysis/report.py (and the figures it renders from bench/analysis/compare.py): retention and forgetting per
capability, drift against forgetting, and the four report files."""
from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest

from bench.cli import main
from bench.analysis.compare import (UNKNOWN, Comparison, drift_against_forgetting, forgetting, judge_agreements,
                                   trained_capability)
from bench.analysis.report import judge_label, judge_lines, ranking_lines, verdict_lines, write_report


def comparison(rows: pd.DataFrame, reference: str, trained: dict, records: dict | None = None,
               instructions: pd.DataFrame | None = None) -> Comparison:
    """A Comparison of given rows (no pairs, no ranking), its capability and drift figures computed as compare does."""
    capabilities = forgetting(rows, reference, trained)
    drift, rho, rho_runs = drift_against_forgetting(rows, capabilities)
    return Comparison(reference, rows, pd.DataFrame(), trained, capabilities, drift, rho, {}, [],
                      instructions if instructions is not None else pd.DataFrame(), records or {}, set(),
                      drift_rho_runs=rho_runs)


def table() -> pd.DataFrame:
    rows = []
    for run, scores in {"seed": (0.10, 0.60, 0.40), "sft": (0.30, 0.45, 0.40)}.items():
        for task, capability, score in zip(("gsm8k", "arc_easy", "winogrande"), ("math", "knowledge", "knowledge"),
                                           scores):
            row = {"task": task, "capability": capability, "metric": "acc", "run": run, "n": 100, "score": score,
                   "ci_low": score - 0.05, "ci_high": score + 0.05}
            if run == "sft":
                delta = score - {"gsm8k": 0.10, "arc_easy": 0.60, "winogrande": 0.40}[task]
                row.update(delta=delta, delta_low=delta - 0.04, delta_high=delta + 0.04, p_value=0.01 if delta else 1.0,
                           test="McNemar exact", right_to_wrong=5, wrong_to_right=3, significant=bool(delta))
            rows.append(row)
    return pd.DataFrame(rows)


def test_retention_and_mean_forgetting_leave_out_the_trained_capability():
    result = forgetting(table(), "seed", {"sft": "math"}).set_index("capability")
    assert result.loc["math", "trained"] and result.loc["math", "delta"] == pytest.approx(0.20)
    assert result.loc["knowledge", "retention"] == pytest.approx(0.425 / 0.5)
    untrained = result.loc["untrained capabilities (mean)"]
    assert untrained["forgetting"] == pytest.approx(0.075) and untrained["delta"] == pytest.approx(-0.075)


def test_a_capability_judged_by_a_judge_that_does_not_inform_stays_out_of_mean_forgetting():
    result = forgetting(table(), "seed", {"sft": "math"}, uninformed={"knowledge"}).set_index("capability")
    assert result.loc["knowledge", "delta"] == pytest.approx(-0.075), "its own row stays"
    assert not any(label.startswith("untrained") for label in result.index), "knowledge was the only untrained one"
    rows = pd.concat([table(), table().assign(task="alpaca_eval", capability="helpfulness",
                                              score=lambda f: f["score"] - 0.3)])
    mean = forgetting(rows, "seed", {"sft": "math"}, uninformed={"helpfulness"}).set_index("capability")
    [label] = [label for label in mean.index if label.startswith("untrained")]
    assert label.endswith("without helpfulness: its judge does not inform)")
    assert mean.loc[label, "forgetting"] == pytest.approx(0.075), "the mean of knowledge alone"


def test_the_verdict_says_which_methods_intervals_leave_out_the_spread_between_training_seeds():
    """Beside methods over seven training seeds, one of a single seed is resampled by its examples only: its narrower
    interval is not a steadier method, and the verdict says so."""
    def entry(method: str, seeds: int) -> dict:
        return {"method": method, "seeds": seeds, "forgetting": 0.01, "low": 0.0, "high": 0.02, "p_least": 0.5,
                "tasks": {"humaneval": 64}, "significant_losses": [], "significant_losses_uncorrected": []}

    def said(*entries) -> str:
        [line] = ranking_lines({"forgetting": list(entries)})
        return line

    assert "joint bootstrap over training seeds and examples; it rests" in said(entry("sft", 7), entry("gkd", 7))
    assert "over examples only (one training seed each)" in said(entry("sft", 1), entry("gkd", 1))
    assert ("over training seeds and examples, but examples only for gkd (one training seed: its interval leaves out "
            "the spread between seeds)") in said(entry("sft", 7), entry("gkd", 1))

    def pair(seeds_a: int, seeds_b: int) -> str:
        [line] = verdict_lines([{"a": "sft", "b": "gkd", "seeds_a": seeds_a, "seeds_b": seeds_b, "drift_a": 0.1,
                                 "drift_b": 0.2, "drift_diff": -0.1, "drift_low": -0.2, "drift_high": 0.0,
                                 "p_a_less_drift": 0.9}])
        return line

    assert pair(7, 7).endswith("the order holds in 90% of bootstrap replicates")
    assert pair(1, 1).endswith("(one training seed each: over examples only, not over training runs)")
    assert pair(7, 1).endswith("(gkd has one training seed: the spread between its seeds is not in this interval)")


def test_a_head_to_head_row_stays_out_of_mean_forgetting_as_in_the_ranking():
    """alpaca_eval_vs_seed judges the same outputs again against the seed's (the seed at 50% by construction): the
    capability's mean is its own task's, as method_summaries (the verdict) counts it."""
    judged = table().assign(task="alpaca_eval", capability="helpfulness", score=lambda f: f["score"] + 0.2)
    head_to_head = table().assign(task="alpaca_eval_vs_seed", capability="helpfulness",
                                  score=lambda f: f["run"].map({"seed": 0.5, "sft": 0.9}))
    with_head = forgetting(pd.concat([table(), judged, head_to_head]), "seed", {"sft": "math"}).set_index("capability")
    without = forgetting(pd.concat([table(), judged]), "seed", {"sft": "math"}).set_index("capability")
    pd.testing.assert_frame_equal(with_head, without)


def test_judge_lines_say_whether_a_judge_informs_and_on_what():
    informs = {"run": "agreement-a", "n": 98, "agreement": 0.72, "ci_low": 0.62, "ci_high": 0.80,
               "minus_longer": 0.05, "minus_longer_low": 0.01, "minus_longer_high": 0.09, "longer_output": 0.67,
               "position_consistency": 0.9, "informative": True}
    judges = judge_agreements([{"alpaca_eval": {"judge": {}, "judge_agreement": informs}, "gsm8k": {}}])
    assert list(judges) == ["alpaca_eval"] and judges["alpaca_eval"]["not_informative"] is None
    assert judge_label(judges["alpaca_eval"]) == "judge agrees 72.0% [62.0, 80.0], longer output 67.0%"
    [line] = judge_lines(judges)
    assert line == ("alpaca_eval: the judge agrees with AlpacaEval 2's judge on 72.0% [62.0, 80.0] of 98 pairs, above "
                    "the longer output's 67.0% (difference +5.0 [+1.0, +9.0]; run agreement-a).")
    old = judge_agreements([{"alpaca_eval": {"judge": {}}}])  # a run from before judges were measured
    assert judge_label(old["alpaca_eval"]) == "judge agreement unmeasured: not informative"
    assert judge_lines(old)[0].startswith("alpaca_eval: not informative: the judge's agreement was not measured")


def test_report_files(tmp_path):
    records = {run: {"identity": {"fingerprint": f"{run}-fp", "adapter_sha256": "ab" if run == "sft" else None},
                     "data": {"gsm8k": {"sha256": "d1", "source": "gsm8k/test.jsonl"}}, "git": {"commit": "c0"}}
               for run in ("seed", "sft")}
    out = write_report(tmp_path / "r", comparison(table(), "seed", {"sft": "math"}, records))
    md = (out / "report.md").read_text()
    assert "| gsm8k | acc | 100 | 10.00 [5.00, 15.00] | 30.00 [25.00, 35.00]<br>Δ +20.00* [+16.00, +24.00]" in md
    assert "| sft | math (trained) | 10.00 | 30.00 | 3.000 | +20.00 |" in md
    assert "| sft | untrained capabilities (mean) | 50.00 | 42.50 |  | -7.50 |" in md
    assert "sft: fingerprint sft-fp, adapter sha256 ab, None, chat prompts, git c0" in md
    assert len(pd.read_csv(out / "report.csv")) == 6
    report = json.loads((out / "report.json").read_text())
    assert report["reference"] == "seed" and report["trained"] == {"sft": "math"}
    traced = report["provenance"]["sft"]
    assert traced["fingerprint"] == "sft-fp" and traced["adapter_sha256"] == "ab"
    assert traced["data_sha256"] == {"gsm8k": "d1"} and traced["git"] == {"commit": "c0"}
    html = (out / "report.html").read_text()
    assert "<table>" in html and "data:image/png;base64," in html


def test_report_names_each_runs_machine_and_warns_when_they_round_differently(tmp_path):
    xeon = {"cpu": "Intel(R) Xeon(R) Processor", "arch": "x86_64", "simd": ["avx2", "avx512_bf16"], "threads": 2,
            "gpu": None}
    records = {run: {"identity": {"fingerprint": f"{run}-fp"}, "machine": xeon} for run in ("seed", "sft")}
    md = (write_report(tmp_path / "same", comparison(table(), "seed", {"sft": "math"}, records)) / "report.md").read_text()
    assert "sft: fingerprint sft-fp" in md and "on Intel(R) Xeon(R) Processor, 2 threads, avx2 avx512_bf16" in md
    assert "different machines" not in md
    records["sft"]["machine"] = xeon | {"threads": 1}
    out = write_report(tmp_path / "apart", comparison(table(), "seed", {"sft": "math"}, records))
    md = (out / "report.md").read_text()
    assert "**Runs made on different machines**" in md and "sft: Intel(R) Xeon(R) Processor, 1 thread," in md
    assert json.loads((out / "report.json").read_text())["provenance"]["sft"]["machine"]["threads"] == 1
    records["seed"].pop("machine")  # a run from before machines were recorded: nothing to set it against
    md = (write_report(tmp_path / "old", comparison(table(), "seed", {"sft": "math"}, records)) / "report.md").read_text()
    assert "different machines" not in md


def test_trained_capability_reads_the_adapters_train_json(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps({"capability": "tooluse"}))
    assert trained_capability({"model": {"adapter": str(tmp_path)}}) == "tooluse"
    assert trained_capability({"model": {"adapter": None}}) is None
    assert trained_capability({"model": {"adapter": str(tmp_path / "elsewhere")}}) == UNKNOWN
    result = forgetting(table(), "seed", {"sft": UNKNOWN}).set_index("capability")
    assert result.loc[f"all capabilities (mean; trained: {UNKNOWN})", "forgetting"] == pytest.approx((0.075 - 0.2) / 2)


def four_method_table() -> pd.DataFrame:
    """A seed and three methods: each forgets (ARC) in the order of its drift KL, and gains on math."""
    rows = []
    runs = {"seed": (0.10, 0.60, 0.0), "a": (0.30, 0.58, 0.05), "b": (0.32, 0.50, 0.20), "c": (0.25, 0.55, 0.10)}
    for run, (math, arc, kl) in runs.items():
        for task, capability, metric, score in (("gsm8k", "math", "acc", math), ("arc_easy", "knowledge", "acc", arc),
                                                ("drift", "drift", "kl", kl)):
            ref = runs["seed"][("gsm8k", "arc_easy", "drift").index(task)]
            rows.append({"task": task, "capability": capability, "metric": metric, "run": run, "n": 50,
                         "score": score, "ci_low": score, "ci_high": score, "delta": score - ref,
                         "delta_low": score - ref, "delta_high": score - ref, "p_value": 1.0, "significant": False,
                         "right_to_wrong": 0, "wrong_to_right": 0, "test": "sign-flip"})
    return pd.DataFrame(rows)


def test_drift_is_set_against_forgetting_and_gain_with_a_rank_correlation(tmp_path):
    frame = four_method_table()
    razor, rho, _ = drift_against_forgetting(frame, forgetting(frame, "seed", {r: "math" for r in "abc"}))
    assert list(razor["run"]) == ["a", "b", "c"] and list(razor["kl"]) == [0.05, 0.20, 0.10]
    assert list(razor["forgetting"]) == pytest.approx([0.02, 0.10, 0.05])
    assert list(razor["gain"]) == pytest.approx([0.20, 0.22, 0.15])
    assert rho == pytest.approx(1.0)  # the same order
    out = write_report(tmp_path / "r", comparison(frame, "seed", {r: "math" for r in "abc"}))
    md = (out / "report.md").read_text()
    assert "| b | 0.2000 | +10.00 | +22.00 |" in md and "Spearman's rank correlation of KL with mean forgetting" \
        " over 3 training runs: +1.00" in md
    report = json.loads((out / "report.json").read_text())
    assert report["drift_vs_forgetting"]["spearman_kl_forgetting"] == pytest.approx(1.0)
    two = frame[frame["run"].isin(["seed", "a", "b"])]
    assert drift_against_forgetting(two, forgetting(two, "seed", {"a": "math", "b": "math"}))[1] is None


def test_retention_where_the_reference_scores_zero_is_na_with_the_reason(tmp_path):
    rows = table()
    rows.loc[(rows["run"] == "seed") & (rows["task"] == "gsm8k"), "score"] = 0.0
    md = (write_report(tmp_path / "r", comparison(rows, "seed", {"sft": "knowledge"})) / "report.md").read_text()
    assert "| sft | math | 0.00 | 30.00 | n/a (the reference scores 0) |" in md and "nan" not in md


def test_html_marks_significant_losses_and_gains_in_colour_and_in_words(tmp_path):
    html = (write_report(tmp_path / "r", comparison(table(), "seed", {"sft": "math"})) / "report.html").read_text()
    assert "<td class='gain'><b>▲ significant gain</b><br>30.00" in html  # gsm8k +20*
    assert "<td class='loss'><b>▼ significant loss</b>" in html  # arc_easy's significant drop
    assert html.count("class='loss'") == html.count("class='gain'") == 1, "winogrande's zero delta is not marked"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("BENCH_REQUIRE_BROWSER"),
                    reason="no chromium here (Debian: apt-get install chromium; .ci/run installs it)")
def test_the_html_report_reads_at_a_glance_in_a_real_browser(tmp_path):
    """A seeded study's report.html in headless chromium at 1400 px: no console or page errors, nothing fails to load,
    the ranking first and the pairs folded, every task a row of the main table, the head to head, a significant loss marked in words,
    the plot drawn, and nothing wider than the window."""
    from playwright.sync_api import sync_playwright

    from conftest import write_run

    assert CHROMIUM, "BENCH_REQUIRE_BROWSER is set, but there is no chromium"
    n, tasks = 60, ("gsm8k", "arc_easy", "humaneval")
    seed = [(f"q{i}", 1.0 if i < 30 else 0.0) for i in range(n)]
    write_run(tmp_path, "seed", {task: seed for task in tasks})
    for s in range(3):
        for method, lost in (("sft", 12 + s), ("sdft", s)):
            write_run(tmp_path, f"{method}-s{s}",
                      {task: [(i, 0.0 if k < lost else v) for k, (i, v) in enumerate(seed)] for task in tasks})
    names = ["seed", *(f"{m}-s{s}" for m in ("sft", "sdft") for s in range(3))]
    assert main(["compare", *names, "--results-dir", str(tmp_path), "--name", "study"]) == 0
    page_file = tmp_path / "reports" / "study" / "report.html"
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("requestfailed", lambda request: problems.append(f"failed to load {request.url}"))
        page.goto(page_file.as_uri())
        headings = page.locator("h2").all_inner_texts()
        verdict = page.locator("h2 + ul").first.inner_text()
        pairs_folded = page.locator("details").first.evaluate("d => !d.open && d.querySelector('summary').textContent")
        pairs = page.locator("details").first.text_content()
        first_cells = page.locator("table").first.locator("tr td:first-child").all_inner_texts()
        losses = page.locator("td.loss:visible").all_inner_texts()
        plot_width = page.evaluate("document.querySelector('img').naturalWidth")
        page_width = page.evaluate("document.documentElement.scrollWidth")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert problems == []
    assert headings[:3] == ["Verdict", "Against seed", "Head to head"]
    assert verdict.startswith("Forgetting on the untrained capabilities (points, least first): 1. sdft (3 seeds)")
    assert pairs_folded == "Each pair of methods", "the ranking first, each pair of methods folded below it"
    assert "sdft (3 seeds) forgets less on its untrained capabilities than sft (3 seeds)" in pairs
    assert first_cells == list(tasks)
    assert losses and all(cell.startswith("▼ significant loss") for cell in losses)
    assert plot_width > 0 and page_width <= 1400, "the page fits a 1400 px window"
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_a_capability_the_reference_scores_0_on_stays_out_of_mean_forgetting_in_report_and_verdict(tmp_path):
    """At the floor only gains are possible: one lucky GSM8K answer in 8 must not read as 'forgets less'. The
    report's mean and the verdict's agree on what they average."""
    from bench.analysis.compare import load_run, method_summaries, method_verdicts

    from conftest import write_run

    arc = [(f"a{i}", 1.0 if i < 50 else 0.0) for i in range(100)]
    write_run(tmp_path, "seed", {"gsm8k": [(f"g{i}", 0.0) for i in range(8)], "arc": arc})
    write_run(tmp_path, "lucky", {"gsm8k": [(f"g{i}", float(i == 0)) for i in range(8)],
                                  "arc": [(i, 0.0 if k < 10 else s) for k, (i, s) in enumerate(arc)]})
    write_run(tmp_path, "steady", {"gsm8k": [(f"g{i}", 0.0) for i in range(8)],
                                   "arc": [(i, 0.0 if k < 2 else s) for k, (i, s) in enumerate(arc)]})
    for run in ("seed", "lucky", "steady"):  # two capabilities: math at the floor, knowledge at 50%
        for task, capability in (("gsm8k", "math"), ("arc", "knowledge")):
            path = tmp_path / "runs" / run / task / "metrics.json"
            path.write_text(json.dumps(json.loads(path.read_text()) | {"capability": capability}))
    runs = [load_run(tmp_path, name) for name in ("seed", "lucky", "steady")]
    [verdict] = method_verdicts(method_summaries(runs[0], runs[1:], {}))
    assert verdict["forgetting_a"] == pytest.approx(0.10) and verdict["forgetting_b"] == pytest.approx(0.02)
    assert main(["compare", "seed", "lucky", "steady", "--results-dir", str(tmp_path), "--name", "floor"]) == 0
    md = (tmp_path / "reports" / "floor" / "report.md").read_text()
    assert "| lucky | untrained capabilities (mean; without math: the reference scores 0, nothing to forget) | " \
           "50.00 | 40.00 |  | -10.00 |" in md
    assert "steady forgets less on its untrained capabilities than lucky" in md


def test_instruction_kinds_table_pools_training_seeds_and_shows_the_cap(tmp_path):
    def row(run: str, instruction: str, strict: int, total: int) -> dict:
        return {"task": "ifeval", "instruction": instruction, "run": run, "strict": strict, "loose": strict,
                "total": total, "max_new_tokens": 512}

    instructions = pd.DataFrame([row("seed", "punctuation:no_comma", 6, 10), row("seed", "startend:quotation", 2, 4),
                                 row("sft-s0", "punctuation:no_comma", 3, 10), row("sft-s1", "punctuation:no_comma", 5, 10),
                                 row("sft-s0", "startend:quotation", 2, 4), row("sft-s1", "startend:quotation", 3, 4)])
    out = write_report(tmp_path / "r", comparison(table(), "seed", {"sft": "math"}, None, instructions))
    md = (out / "report.md").read_text()
    assert "## Instruction following by kind" in md
    assert "| ifeval: instruction | seed | sft |" in md
    assert "| punctuation:no_comma | 6/10 | 8/20 (-20.0) |" in md  # the seeds pooled: 8 of 20 against 6 of 10
    assert "| startend:quotation | 2/4 | 5/8 (+12.5) |" in md
    assert "At most 512 new tokens per prompt (lm-eval's IFEval: 1280)." in md
    assert len(json.loads((out / "report.json").read_text())["by_instruction"]) == 6


def test_report_json_keeps_a_tiny_p_value_and_the_seeds_own_drift_a_point_interval(tmp_path):
    """40 examples lost and none gained: McNemar's p is 1.8e-12, which report.json must not round to 0 (pandas
    writes 10 decimals by default). The seed's drift against itself is 0 at every example: its interval is [0, 0]
    from the bootstrap, not the proportion interval of 0 out of 40."""
    from bench.analysis.stats import mcnemar_exact
    from bench.execution.runner import drift_metrics
    from conftest import write_run
    from tasks.drift import drift

    write_run(tmp_path, "seed", {"gsm8k": [(f"q{i}", 1.0) for i in range(40)]})
    write_run(tmp_path, "sft", {"gsm8k": [(f"q{i}", 0.0) for i in range(40)]})
    assert main(["compare", "seed", "sft", "--results-dir", str(tmp_path), "--name", "r"]) == 0
    rows = json.loads((tmp_path / "reports" / "r" / "report.json").read_text())["tasks"]
    assert next(r for r in rows if r["run"] == "sft")["p_value"] == pytest.approx(mcnemar_exact(40, 0), rel=1e-9)
    metrics = drift_metrics(drift, [{"score": 0.0, "scores": {"nll": 1.0 + i / 40}} for i in range(40)], "fp")
    assert (metrics["ci_low"], metrics["ci_high"]) == (0.0, 0.0) and metrics["ci_method"].startswith("percentile")
