"""Paired comparison of runs: the same examples, scored for a reference run and for each other run.

A delta is only meaningful on the same examples, so runs must have scored the same example ids for a task;
intervals and tests are paired over those examples (paired bootstrap; McNemar's exact test for pass/fail
scores, a paired sign-flip permutation test otherwise).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.analysis.stats import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, POWER_Z, bootstrap_ci, crossed_means,
                         detectable_difference)
from bench.store import RUN_FILE, read_jsonl
from bench.types import BenchError

LEVEL = 0.95
PASS_FAIL_TEST = "McNemar exact"
HEAD_TO_HEAD = "_vs_seed"  # a judged task's head-to-head against the seed's outputs: task name + this suffix
HEAD_TO_HEAD_TEST = "sign test against 50%"
SEEDED_TEST = "bootstrap over training seeds and examples (crossed)"
RAW_METRICS = ("kl",)  # shown as they are (nats); every other metric is a fraction, shown in %
LOWER_IS_BETTER = ("kl",)  # drift: a rise from the reference is the loss


def scale(metric: str) -> float:
    return 1.0 if metric in RAW_METRICS else 100.0


def format_cell(row: Any, reference: str, newline: str) -> str:
    """One run's cell of a comparison table: score [CI]; for a run other than the reference, then its delta_cell."""
    k = scale(row.metric)
    cell = f"{k * row.score:.2f} [{k * row.ci_low:.2f}, {k * row.ci_high:.2f}]"
    return cell + newline + delta_cell(row, newline) if row.run != reference else cell


def delta_cell(row: Any, newline: str) -> str:
    """A paired delta [CI] with its p-value (* below 0.05), then how many examples changed each way (for a score that
    is not pass/fail, such as drift's KL, "up" and "down" carry no judgement), each training seed's delta, then the
    smallest delta its n detects at 5% with 80% power."""
    k = scale(row.metric)
    cell = (f"Δ {k * row.delta:+.2f}{'*' if row.significant else ''} [{k * row.delta_low:+.2f}, "
            f"{k * row.delta_high:+.2f}] p={row.p_value:.3g}"
            f"{newline}{changes(row.right_to_wrong, row.wrong_to_right, row.get('pass_fail') is True)}")
    if isinstance(row.get("seed_deltas"), list):
        cell += (f"{newline}seeds: {', '.join(f'{k * d:+.2f}' for d in row.seed_deltas)} "
                 f"({int(row.seeds_agreeing)}/{len(row.seed_deltas)} agree in sign)")
    if pd.notna(row.get("detectable")):
        cell += f"{newline}detectable ±{k * row.detectable:.2f}"
    return cell


def task_cells(rows: pd.DataFrame, cell) -> tuple[list[str], list[tuple[Any, list[str]]]]:
    """A comparison as a table: its columns (the runs, in order) and per task its first row and one cell per column,
    `cell(row)` ("" where a column has no row for the task)."""
    columns = list(rows["run"].unique())
    body = []
    for _, group in rows.groupby("task", sort=False):
        cells = {r.run: cell(r) for _, r in group.iterrows()}
        body.append((group.iloc[0], [cells.get(column, "") for column in columns]))
    return columns, body


def changes(down: int, up: int, pass_fail: bool) -> str:
    """How many examples' scores went down and up: lost / gained for pass/fail scores."""
    return f"{int(down)} lost / {int(up)} gained" if pass_fail else f"{int(down)} down / {int(up)} up"


@dataclass(frozen=True)
class RunScores:
    name: str
    record: dict[str, Any]  # run.json
    tasks: dict[str, pd.DataFrame]  # task -> columns id, score (file order)
    metrics: dict[str, dict[str, Any]]


