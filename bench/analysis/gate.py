"""`bench gate`: a regression verdict on paired statistics, for CI (rendered as markdown, JUnit and JSON by report.py).

A gated task fails when its drop from the baseline is larger than the drop allowed for it AND the paired test says
the drop is real: p below alpha after a Holm correction across the gated tasks (McNemar's exact test for pass/fail
scores, the paired sign-flip permutation test otherwise: `bench compare`'s statistics). A floor (`require`) also
fails a candidate scoring below it. Each task gets a power note: the smallest drop its n detects at the gate's alpha
with 80% power (bench/analysis/stats.py), so a pass on a small slice is not read as "no regression".

Exit codes: 0 no regression, 1 a regression, 2 a usage or data error (or any crash: never read as a regression).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import pandas as pd

from bench.analysis.compare import LOWER_IS_BETTER, RunScores, aligned, build_comparison, is_binary, scale
from bench.analysis.stats import detectable_difference, holm, mean_ci
from bench.store import RUN_FILE
from bench.types import BenchError

NOT_GATED = "not gated"  # a judged task whose judge does not beat the longer output: passed, with the reason


@dataclass(frozen=True)
class GateConfig:
    alpha: float = 0.05  # family-wise, Holm-corrected across the gated tasks
    default_max_drop: float = 0.0  # points (scores in %; drift KL in nats) a task may lose before it can fail
    max_drop: dict[str, float] = field(default_factory=dict)  # per task or capability, over the default
    require: dict[str, float] = field(default_factory=dict)  # per task: the candidate's floor, in points
    strict: bool = False  # an underpowered task (its n cannot show its allowed drop) fails too

    def allowed_drop(self, task: str, capability: str | None) -> float:
        return self.max_drop.get(task, self.max_drop.get(capability or "", self.default_max_drop))


def load_gate_config(path: Path) -> GateConfig:
    """A gate.toml; an unknown key or a wrong type is an error naming it."""
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise BenchError(f"--config {path}: not readable TOML ({e})") from None
    kinds = {f.name: f.type for f in fields(GateConfig)}
    for key, value in values.items():
        if key not in kinds:
            raise BenchError(f"--config {path}: unknown key {key!r} (keys: {', '.join(kinds)})")
        if kinds[key] == "bool" and not isinstance(value, bool) or kinds[key] == "float" and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise BenchError(f"--config {path}: key {key!r} must be a {kinds[key]}, got {type(value).__name__}")
        if kinds[key].startswith("dict"):
            if not isinstance(value, dict):
                raise BenchError(f"--config {path}: key {key!r} must be a table of task = number")
            for name, number in value.items():
                if isinstance(number, bool) or not isinstance(number, (int, float)):
                    raise BenchError(f"--config {path}: key {key}.{name} must be a number, got {type(number).__name__}")
    config = GateConfig(**values)
    check_config(config, f"--config {path}")
    return config


def check_config(config: GateConfig, where: str) -> None:
    if not 0 < config.alpha < 1:
        raise BenchError(f"{where}: alpha must be in (0, 1), got {config.alpha}")
    for name, drop in {"default_max_drop": config.default_max_drop, **config.max_drop}.items():
        if not 0 <= drop < float("inf"):
            raise BenchError(f"{where}: max drop {name} must be finite and >= 0, got {drop}")


def differences(baseline: RunScores, candidate: RunScores) -> list[str]:
    """What differs between the two runs' identities, for the report: model, data, settings per task."""
    base, cand = baseline.record["identity"], candidate.record["identity"]
    notes = [f"{key}: {base.get(key)} -> {cand.get(key)}" for key in ("fingerprint", "dtype", "limit")
             if base.get(key) != cand.get(key)]
    for task in sorted(set(base.get("tasks", {})) & set(cand.get("tasks", {}))):
        for key in sorted(set(base["tasks"][task]) | set(cand["tasks"][task])):
            if key != "n" and base["tasks"][task].get(key) != cand["tasks"][task].get(key):
                notes.append(f"{task}: {key} differs")
    return notes


def shared_examples(baseline: RunScores, candidate: RunScores) -> tuple[RunScores, RunScores, list[str]]:
    """Both runs restricted, task by task, to the examples both scored; what was left out is noted."""
    notes, base_tasks, cand_tasks = [], {}, {}
    for task in sorted(baseline.tasks.keys() ^ candidate.tasks.keys()):
        notes.append(f"{task}: not gated, scored only by the {'baseline' if task in baseline.tasks else 'candidate'}")
    for task in [t for t in baseline.tasks if t in candidate.tasks]:
        base, cand = baseline.tasks[task], candidate.tasks[task]
        shared = set(base["id"]) & set(cand["id"])
        if not shared:
            notes.append(f"{task}: not gated, no example scored by both runs")
            continue
        if len(shared) < max(len(base), len(cand)):
            notes.append(f"{task}: gated on the {len(shared)} examples both scored ({len(base)} in the baseline, "
                         f"{len(cand)} in the candidate)")
        base_tasks[task], cand_tasks[task] = base[base["id"].isin(shared)], cand[cand["id"].isin(shared)]
    return with_tasks(baseline, base_tasks), with_tasks(candidate, cand_tasks), notes


def with_tasks(run: RunScores, tasks: dict[str, pd.DataFrame]) -> RunScores:
    """The run restricted to these tasks' (and examples') scores; a task's mean, interval and n are those of the
    examples kept, so every figure of a gated row is over the examples its test compares."""
    metrics = {}
    for task, frame in tasks.items():
        metrics[task] = run.metrics[task]
        if len(frame) != len(run.tasks[task]):
            low, high, _ = mean_ci(frame["score"].tolist())
            metrics[task] = {**metrics[task], "mean": float(frame["score"].mean()), "ci_low": low, "ci_high": high,
                             "n": len(frame)}
    return replace(run, tasks=tasks, metrics=metrics)


