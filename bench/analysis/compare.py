"""Paired comparison of runs: the same examples, scored for a reference run and for each other run.

A delta is only meaningful on the same examples, so runs must have scored the same example ids for a task;
intervals and tests are paired over those examples (paired bootstrap; McNemar's exact test for pass/fail
scores, a paired sign-flip permutation test otherwise).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.analysis.stats import (BOOTSTRAP_SEED, POWER_Z, crossed_means, detectable_difference, mcnemar_exact,
                                  holm, paired_bootstrap_ci, sign_flip_p)
from bench.evaluation.agreement import why_not_informative
from bench.store import RUN_FILE, read_jsonl
from bench.types import BenchError

LEVEL = 0.95
PASS_FAIL_TEST = "McNemar exact"
HEAD_TO_HEAD = "_vs_seed"  # a judged task's head-to-head against the seed's outputs: task name + this suffix
HEAD_TO_HEAD_TEST = "sign test against 50%"
SEEDED_TEST = "bootstrap over training seeds and examples (crossed), and a sign-flip test over examples"
RAW_METRICS = ("kl",)  # shown as they are (nats); every other metric is a fraction, shown in %
LOWER_IS_BETTER = ("kl",)  # drift: a rise from the reference is the loss
UNTRAINED_MEAN = "untrained capabilities (mean)"
UNKNOWN = "unknown (no train.json beside the adapter)"


def scale(metric: str) -> float:
    return 1.0 if metric in RAW_METRICS else 100.0


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
                                            "seed_fingerprint": task_metrics["vs_seed"]["seed_fingerprint"],
                                            **{k: task_metrics[k] for k in ("judge", "judge_agreement")
                                               if k in task_metrics}}
    return RunScores(name, record, tasks, metrics)


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


def compare_runs(runs: list[RunScores]) -> pd.DataFrame:
    """One row per (task, run): the score with its interval and, against the first run (the reference; a committed
    baseline may be one), the paired delta, its interval, the test's p-value and the per-example flips. Tasks are
    those every run has."""
    if len(runs) < 2:
        raise BenchError("bench compare needs a reference run and at least one other run")
    names = [run.name for run in runs]
    if twice := next((name for name in names if names.count(name) > 1), None):
        raise BenchError(f"run {twice} is named twice; compare distinct runs")
    reference = runs[0]
    tasks = [t for t in reference.tasks if all(t in r.tasks for r in runs[1:])]
    if not tasks:
        raise BenchError(f"runs {', '.join(names)} have no task in common")
    formats = {r.name: r.record.get("identity", {}).get("prompt_format", "chat") for r in runs}
    if other := next((n for n, f in formats.items() if f != formats[reference.name]), None):
        raise BenchError(f"runs {reference.name} and {other} were prompted in different formats ({formats[reference.name]} "
                         f"vs {formats[other]}); evaluate both alike (--prompt-format)")
    rows = []
    for task in tasks:
        data = {r.name: r.record.get("identity", {}).get("tasks", {}).get(task, {}).get("data_sha256") for r in runs}
        if other := next((n for n, sha in data.items() if sha != data[reference.name]), None):
            raise BenchError(f"task {task}: runs {reference.name} and {other} read different data (sha256 "
                             f"{str(data[reference.name])[:12]} vs {str(data[other])[:12]}); evaluate both on the same "
                             f"--data-dir")
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
    for stem, members in training_seed_groups(runs[1:]).items():
        rows += [seeded_row([reference], training_seeds_label(stem, members), members, task) for task in tasks]
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


TRAINING_SEED_RUN = re.compile(r"^(?P<stem>.+)-s(?P<seed>\d+)$")  # a fine-tune's run per training seed: METHOD-sN


def training_seeds_label(stem: str, members: list[RunScores]) -> str:
    """The name of a method over its training seeds, in tables, reports and verdicts."""
    return f"{stem} ({len(members)} seeds)"


def training_seed_groups(runs: list[RunScores]) -> dict[str, list[RunScores]]:
    """Runs named STEM-sN for two or more N: one method trained with several training seeds."""
    groups: dict[str, list[RunScores]] = {}
    for run in runs:
        if match := TRAINING_SEED_RUN.match(run.name):
            groups.setdefault(match["stem"], []).append(run)
    return {stem: sorted(members, key=training_seed_number) for stem, members in groups.items() if len(members) >= 2}


def training_seed_number(run: RunScores) -> int:
    return int(TRAINING_SEED_RUN.match(run.name)["seed"])


def methods_of(runs: list[RunScores]) -> dict[str, list[RunScores]]:
    """The methods among runs: each method over its training seeds, then each run that is not one of them."""
    groups = training_seed_groups(runs)
    grouped = {r.name for members in groups.values() for r in members}
    return {training_seeds_label(stem, members): members for stem, members in groups.items()} | \
        {r.name: [r] for r in runs if r.name not in grouped}


def single_training_seed_runs(names: list[str]) -> set[str]:
    """The names among a comparison's columns that are one training seed of a method also shown over its seeds."""
    labels = set(names)
    members = {}
    for name in names:
        if match := TRAINING_SEED_RUN.match(name):
            members.setdefault(match["stem"], []).append(name)
    return {name for stem, group in members.items() if training_seeds_label(stem, group) in labels for name in group}