def load_run(results_dir: Path, name: str) -> RunScores:
    """A complete run's per-example scores; a missing or unfinished run is an error naming it."""
    run_dir = results_dir / "runs" / name
    if not (run_dir / RUN_FILE).is_file():
        known = sorted(p.name for p in (results_dir / "runs").glob("*") if (p / RUN_FILE).is_file())
        raise BenchError(f"no run {name!r} in {results_dir / 'runs'} (runs: {', '.join(known) or 'none'})")
    record = json.loads((run_dir / RUN_FILE).read_text())
    if not record.get("complete"):
        raise BenchError(f"run {name!r} in {run_dir} is not complete; finish it with the same `bench eval` command")
    tasks, metrics = {}, {}
    for task in record["identity"]["tasks"]:
        task_metrics = json.loads((run_dir / task / "metrics.json").read_text())
        if "skipped" in task_metrics:
            continue
        rows = read_jsonl(run_dir / task / "predictions.jsonl")
        tasks[task] = pd.DataFrame({"id": [r["id"] for r in rows], "score": [float(r["score"]) for r in rows],
                                    "output": [r.get("output") for r in rows]})
        metrics[task] = task_metrics
        if "vs_seed" in task_metrics:
            tasks[task + HEAD_TO_HEAD] = pd.DataFrame({"id": [r["id"] for r in rows],
                                                       "score": [float(r["scores"]["vs_seed"]) for r in rows],
                                                       "output": [r["seed_output"] for r in rows]})
            metrics[task + HEAD_TO_HEAD] = {**task_metrics["others"]["vs_seed"], "capability": task_metrics["capability"],
                                            "metric": "win_rate_vs_seed",
                                            "seed_fingerprint": task_metrics["vs_seed"]["seed_fingerprint"]}
    return RunScores(name, record, tasks, metrics)


