"""How good is a judge: its verdicts on pairs a reference judge decided (the mirror's alpaca_eval_judgments, AlpacaEval
2's GPT-4-Turbo judge), beside the verdicts anyone computes without a model. alpaca_eval ranks its own judges this
way (its evaluators leaderboard, agreement with human labels, where "always the longer output" reaches 62.2%); a
judge that does not beat the longer output is worse than a heuristic, and its win rates are not informative.

Agreement follows alpaca_eval's analyzer (its absolute scoring rule) on binary verdicts: 1 where the verdicts match,
0 where they oppose, 1/2 where the judge ties; pairs the reference ties (preference exactly 1.5) are left out.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.evaluation.judge import Preference
from bench.store import RUN_FILE
from bench.types import BenchError

CLEAR_CUT = (1.1, 1.9)  # reference preferences outside this range: the pairs position bias should not decide
SHORT_PAIRS = 100  # the agreement a judged run carries when its judge has no agreement run yet: the first 100 pairs
SHORT_MAX_CHARS = 1_500  # ... of the balanced set whose two outputs are both this short (64.6% for the longer there)
BALANCED_SET = "alpaca_eval_judgments/fusechat-llama-3.2-3b-instruct.jsonl"  # the model wins 52.7% of 805
TASK = "judge_agreement"  # the task directory of an agreement run
# alpaca_eval's evaluators leaderboard (0.6.6): agreement with the human cross-annotations, the context of ours.
PUBLISHED_HUMAN_AGREEMENT = {"weighted_alpaca_eval_gpt4_turbo (the reference here)": 65.7, "humans": 65.7,
                             "alpaca_eval_gpt4": 69.2, "longest": 62.2, "chatgpt_fn": 60.0}


@dataclass(frozen=True)
class ReferencePair:
    id: str  # the file's stem and line
    instruction: str
    output_1: str
    output_2: str
    preference: float  # the reference judge's, in [1, 2]: above 1.5 it prefers output_2

    @property
    def second(self) -> float:
        return self.preference - 1


def read_pairs(path: Path, max_chars: int | None = None, limit: int | None = None) -> list[ReferencePair]:
    """Pairs from a .jsonl file, or from every .jsonl of a directory (sorted); `max_chars` keeps pairs whose outputs
    are both shorter, then `limit` the first N. A record without its fields, or a preference outside [1, 2], is one
    error naming the file and line."""
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise BenchError(f"--pairs {path}: no such file, or a directory without .jsonl files")
    pairs = []
    for file in files:
        for line_number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{file}, line {line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchError(f"{where}: not JSON ({e.msg})") from None
            for key in ("instruction", "output_1", "output_2"):
                if not isinstance(record.get(key) if isinstance(record, dict) else None, str):
                    raise BenchError(f"{where}: missing or non-string {key!r}")
            preference = record.get("preference")
            if isinstance(preference, bool) or not isinstance(preference, (int, float)) or not 1 <= preference <= 2:
                raise BenchError(f"{where}: 'preference' must be a number in [1, 2], got {preference!r}")
            if max_chars is None or max(len(record["output_1"]), len(record["output_2"])) < max_chars:
                pairs.append(ReferencePair(f"{file.stem}-{line_number}", record["instruction"], record["output_1"],
                                           record["output_2"], float(preference)))
    return pairs[:limit]


def pairs_sha256(pairs: list[ReferencePair]) -> str:
    text = json.dumps([(p.id, p.instruction, p.output_1, p.output_2, p.preference) for p in pairs])
    return hashlib.sha256(text.encode()).hexdigest()


def verdict(second: float) -> float:
    """1: the second output is better, 0: the first, 1/2: a tie."""
    return 1.0 if second > 0.5 else 0.0 if second < 0.5 else 0.5


def baselines(pairs: list[ReferencePair]) -> dict[str, list[Preference]]:
    """The judges anyone can compute, in both orders as a judge is asked: the longer output (by characters; equal
    lengths tie), always the reference (output_1), always the output shown first (a tie once both orders average)."""
    longer = [verdict(0.5 + np.sign(len(p.output_2) - len(p.output_1)) / 2) for p in pairs]
    return {"longer output": [Preference(v, (v, v)) for v in longer],
            "reference (output_1)": [Preference(0.0, (0.0, 0.0)) for _ in pairs],
            "position one": [Preference(0.5, (0.0, 1.0)) for _ in pairs]}


def _log_odds(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def readings(preferences: list[Preference]) -> dict[str, tuple[list[float], list[tuple[float, float]]]]:
    """Ways to read the same judgments in both orders, each as (the pair's preference for the second output, the
    two orders' own preferences): `mean`, the product's rule (both orders averaged); `agree`, a verdict only where
    both orders give it, else a tie; `calibrated`, each order's log-odds shifted by its mean over these pairs (its
    position bias) back to the two orders' common mean, then averaged; `calibrated, agree`, both at once."""
    orders = [p.orders if len(p.orders) == 2 else (p.second, p.second) for p in preferences]
    if all(a == b for a, b in orders):  # one order, or a judge without positions (pointwise): one reading
        return {"mean": ([p.second for p in preferences], orders)}
    out = {"mean": ([p.second for p in preferences], orders),
           "agree": ([verdict(a) if verdict(a) == verdict(b) else 0.5 for a, b in orders], orders)}
    logits = np.array([[_log_odds(a), _log_odds(b)] for a, b in orders]) if orders else np.zeros((0, 2))
    if len(logits):
        shifted = logits - logits.mean(axis=0) + logits.mean()
        calibrated = [(1 / (1 + math.exp(-a)), 1 / (1 + math.exp(-b))) for a, b in shifted]
        out["calibrated"] = ([1 / (1 + math.exp(-(a + b) / 2)) for a, b in shifted], calibrated)
        out["calibrated, agree"] = ([verdict(a) if verdict(a) == verdict(b) else 0.5 for a, b in calibrated],
                                    calibrated)
    return out