def method_pairs(runs: list[RunScores]) -> pd.DataFrame:
    """Each pair of methods head to head, per task: Δ = the later method minus the earlier, paired over the same
    examples (and, for methods over training seeds, by seed number, with the bootstrap over seeds and examples)."""
    methods = methods_of(runs)
    names = list(methods)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            first, second = methods[a], methods[b]
            if len(first) > 1 and len(second) > 1 and [*map(training_seed_number, first)] != [*map(training_seed_number, second)]:
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
    and examples (crossed: bench.analysis.stats.crossed_means), each seed's delta and number, how many agree in sign.
    Its p is the larger of the bootstrap's and an exact sign-flip test's over the examples (each example's delta
    averaged over seeds): with few examples changed the percentile bootstrap is too narrow (4 of 48 gained at every
    seed: bootstrap p = 0.03, while 4 examples cannot go below p = 0.125), and with one seed of pass/fail scores the
    sign-flip test is McNemar's exact test, so seeds never make an effect significant that its examples cannot."""
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
    p_bootstrap = float(min(1.0, 2 * (beyond + 1) / (len(draws) + 1))) if delta else 1.0
    p = max(p_bootstrap, sign_flip_p(np.mean(diffs, axis=0)))
    metrics = members[0].metrics[task]
    # Detectable: the examples' part (the same examples for every seed, so not shrunk by more seeds) and the
    # seed-to-seed spread's part, added in quadrature.
    within = float(np.mean([detectable_difference(d, is_binary(ref, other)) for (ref, other, _), d in zip(pairs, diffs)]))
    between = POWER_Z * float(np.std(deltas, ddof=1)) / np.sqrt(len(deltas))
    return {"task": task, "capability": metrics.get("capability"), "metric": metrics.get("metric"),
            "run": label, "n": len(pairs[0][2]), "score": float(np.mean([o.mean() for _, o, _ in pairs])),
            "ci_low": float(np.quantile(scores, 0.025)), "ci_high": float(np.quantile(scores, 0.975)),
            "delta": delta, "delta_low": float(low), "delta_high": float(high), "p_value": p,
            "test": SEEDED_TEST, "significant": bool(p < 1 - LEVEL),
            "pass_fail": all(is_binary(ref, other) for ref, other, _ in pairs),
            "right_to_wrong": int(sum(np.sum(d < 0) for d in diffs)), "wrong_to_right": int(sum(np.sum(d > 0) for d in diffs)),
            "detectable": float(np.hypot(within, between)), "seed_deltas": deltas,
            "seed_numbers": [training_seed_number(r) for r in (members if len(members) == count else references)],
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


@dataclass
class MethodSummary:
    """A method's two headline figures over a joint bootstrap: mean forgetting on its untrained capabilities and
    drift (KL to the reference), each a point estimate and its replicates (the same draws of seeds and examples for
    every method, so replicates compare across methods), and the tasks each rests on."""

    seeds: int
    forgetting: float = np.nan
    forgetting_draws: np.ndarray | float = np.nan
    forgetting_tasks: list[str] = field(default_factory=list)
    drift: float = np.nan
    drift_draws: np.ndarray | float = np.nan
    drift_tasks: list[str] = field(default_factory=list)


def method_summaries(reference: RunScores, runs: list[RunScores], trained: dict[str, str | None],
                     resamples: int = 2000, rng_seed: int = BOOTSTRAP_SEED,
                     uninformed: set[str] = frozenset()) -> dict[str, MethodSummary]:
    """Per method (a run, or its runs over training seeds): mean forgetting = minus the mean over its untrained
    capabilities of the mean delta of their tasks (a capability the reference scores 0 on has nothing to forget, and
    one measured only by a judge that does not inform, are left out), and drift = the drift task's KL. Every
    replicate draws the seeds (by their order: paired by seed number where methods share their seed numbers) and one
    resample of each task's examples, shared by all methods."""
    methods = methods_of(runs)
    # A judged task's head-to-head row measures the same outputs again: out, as in forgetting().
    tasks = [t for t in reference.tasks if not t.endswith(HEAD_TO_HEAD)
             and all(t in r.tasks for members in methods.values() for r in members)]
    if not tasks:
        return {}
    kinds = {t: reference.metrics[t].get("metric") for t in tasks}
    capability = {t: reference.metrics[t].get("capability") for t in tasks}
    floor = {c for c in capability.values()  # nothing to forget where the reference scores 0 (as in the report)
             if np.mean([reference.tasks[t]["score"].mean() for t in tasks if capability[t] == c]) <= 0}
    drift_tasks = [t for t in tasks if kinds[t] in RAW_METRICS][:1]
    summaries = {}
    for name, members in methods.items():
        deltas, point = {}, {}
        for t in tasks:
            values = np.stack([other - ref for ref, other, _ in (aligned(reference, r, t) for r in members)])
            deltas[t] = crossed_means(values, resamples, rng_seed, examples_rng_seed=rng_seed + 1 + tasks.index(t))
            point[t] = float(values.mean())
        untrained = sorted({capability[t] for t in tasks if kinds[t] not in RAW_METRICS} - {trained.get(name)} - floor
                           - uninformed)
        forget = lambda d: -np.mean([np.mean([d[t] for t in tasks if capability[t] == c and kinds[t] not in RAW_METRICS],
                                             axis=0) for c in untrained], axis=0)
        summary = MethodSummary(len(members))
        if untrained:
            summary.forgetting, summary.forgetting_draws = float(forget(point)), forget(deltas)
            summary.forgetting_tasks = [t for t in tasks if capability[t] in untrained and kinds[t] not in RAW_METRICS]
        if drift_tasks:
            summary.drift, summary.drift_draws = point[drift_tasks[0]], deltas[drift_tasks[0]]
            summary.drift_tasks = drift_tasks
        summaries[name] = summary
    return summaries


TIE = 1e-12  # replicates closer than this are tied: the same examples drawn, summed in another order


def less_share(diff: np.ndarray) -> float:
    """The share of replicates where a difference is below 0, a tie counted half: the order's probability, so the
    two orders' shares add to 1 and neither wins the ties."""
    return float(np.mean(diff < -TIE) + 0.5 * np.mean(np.abs(diff) <= TIE))


def method_verdicts(summaries: dict[str, MethodSummary]) -> list[dict[str, Any]]:
    """For each pair of methods, which forgets less on the capabilities it was not trained for and which drifts less,
    each with the difference's interval and the probability over the joint bootstrap that the order holds."""
    verdicts = []
    names = list(summaries)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa, sb = summaries[a], summaries[b]
            row = {"a": a, "b": b, "seeds_a": sa.seeds, "seeds_b": sb.seeds}
            for key in ("forgetting", "drift"):
                if np.isnan(getattr(sa, key)) or np.isnan(getattr(sb, key)):
                    continue
                diff = getattr(sa, f"{key}_draws") - getattr(sb, f"{key}_draws")
                row |= {f"{key}_a": getattr(sa, key), f"{key}_b": getattr(sb, key),
                        f"{key}_diff": getattr(sa, key) - getattr(sb, key),
                        f"{key}_low": float(np.quantile(diff, 0.025)), f"{key}_high": float(np.quantile(diff, 0.975)),
                        f"p_a_less_{key}": less_share(diff)}
            verdicts.append(row)
    return verdicts


def method_ranking(summaries: dict[str, MethodSummary], rows: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """The verdict a reader wants first: the methods ordered by mean forgetting (least first) and by drift (least
    first), each with its interval, the probability over the joint bootstrap that it is the least of all, and what
    it rests on: its tasks with their n, and the single tasks whose loss against the reference is significant
    after Holm's correction across that method's tasks (and before it, as the task table's marks are)."""
    ranking: dict[str, list[dict[str, Any]]] = {}
    for key in ("forgetting", "drift"):
        names = [n for n, s in summaries.items() if not np.isnan(getattr(s, key))]
        if not names:
            continue
        draws = np.stack([getattr(summaries[n], f"{key}_draws") for n in names])
        # Methods tied for least in a replicate share it (ties are common: pass/fail scores on shared draws).
        least = np.isclose(draws, draws.min(axis=0), rtol=0, atol=TIE)
        best = (least / least.sum(axis=0)).mean(axis=1)
        entries = []
        for i, name in enumerate(names):
            s = summaries[name]
            tasks = getattr(s, f"{key}_tasks")
            own = rows[(rows["run"] == name) & rows["task"].isin(tasks)]
            loss = (own["delta"] > 0) == own["metric"].isin(LOWER_IS_BETTER)
            worse = own[own["significant"].fillna(False).astype(bool) & loss]
            corrected = own[(np.array(holm(own["p_value"].astype(float).tolist())) < 1 - LEVEL) & loss]
            entries.append({"method": name, "seeds": s.seeds, key: getattr(s, key),
                            "low": float(np.quantile(getattr(s, f"{key}_draws"), 0.025)),
                            "high": float(np.quantile(getattr(s, f"{key}_draws"), 0.975)),
                            "p_least": float(best[i]), "tasks": {t: int(n) for t, n in zip(own["task"], own["n"])},
                            "significant_losses": list(corrected["task"]) if key == "forgetting" else [],
                            "significant_losses_uncorrected": list(worse["task"]) if key == "forgetting" else []})
        ranking[key] = sorted(entries, key=lambda e: e[key])
    return ranking


@dataclass(frozen=True)
class Comparison:
    """Everything `bench compare` concludes, computed once from the runs; the console table, report.md, .csv,
    .json, .html and the gate render or read it and decide nothing themselves."""

    reference: str
    rows: pd.DataFrame  # per (task, run or method over seeds): score, interval; paired delta, test, significance
    pairs: pd.DataFrame  # the methods head to head, per task
    trained: dict[str, str | None]  # per run and method: the capability it was trained for
    capabilities: pd.DataFrame  # per (run, capability): retention; per run, mean forgetting on the untrained ones
    drift: pd.DataFrame  # per run: KL from the reference beside forgetting and gain
    drift_rho: float | None  # Spearman's rank correlation of KL with forgetting over the training runs
    ranking: dict[str, list[dict[str, Any]]]  # the verdict first: methods by forgetting and by drift
    verdicts: list[dict[str, Any]]  # each pair of methods
    instructions: pd.DataFrame  # IFEval's per-kind counts per run
    records: dict[str, dict[str, Any]]  # each run's run.json
    training_seed_runs: set[str]  # single training seeds of a method also shown over its seeds
    judges: dict[str, dict[str, Any]] = field(default_factory=dict)  # per judged task: its judge's agreement, and
    # `not_informative`, the reason its win rates say nothing (None where they do)
    drift_rho_runs: list[str] = field(default_factory=list)  # the runs drift_rho is over (no method's seed mean)

    @property
    def methods(self) -> list[str]:
        """The columns a reader compares: the reference's rivals, each method over its seeds once."""
        return [r for r in self.rows["run"].unique() if r != self.reference and r not in self.training_seed_runs]


def build_comparison(runs: list[RunScores], trained: dict[str, str | None] | None = None) -> Comparison:
    """The comparison of runs against the first; `trained` defaults to what each run's adapter says."""
    rows = compare_runs(runs)
    records = {run.name: run.record for run in runs}
    trained = dict(trained) if trained is not None else \
        {run.name: trained_capability(run.record) for run in runs[1:]}
    for stem, members in training_seed_groups(runs[1:]).items():  # a method over its seeds: trained as its seeds were
        trained.setdefault(training_seeds_label(stem, members), trained.get(members[0].name))
    judges = judge_agreements([run.metrics for run in runs])
    uninformed = uninformed_capabilities(rows, judges)
    capabilities = forgetting(rows, runs[0].name, trained, uninformed)
    over_seeds = {training_seeds_label(stem, members) for stem, members in training_seed_groups(runs[1:]).items()}
    drift, rho, rho_runs = drift_against_forgetting(rows, capabilities, over_seeds)
    # A ranking needs two methods; one candidate against its baseline (the gate) skips the bootstrap.
    summaries = method_summaries(runs[0], runs[1:], trained, uninformed=uninformed) \
        if len(methods_of(runs[1:])) >= 2 else {}
    return Comparison(runs[0].name, rows, method_pairs(runs[1:]), trained, capabilities, drift, rho,
                      method_ranking(summaries, rows) if len(summaries) >= 2 else {},
                      method_verdicts(summaries) if len(summaries) >= 2 else [], instruction_breakdown(runs),
                      records, single_training_seed_runs(list(rows["run"].unique())), judges, rho_runs)


def judge_agreements(runs_metrics: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per judged task of the runs' metrics, its judge's agreement as the latest run carries it (the runs share one
    judge: compare_runs checks), and why its win rates do not inform, if they do not."""
    judges = {}
    for task in dict.fromkeys(t for metrics in runs_metrics for t, m in metrics.items() if "judge" in m):
        carried = [metrics[task]["judge_agreement"] for metrics in reversed(runs_metrics)
                   if metrics.get(task, {}).get("judge_agreement") is not None]
        agreement = carried[0] if carried else None
        judges[task] = {"agreement": agreement, "not_informative": why_not_informative(agreement)}
    return judges


def uninformed_capabilities(rows: pd.DataFrame, judges: dict[str, dict[str, Any]]) -> set[str]:
    """Capabilities every task of which is judged by a judge that does not inform: left out of mean forgetting."""
    by_capability = rows.groupby("capability", sort=False)["task"].agg(set)
    return {c for c, tasks in by_capability.items()
            if all(t in judges and judges[t]["not_informative"] for t in tasks)}


def trained_capability(run_record: dict[str, Any]) -> str | None:
    """The capability the run's adapter was trained for, from the checkpoint's train.json; None without an
    adapter, UNKNOWN for an adapter that does not say (then every capability counts as untrained, and the report
    says so)."""
    adapter = (run_record.get("model") or {}).get("adapter")
    if not adapter:
        return None
    path = Path(adapter) / "train.json"
    return (json.loads(path.read_text()).get("capability") if path.is_file() else None) or UNKNOWN


def forgetting(table: pd.DataFrame, reference: str, trained: dict[str, str | None],
               uninformed: set[str] = frozenset()) -> pd.DataFrame:
    """One row per (run, capability): both means, the retention ratio, and whether it was trained for; plus one
    row per run with the means over the capabilities it was not trained for, whose `forgetting` is -delta. A
    capability the reference scores 0 on has nothing to forget: it stays out of the mean (only gains could move it,
    and at the floor's few examples one flip would outweigh every real loss), as in method_summaries; so does one
    measured only by a judge that does not inform (`uninformed`). A judged task's head-to-head row measures the
    same outputs again (the reference at 50% by construction): out of the means, as in method_summaries."""
    # Drift is in nats: reported beside, never averaged in.
    table = table[~table["metric"].isin(RAW_METRICS) & ~table["task"].str.endswith(HEAD_TO_HEAD)]
    means = table.groupby(["run", "capability"], sort=False)["score"].mean()
    rows = []
    for run in table["run"].unique():
        if run == reference:
            continue
        untrained, floor = [], []
        for capability in table["capability"].unique():
            ref, own = means[(reference, capability)], means[(run, capability)]
            is_trained = capability == trained.get(run)
            rows.append({"run": run, "capability": capability, "reference": ref, "score": own,
                         "retention": own / ref if ref > 0 else float("nan"), "delta": own - ref,
                         "trained": is_trained})
            if not is_trained and capability not in uninformed:
                (untrained if ref > 0 else floor).append((ref, own) if ref > 0 else capability)
        if not untrained:
            continue
        ref, own = (sum(pair[i] for pair in untrained) / len(untrained) for i in (0, 1))
        label = UNTRAINED_MEAN if trained.get(run) != UNKNOWN else f"all capabilities (mean; trained: {UNKNOWN})"
        if floor:
            label = label[:-1] + f"; without {', '.join(floor)}: the reference scores 0, nothing to forget)"
        left_out = sorted(uninformed - {trained.get(run)})
        if left_out:
            label = label[:-1] + f"; without {', '.join(left_out)}: its judge does not inform)"
        rows.append({"run": run, "capability": label, "reference": ref, "score": own,
                     "delta": own - ref, "trained": False, "forgetting": ref - own})
    return pd.DataFrame(rows, columns=["run", "capability", "reference", "score", "retention", "delta", "trained",
                                       "forgetting"])


def drift_against_forgetting(table: pd.DataFrame, capabilities: pd.DataFrame, over_seeds: set[str] = frozenset()
                             ) -> tuple[pd.DataFrame, float | None, list[str]]:
    """Per fine-tuned run: its KL from the reference (the first drift task), its mean forgetting and its gain; and
    Spearman's rank correlation of KL with forgetting over the training runs (three or more), with the runs it is
    over: does drift predict what a method forgets (RL's Razor, arXiv 2509.04259)? A method's mean over its seeds
    (`over_seeds`) is a row of the table but not a run of its own: counted in the correlation, it would count its
    seeds twice."""
    from scipy.stats import spearmanr

    if capabilities.empty:  # only drift was compared: no forgetting to set it against
        return pd.DataFrame(), None, []
    drift = table[table["metric"].isin(RAW_METRICS) & table["run"].isin(capabilities["run"])]
    if drift.empty:
        return pd.DataFrame(), None, []
    first = drift[drift["task"] == drift["task"].iloc[0]]
    rows = []
    for _, r in first.iterrows():
        own = capabilities[capabilities["run"] == r["run"]]
        forgot = own["forgetting"].dropna() if "forgetting" in own else []
        gain = own[own["trained"]]["delta"]
        rows.append({"run": r["run"], "drift_task": r["task"], "kl": r["score"],
                     "forgetting": forgot.iloc[0] if len(forgot) else float("nan"),
                     "gain": gain.iloc[0] if len(gain) else float("nan")})
    frame = pd.DataFrame(rows)
    known = frame.dropna(subset=["kl", "forgetting"])
    known = known[~known["run"].isin(over_seeds)]
    rho = None
    if len(known) >= 3 and known["kl"].nunique() > 1 and known["forgetting"].nunique() > 1:
        rho = float(spearmanr(known["kl"], known["forgetting"]).statistic)
    return frame, rho, list(known["run"])