def paired_bootstrap_ci(reference: np.ndarray, other: np.ndarray, level: float = LEVEL,
                        resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile interval of mean(other - reference), resampling examples (both runs together)."""
    return bootstrap_ci(list(other - reference), level, resamples, seed)


def mcnemar_exact(right_to_wrong: int, wrong_to_right: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs against Binomial(n, 1/2)."""
    from scipy.stats import binomtest

    n = right_to_wrong + wrong_to_right
    return 1.0 if n == 0 else float(binomtest(right_to_wrong, n, 0.5).pvalue)


EXACT_SIGN_FLIPS = 16  # up to this many non-zero differences, all 2^n sign vectors are enumerated


def sign_flip_p(differences: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> float:
    """Two-sided paired permutation p-value of mean(differences) = 0 under random sign flips: exact for up to
    EXACT_SIGN_FLIPS non-zero differences (zeros flip to themselves), else Monte Carlo with the +1 rule."""
    nonzero = differences[differences != 0]
    if not len(nonzero):
        return 1.0
    observed = abs(nonzero.sum()) - 1e-12
    if len(nonzero) <= EXACT_SIGN_FLIPS:
        signs = 1.0 - 2.0 * ((np.arange(2 ** len(nonzero))[:, None] >> np.arange(len(nonzero))) & 1)
        return float(np.mean(np.abs(signs @ nonzero) >= observed))
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, resamples, 1000):  # chunks bound memory for large n
        signs = rng.choice((-1.0, 1.0), size=(min(1000, resamples - start), len(nonzero)))
        extreme += int(np.sum(np.abs(signs @ nonzero) >= observed))
    return float((extreme + 1) / (resamples + 1))


def is_binary(*scores: np.ndarray) -> bool:
    return all(np.isin(s, (0.0, 1.0)).all() for s in scores)


def aligned(reference: RunScores, other: RunScores, task: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Both runs' scores on the task's examples in one order; different example sets are an error."""
    ref, oth = reference.tasks[task], other.tasks[task]
    for run, scores in ((reference, ref), (other, oth)):
        twice, not_finite = scores["id"][scores["id"].duplicated()], scores["id"][~np.isfinite(scores["score"])]
        if len(twice):
            raise BenchError(f"task {task}: run {run.name} scored example {twice.iloc[0]!r} more than once; "
                             f"examples are paired by id")
        if len(not_finite):
            raise BenchError(f"task {task}: run {run.name} has a score that is not a finite number "
                             f"(example {not_finite.iloc[0]!r})")
    if set(ref["id"]) != set(oth["id"]) or len(ref) != len(oth):
        only_ref, only_other = len(set(ref["id"]) - set(oth["id"])), len(set(oth["id"]) - set(ref["id"]))
        raise BenchError(f"task {task}: runs {reference.name} and {other.name} scored different examples "
                         f"({len(ref)} vs {len(oth)}; {only_ref} only in {reference.name}, {only_other} only in "
                         f"{other.name}); evaluate both with the same --limit and data")
    merged = ref.merge(oth, on="id", suffixes=("_ref", "_other"), sort=False)
    return merged["score_ref"].to_numpy(), merged["score_other"].to_numpy(), list(merged["id"])


def compare(results_dir: Path, names: list[str]) -> pd.DataFrame:
    """One row per (task, run): the score with its interval and, against the first run, the paired delta,
    its interval, the test's p-value and the per-example flips. Tasks are those every run has."""
    return compare_runs([load_run(results_dir, name) for name in names])


def compare_runs(runs: list[RunScores]) -> pd.DataFrame:
    """`compare` on loaded runs (a committed baseline among them): the first is the reference."""
    if len(runs) < 2:
        raise BenchError("bench compare needs a reference run and at least one other run")
    names = [run.name for run in runs]
    reference = runs[0]
    tasks = [t for t in reference.tasks if all(t in r.tasks for r in runs[1:])]
    if not tasks:
        raise BenchError(f"runs {', '.join(names)} have no task in common")
    rows = []
    for task in tasks:
        for key in ("judge", "generation"):  # a run judged or generated otherwise measured something else
            settings = {r.name: r.metrics[task].get(key) for r in runs}
            other = next((name for name, value in settings.items() if value != settings[reference.name]), None)
            if other is None:
                continue
            if key == "judge":
                raise BenchError(f"task {task}: runs {reference.name} and {other} were judged by different judges "
                                 f"({(settings[reference.name] or {}).get('spec')} vs {(settings[other] or {}).get('spec')}); "
                                 f"judge both with the same --judge")
            raise BenchError(f"task {task}: runs {reference.name} and {other} generated with different settings "
                             f"({settings[reference.name]} vs {settings[other]}); evaluate both alike "
                             f"(--max-new-tokens, --temperature)")
        reference_metrics = reference.metrics[task]
        rows.append({"task": task, "capability": reference_metrics.get("capability"),
                     "metric": reference_metrics.get("metric"), "run": reference.name, "n": reference_metrics["n"],
                     "score": reference_metrics["mean"], "ci_low": reference_metrics["ci_low"],
                     "ci_high": reference_metrics["ci_high"]})
        rows += [paired_row(reference, run, task) for run in runs[1:]]
    for task in tasks:
        rows += head_to_head_rows(reference, runs[1:], task)
    for stem, members in seed_groups(runs[1:]).items():
        rows += [seeded_row([reference], seeds_label(stem, members), members, task) for task in tasks]
    return pd.DataFrame(rows)


def paired_row(reference: RunScores, run: RunScores, task: str, label: str | None = None) -> dict[str, Any]:
    """The run's score on the task and its paired delta to the reference: interval, exact test, flips, and the
    smallest delta the examples can detect."""
    metrics = run.metrics[task]
    ref, other, _ = aligned(reference, run, task)
    diff = other - ref
    low, high = paired_bootstrap_ci(ref, other)
    binary = is_binary(ref, other)
    right_to_wrong, wrong_to_right = int(np.sum(diff < 0)), int(np.sum(diff > 0))
    p = mcnemar_exact(right_to_wrong, wrong_to_right) if binary else sign_flip_p(diff)
    return {"task": task, "capability": metrics.get("capability"), "metric": metrics.get("metric"),
            "run": label or run.name, "n": metrics["n"], "score": metrics["mean"], "ci_low": metrics["ci_low"],
            "ci_high": metrics["ci_high"], "delta": float(diff.mean()), "delta_low": low, "delta_high": high,
            "p_value": p, "detectable": detectable_difference(diff, binary),
            "test": PASS_FAIL_TEST if binary else "paired sign-flip permutation", "pass_fail": binary,
            "right_to_wrong": right_to_wrong, "wrong_to_right": wrong_to_right, "significant": bool(p < 1 - LEVEL)}


def instruction_breakdown(runs: list[RunScores]) -> pd.DataFrame:
    """Per kind of instruction (IFEval's `by_instruction`), each run's followed / total, strict and loose: which
    kinds of instruction a fine-tune stopped following. Empty when no run has such a task."""
    rows = [{"task": task, "instruction": instruction, "run": run.name, **counts,
             "max_new_tokens": run.metrics[task]["generation"]["max_new_tokens"]}
            for run in runs for task, metrics in run.metrics.items()
            for instruction, counts in metrics.get("by_instruction", {}).items()]
    return pd.DataFrame(rows, columns=["task", "instruction", "run", "strict", "loose", "total", "max_new_tokens"])


SEEDED = re.compile(r"^(?P<stem>.+)-s(?P<seed>\d+)$")  # a fine-tune's run per training seed: METHOD-sN


def seeds_label(stem: str, members: list[RunScores]) -> str:
    """The name of a method over its training seeds, in tables, reports and verdicts."""
    return f"{stem} ({len(members)} seeds)"


def seed_groups(runs: list[RunScores]) -> dict[str, list[RunScores]]:
    """Runs named STEM-sN for two or more N: one method trained with several training seeds."""
    groups: dict[str, list[RunScores]] = {}
    for run in runs:
        if match := SEEDED.match(run.name):
            groups.setdefault(match["stem"], []).append(run)
    return {stem: sorted(members, key=seed_number) for stem, members in groups.items() if len(members) >= 2}


def seed_number(run: RunScores) -> int:
    return int(SEEDED.match(run.name)["seed"])


def methods_of(runs: list[RunScores]) -> dict[str, list[RunScores]]:
    """The methods among runs: each method over its training seeds, then each run that is not one of them."""
    groups = seed_groups(runs)
    grouped = {r.name for members in groups.values() for r in members}
    return {seeds_label(stem, members): members for stem, members in groups.items()} | \
        {r.name: [r] for r in runs if r.name not in grouped}


def per_seed_runs(names: list[str]) -> set[str]:
    """The names among a comparison's columns that are one training seed of a method also shown over its seeds."""
    labels = set(names)
    members = {}
    for name in names:
        if match := SEEDED.match(name):
            members.setdefault(match["stem"], []).append(name)
    return {name for stem, group in members.items() if seeds_label(stem, group) in labels for name in group}


def method_pairs(runs: list[RunScores]) -> pd.DataFrame:
    """Each pair of methods head to head, per task: Δ = the later method minus the earlier, paired over the same
    examples (and, for methods over training seeds, by seed number, with the bootstrap over seeds and examples)."""
    methods = methods_of(runs)
    names = list(methods)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            first, second = methods[a], methods[b]
            if len(first) > 1 and len(second) > 1 and [*map(seed_number, first)] != [*map(seed_number, second)]:
                continue  # trained with other seeds: nothing to pair seed by seed
            tasks = [t for t in first[0].tasks if not t.endswith(HEAD_TO_HEAD)
                     and all(t in r.tasks for r in first + second)]
            label = f"{b} vs {a}"
            for task in tasks:
                row = paired_row(first[0], second[0], task, label) if len(first) == len(second) == 1 else \
                    seeded_row(first, label, second, task)
                rows.append(row | {"a": a, "b": b})
    return pd.DataFrame(rows)


def seeded_row(references: list[RunScores], label: str, members: list[RunScores], task: str) -> dict[str, Any]:
    """A method over its training seeds against a reference (the seed model, or another method over the same
    seeds, paired by seed number): the mean over seeds of the paired delta, its interval from a bootstrap over seeds
    and examples (crossed: bench.analysis.stats.crossed_means), each seed's delta, how many agree in sign."""
    count = max(len(references), len(members))
    if {len(references), len(members)} - {1, count}:
        raise BenchError(f"{label}: {len(references)} and {len(members)} training seeds cannot be paired by seed")
    pairs = [aligned(references[j % len(references)], members[j % len(members)], task) for j in range(count)]
    diffs = [other - ref for ref, other, _ in pairs]
    deltas = [float(d.mean()) for d in diffs]
    delta = float(np.mean(deltas))
    draws = crossed_means(np.stack(diffs))
    scores = crossed_means(np.stack([other for _, other, _ in pairs]))  # the same draws
    low, high = np.quantile(draws, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    beyond = min(int(np.sum(draws <= 0)), int(np.sum(draws >= 0)))  # the +1 rule: never p = 0 from a bootstrap
    p = float(min(1.0, 2 * (beyond + 1) / (len(draws) + 1))) if delta else 1.0
    metrics = members[0].metrics[task]
    # Detectable: the examples' part (the same examples for every seed, so not shrunk by more seeds) and the
    # seed-to-seed spread's part, added in quadrature.
    within = float(np.mean([detectable_difference(d, is_binary(ref, other)) for (ref, other, _), d in zip(pairs, diffs)]))
    between = POWER_Z * float(np.std(deltas, ddof=1)) / np.sqrt(len(deltas))
    return {"task": task, "capability": metrics.get("capability"), "metric": metrics.get("metric"),
            "run": label, "n": len(pairs[0][2]), "score": float(np.mean([o.mean() for _, o, _ in pairs])),
            "ci_low": float(np.quantile(scores, 0.025)), "ci_high": float(np.quantile(scores, 0.975)),
            "delta": delta, "delta_low": float(low), "delta_high": float(high), "p_value": p,
            "test": SEEDED_TEST, "significant": bool(low > 0 or high < 0),
            "pass_fail": all(is_binary(ref, other) for ref, other, _ in pairs),
            "right_to_wrong": int(sum(np.sum(d < 0) for d in diffs)), "wrong_to_right": int(sum(np.sum(d > 0) for d in diffs)),
            "detectable": float(np.hypot(within, between)), "seed_deltas": deltas,
            "seeds_agreeing": int(max(sum(d > 0 for d in deltas), sum(d < 0 for d in deltas)))}


def head_to_head_rows(reference: RunScores, others: list[RunScores], task: str) -> list[dict[str, Any]]:
    """A judged task's head-to-head row, where the reference run is the seed every other run was judged against: the
    reference at 50% by construction; each run's win rate against it, its interval, and a sign test of wins against
    losses. Judged against other outputs than the reference run's own is an error, not a silent mismatch."""
    name = task + HEAD_TO_HEAD
    seed = reference.record["identity"].get("fingerprint")
    if not others or not all(name in r.metrics and r.metrics[name]["seed_fingerprint"] == seed for r in others):
        return []
    from scipy.stats import binomtest

    head = {"task": name, "capability": reference.metrics[task].get("capability"), "metric": "win_rate_vs_seed"}
    rows = [{**head, "run": reference.name, "n": len(reference.tasks[task]), "score": 0.5, "ci_low": 0.5,
             "ci_high": 0.5}]
    for run in others:
        judged = run.tasks[name].merge(reference.tasks[task], on="id", suffixes=("", "_seed"))
        if len(judged) != len(reference.tasks[task]) or (judged["output"] != judged["output_seed"]).any():
            raise BenchError(f"task {task}: run {run.name} was judged against other seed outputs than run "
                             f"{reference.name}'s; evaluate both with the same settings and data")
        wins, losses = int((judged["score"] > 0.5).sum()), int((judged["score"] < 0.5).sum())
        p = float(binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0
        metrics = run.metrics[name]
        rows.append({**head, "run": run.name, "n": metrics["n"], "score": metrics["mean"], "ci_low": metrics["ci_low"],
                     "ci_high": metrics["ci_high"], "delta": metrics["mean"] - 0.5, "delta_low": metrics["ci_low"] - 0.5,
                     "delta_high": metrics["ci_high"] - 0.5, "p_value": p, "test": HEAD_TO_HEAD_TEST,
                     "right_to_wrong": losses, "wrong_to_right": wins, "significant": bool(p < 1 - LEVEL),
                     "detectable": detectable_difference(judged["score"].to_numpy() - 0.5, False)})
    return rows


def flips(results_dir: Path, reference: str, other: str, task: str) -> pd.DataFrame:
    """The examples whose score changed from the reference run to the other: id, both scores, direction."""
    ref_run, other_run = load_run(results_dir, reference), load_run(results_dir, other)
    for run in (ref_run, other_run):
        if task not in run.tasks:
            raise BenchError(f"--flips {task}: run {run.name} has no scored task {task!r} "
                             f"(tasks: {', '.join(run.tasks)})")
    ref, oth, ids = aligned(ref_run, other_run, task)
    changed = ref != oth
    down, up = ("right->wrong", "wrong->right") if is_binary(ref, oth) else ("down", "up")
    return pd.DataFrame({"id": np.asarray(ids)[changed], reference: ref[changed], other: oth[changed],
                         "direction": np.where(oth[changed] < ref[changed], down, up)})


def method_verdicts(reference: RunScores, runs: list[RunScores], trained: dict[str, str | None],
                    resamples: int = 2000, seed: int = BOOTSTRAP_SEED) -> list[dict[str, Any]]:
    """For each pair of methods (a method: a run, or its runs over training seeds), which forgets less on the
    capabilities it was not trained for (mean forgetting: minus the mean over those capabilities of the mean delta
    of their tasks; a capability the reference scores 0 on has nothing to forget and is left out) and which drifts
    less (the drift task's KL), each with the difference's interval and the probability over a joint bootstrap that
    the order holds. Every replicate draws the seeds (paired by seed number) and one resample of each task's
    examples, shared by all methods."""
    methods = methods_of(runs)
    tasks = [t for t in reference.tasks if all(t in r.tasks for members in methods.values() for r in members)]
    if len(methods) < 2 or not tasks:
        return []
    kinds = {t: reference.metrics[t].get("metric") for t in tasks}
    capability = {t: reference.metrics[t].get("capability") for t in tasks}
    floor = {c for c in capability.values()  # nothing to forget where the reference scores 0 (as in the report)
             if np.mean([reference.tasks[t]["score"].mean() for t in tasks if capability[t] == c]) <= 0}
    summary: dict[str, dict[str, np.ndarray | float]] = {}
    for name, members in methods.items():
        deltas, point = {}, {}
        for t in tasks:
            values = np.stack([other - ref for ref, other, _ in (aligned(reference, r, t) for r in members)])
            deltas[t] = crossed_means(values, resamples, seed, examples_seed=seed + 1 + tasks.index(t))
            point[t] = float(values.mean())
        untrained = sorted({capability[t] for t in tasks if kinds[t] not in RAW_METRICS} - {trained.get(name)} - floor)
        forget = lambda d: -np.mean([np.mean([d[t] for t in tasks if capability[t] == c and kinds[t] not in RAW_METRICS],
                                             axis=0) for c in untrained], axis=0) if untrained else np.nan
        drift_tasks = [t for t in tasks if kinds[t] in RAW_METRICS]
        summary[name] = {"forgetting": forget(point), "forgetting_draws": forget(deltas),
                         "drift": point[drift_tasks[0]] if drift_tasks else np.nan,
                         "drift_draws": deltas[drift_tasks[0]] if drift_tasks else np.nan}
    verdicts = []
    names = list(methods)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            row = {"a": a, "b": b, "seeds_a": len(methods[a]), "seeds_b": len(methods[b])}
            for key in ("forgetting", "drift"):
                if np.isnan(summary[a][key]) or np.isnan(summary[b][key]):
                    continue
                diff = summary[a][f"{key}_draws"] - summary[b][f"{key}_draws"]
                row |= {f"{key}_a": float(summary[a][key]), f"{key}_b": float(summary[b][key]),
                        f"{key}_diff": float(summary[a][key] - summary[b][key]),
                        f"{key}_low": float(np.quantile(diff, 0.025)), f"{key}_high": float(np.quantile(diff, 0.975)),
                        f"p_a_less_{key}": float(np.mean(diff < 0))}
            verdicts.append(row)
    return verdicts


def verdict_lines(verdicts: list[dict[str, Any]]) -> list[str]:
    """The study's verdict in words: per pair, who forgets less and who drifts less, and how sure the bootstrap is."""
    lines = []
    for v in verdicts:
        for key, unit, scale_, verb in (("forgetting", "points", 100.0, "forgets less on its untrained capabilities"),
                                        ("drift", "nats", 1.0, "drifts less from the reference")):
            if f"{key}_diff" not in v:
                continue
            less, more = (v["a"], v["b"]) if v[f"{key}_diff"] < 0 else (v["b"], v["a"])
            p = v[f"p_a_less_{key}"] if less == v["a"] else 1 - v[f"p_a_less_{key}"]
            lines.append(f"{less} {verb} than {more}: {scale_ * v[f'{key}_a']:.2f} ({v['a']}) vs "
                         f"{scale_ * v[f'{key}_b']:.2f} ({v['b']}) {unit}, difference {scale_ * v[f'{key}_diff']:+.2f} "
                         f"[{scale_ * v[f'{key}_low']:+.2f}, {scale_ * v[f'{key}_high']:+.2f}]; the order holds in "
                         f"{100 * p:.0f}% of bootstrap replicates"
                         + (" (one training seed each: over examples only, not over training runs)"
                            if v["seeds_a"] == v["seeds_b"] == 1 else ""))
    return lines