def agreement_metrics(pairs: list[ReferencePair], second: list[float], orders: list[tuple[float, float]],
                      longer: list[float], seconds: list[float] | None = None) -> dict[str, Any]:
    """Agreement with the reference (interval over pairs) and its paired difference from the longer output's,
    position consistency, the first position's share on clear-cut pairs, the correlation with the length
    difference, and seconds per judgment."""
    from bench.analysis.stats import mean_ci, paired_bootstrap_ci

    decided = [i for i, p in enumerate(pairs) if p.preference != 1.5]
    if not decided:
        raise BenchError("no pair the reference judge decided (every preference is 1.5)")
    agree = np.array([1 - abs(verdict(second[i]) - verdict(pairs[i].second)) for i in decided])
    agree_longer = np.array([1 - abs(verdict(longer[i]) - verdict(pairs[i].second)) for i in decided])
    low, high, method = mean_ci(agree.tolist())
    diff_low, diff_high = paired_bootstrap_ci(agree_longer, agree)
    clear = [i for i, p in enumerate(pairs) if not CLEAR_CUT[0] <= p.preference <= CLEAR_CUT[1]]
    first_shown = [1 - orders[i][0] for i in clear] + [orders[i][1] for i in clear]
    rho = length_correlation(second, pairs) if len(set(second)) > 1 else float("nan")
    judged = [s for s in (seconds or []) if s > 0]
    return {"n": len(decided), "agreement": float(agree.mean()), "ci_low": low, "ci_high": high, "ci_method": method,
            "minus_longer": float(agree.mean() - agree_longer.mean()), "minus_longer_low": diff_low,
            "minus_longer_high": diff_high, "beats_longer": bool(diff_low > 0),
            "position_consistency": float(np.mean([(a - 0.5) * (b - 0.5) > 0 for a, b in orders])),
            "first_position_clear_cut": float(np.mean(first_shown)) if first_shown else None,
            "clear_cut_pairs": len(clear), "length_spearman": None if math.isnan(rho) else float(rho),
            "win_rate_second": float(np.mean([verdict(s) for s in second])),
            "seconds_per_judgment": (sum(judged) / (2 * len(judged))) if judged else None}