@dataclass
class Verdict:
    rows: pd.DataFrame
    failed: bool
    notes: list[str]
    config: GateConfig
    candidate: str
    baseline: str
    worse: dict[str, list[str]] = field(default_factory=dict)  # per failed task, the examples that got worse


def gate(baseline: RunScores, candidate: RunScores, config: GateConfig, tasks: list[str] | None = None) -> Verdict:
    """`tasks`: gate only these (default: every task both runs scored)."""
    check_config(config, "bench gate")
    if baseline.name == candidate.name:  # a run gated against itself: two names for one table
        baseline = replace(baseline, name=f"baseline:{baseline.name}")
    notes = differences(baseline, candidate)
    for name in tasks or ():
        if name not in baseline.tasks or name not in candidate.tasks:
            raise BenchError(f"--tasks {name}: not scored by both runs (baseline: {', '.join(baseline.tasks)}; "
                             f"candidate: {', '.join(candidate.tasks)})")
    if tasks:
        baseline, candidate = (with_tasks(run, {t: run.tasks[t] for t in tasks}) for run in (baseline, candidate))
    baseline, candidate, left_out = shared_examples(baseline, candidate)
    notes += left_out
    if not baseline.tasks:
        raise BenchError(f"runs {baseline.name} and {candidate.name} share no scored example of any task")
    unknown = sorted(set(config.require) - set(baseline.tasks))
    if unknown:
        raise BenchError(f"--require {unknown[0]}: not a task both runs scored ({', '.join(baseline.tasks)})")
    comparison = build_comparison([baseline, candidate])
    table = comparison.rows
    rows = table[table["run"] == candidate.name].reset_index(drop=True)
    named = set(rows["task"]) | set(rows["capability"].dropna())
    # A gate.toml may serve runs of other tasks, so a name matching none here is said, not refused: a typo shows.
    notes += [f"max_drop {name}: matches no gated task or capability (ignored)"
              for name in sorted(set(config.max_drop) - named)]
    base_scores = table[table["run"] == baseline.name].set_index("task")["score"]
    rows["baseline_score"] = rows["task"].map(base_scores)
    not_gated = {task: why for task, judge in comparison.judges.items() if (why := judge["not_informative"])}
    gated = ~rows["task"].isin(not_gated)
    rows["p_holm"] = float("nan")  # Holm over the gated tasks only
    rows.loc[gated, "p_holm"] = holm(rows.loc[gated, "p_value"].tolist())
    verdicts = []
    for _, r in rows.iterrows():
        if r.task in not_gated:  # never failed on a judge no better than the longer output
            verdicts.append({"drop": float("nan"), "allowed_drop": config.allowed_drop(r.task, r.capability),
                             "detectable_drop": float("nan"), "underpowered": False, "verdict": NOT_GATED,
                             "reasons": not_gated[r.task]})
            continue
        k = scale(r.metric)
        lower_is_better = r.metric in LOWER_IS_BETTER
        drop = k * (r.delta if lower_is_better else -r.delta)
        allowed = config.allowed_drop(r.task, r.capability)
        base, cand, _ = aligned(baseline, candidate, r.task)
        # At Holm's strictest step (alpha over the gated tasks): a drop this size fails even as the smallest p.
        floor = k * detectable_difference(cand - base, is_binary(base, cand), alpha=config.alpha / int(gated.sum()))
        # Too few examples for any drop to be significant, or for the allowance (0: any real drop) to be shown.
        underpowered = floor == float("inf") or allowed > 0 and floor > allowed
        reasons = []
        if drop > allowed and r.p_holm < config.alpha:
            reasons.append(f"drop {drop:.2f} > allowed {allowed:g}, p_holm={r.p_holm:.3g}")
        if r.task in config.require and (k * r.score > config.require[r.task] if lower_is_better
                                         else k * r.score < config.require[r.task]):
            reasons.append(f"score {k * r.score:.2f} {'above the ceiling' if lower_is_better else 'below the floor'} "
                           f"{config.require[r.task]:g}")
        if config.strict and underpowered:
            reasons.append(f"underpowered: n={int(r.n)} cannot show a drop under {floor:.2f}")
        verdicts.append({"drop": drop, "allowed_drop": allowed, "detectable_drop": floor, "underpowered": underpowered,
                         "verdict": "fail" if reasons else "pass", "reasons": "; ".join(reasons)})
    rows = pd.concat([rows, pd.DataFrame(verdicts)], axis=1)
    worse = {}
    for task in rows.loc[rows["verdict"] == "fail", "task"]:
        both = baseline.tasks[task].merge(candidate.tasks[task], on="id", suffixes=("_base", "_cand"))
        sign = -1 if metrics_of(rows, task) in LOWER_IS_BETTER else 1
        worse[task] = [str(i) for i in both.loc[sign * (both["score_cand"] - both["score_base"]) < 0, "id"]]
    return Verdict(rows, bool((rows["verdict"] == "fail").any()), notes, config, candidate.name, baseline.name, worse)


def metrics_of(rows: pd.DataFrame, task: str) -> str:
    return rows.loc[rows["task"] == task, "metric"].iloc[0]


def is_run_dir(results_dir: Path, name: str) -> bool:
    return (results_dir / "runs" / name / RUN_FILE).is_file()