def measure(pairs: list[ReferencePair], preferences: list[Preference]) -> dict[str, dict[str, Any]]:
    """Every reading of the judge's preferences (none: the baselines alone) and every baseline, on the same pairs."""
    longer = [p.second for p in baselines(pairs)["longer output"]]
    seconds = [p.seconds for p in preferences]
    rows = {f"judge: {name}": agreement_metrics(pairs, second, orders, longer, seconds)
            for name, (second, orders) in readings(preferences).items()} if preferences else {}
    for name, given in baselines(pairs).items():
        rows[name] = agreement_metrics(pairs, [p.second for p in given], [p.orders for p in given], longer)
    reference = [p.second for p in pairs]
    rows["reference judge"] = {"win_rate_second": float(np.mean([verdict(s) for s in reference])),
                               "length_spearman": float(length_correlation(reference, pairs))}
    return rows


def length_correlation(values: list[float], pairs: list[ReferencePair]) -> float:
    """Spearman's rho of preferences for the second output with its length minus the first's (characters)."""
    from scipy.stats import spearmanr

    return spearmanr(values, [len(p.output_2) - len(p.output_1) for p in pairs]).statistic


def carried(readings: dict[str, dict[str, Any]], run: str) -> dict[str, Any]:
    """What a judged run carries of its judge's agreement run: the product's reading (both orders averaged), the
    longer output's agreement on the same pairs, and whether the judge informs (its win rates mean something only
    where its agreement beats the longer output's, with the paired interval saying so)."""
    judge, longer = readings["judge: mean"], readings["longer output"]
    keys = ("n", "agreement", "ci_low", "ci_high", "minus_longer", "minus_longer_low", "minus_longer_high",
            "position_consistency")
    return {"run": run, **{k: judge[k] for k in keys}, "longer_output": longer["agreement"],
            "informative": bool(judge["beats_longer"])}


def unmeasured(why: str) -> dict[str, Any]:
    return {"run": None, "informative": False, "reason": why}


def latest_agreement(results_dir: Path, judge_identity: dict[str, Any]) -> dict[str, Any] | None:
    """The judge's last finished agreement run in the results directory, as a judged run carries it; None if none."""
    found = []
    for record_path in (results_dir / "runs").glob(f"*/{RUN_FILE}"):
        record = json.loads(record_path.read_text())
        metrics = record_path.parent / TASK / "metrics.json"
        if record.get("complete") and record.get("identity", {}).get("judge") == judge_identity and metrics.is_file():
            found.append((record.get("finished") or record.get("started") or "", record["name"], metrics))
    if not found:
        return None
    _, name, metrics = max(found)
    return carried(json.loads(metrics.read_text())["readings"], name)


def why_not_informative(summary: dict[str, Any] | None) -> str | None:
    """None where the judge informs; else the reason in words, for the report and the gate."""
    if summary is None:
        return "the judge's agreement was not measured (a run from before judges were measured)"
    if summary.get("informative"):
        return None
    if summary.get("run") is None:
        return summary["reason"]
    return (f"the judge agrees with AlpacaEval 2's judge on {100 * summary['agreement']:.1f}% "
            f"[{100 * summary['ci_low']:.1f}, {100 * summary['ci_high']:.1f}] of {summary['n']} pairs, not above the "
            f"longer output's {100 * summary['longer_output']:.1f}% (difference {100 * summary['minus_longer']:+.1f} "
            f"[{100 * summary['minus_longer_low']:+.1f}, {100 * summary['minus_longer_high']:+.1f}]; run "
            f"{summary['run']})")
