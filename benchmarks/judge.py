"""The local judge, measured: is it a judge at all, what does a pair cost, and how far is it from the anchors.

1. Clear-cut pairs built from the AlpacaEval mirror, each judged in both orders: the reference against an empty
   reply, against the reference of another instruction, and against its own first sentence. A judge worth its
   name prefers the reference on (nearly) all of them, in either position.
2. Agreement with alpaca_eval's `longest` baseline annotator (always pick the longer output) on the same pairs
   and, given `--runs`, on the pairs a study judged (model outputs against the references, fine-tunes against
   the seed): how much of the verdict is length alone.
3. Seconds per judged pair (both orders, nothing cached), the judging prompts' token lengths, and the machine's
   matmul rate, so the figure can be compared across machines.

Anchors (alpaca_eval's evaluator leaderboard, human agreement): humans 65.7%, the sdft study's GPT-4 judge
(alpaca_eval_gpt4) 69.2%, "always the longer answer" 62.2%; no judge under 30B is listed there.

    python benchmarks/judge.py --data-dir ../shared/data [--judge local:MODEL] [--pairs 24] [--runs RESULTS_DIR]
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from bench.data import load_task_data, resolve_data_dir
from bench.generation.engine import Engine
from bench.evaluation.judge import DEFAULT_JUDGE, LOCAL_PREFIX, Judge, Preference, order_statistics
from bench.generation.models import load_model, resolve_dtype
from bench.machine import describe, machine
from bench.memory import keep_freed_memory
from generation import matmul_rates
from tasks.helpfulness import alpaca_eval


def first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]


def clear_cut_pairs(references: list[str], n: int) -> dict[str, list[tuple[int, str]]]:
    """Per kind, (instruction index, the worse reply) for the first n instructions that admit one."""
    truncated = [(i, first_sentence(r)) for i, r in enumerate(references) if len(first_sentence(r)) < 0.5 * len(r)]
    return {"empty reply": [(i, "") for i in range(n)],
            "another instruction's reference": [(i, references[(i + 1) % len(references)]) for i in range(n)],
            "first sentence only": truncated[:n]}


def reference_rates(prefs: list[Preference]) -> dict[str, float]:
    """How often the reference (the first output) wins: after averaging both orders, and in each position."""
    return {"averaged": sum(p.second < 0.5 for p in prefs) / len(prefs),
            "shown first": sum(p.orders[0] < 0.5 for p in prefs) / len(prefs),
            "shown second": sum(p.orders[1] < 0.5 for p in prefs) / len(prefs),
            "mean P(reference)": sum(1 - p.second for p in prefs) / len(prefs)}


def agreement_with_longest(first: list[str], second: list[str], prefs: list[Preference]) -> float:
    """alpaca_eval's own `longest` annotator on the same pairs, against the judge's averaged verdict (ties skipped)."""
    import pandas as pd
    from alpaca_eval.analyze import _get_longest_predictor

    longest = _get_longest_predictor(pd.DataFrame({"output_1": first, "output_2": second, "preference": 0}))
    pairs = [(p.second > 0.5, longest_pref == 2) for p, longest_pref in zip(prefs, longest["preference"])
             if p.second != 0.5]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else float("nan")


def judged_in_runs(results_dir: Path) -> list[tuple[str, list[str], list[str], list[Preference]]]:
    """Every judged pair a study stored: (label, first outputs, second outputs, the judge's preferences)."""
    found = []
    for predictions in sorted(results_dir.glob("runs/*/alpaca_eval/predictions.jsonl")):
        rows = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
        run = predictions.parent.parent.name
        found.append((f"{run} vs references", [r["reference"] for r in rows], [r["output"] for r in rows],
                      [Preference(r["score"], tuple(r["judge"]["orders"])) for r in rows]))
        if rows and "seed_output" in rows[0]:
            found.append((f"{run} vs seed", [r["seed_output"] for r in rows], [r["output"] for r in rows],
                          [Preference(r["scores"]["vs_seed"], tuple(r["judge_vs_seed"]["orders"])) for r in rows]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--judge", default=DEFAULT_JUDGE, help=f"local:MODEL (default {DEFAULT_JUDGE})")
    parser.add_argument("--pairs", type=int, default=24, help="pairs of each clear-cut kind")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--runs", help="a results directory whose judged runs to set against `longest`")
    args = parser.parse_args()
    keep_freed_memory()  # as the bench CLI does: the peers run under the same allocator settings
    if not args.judge.startswith(LOCAL_PREFIX):
        parser.error("--judge: this benchmark measures a local judge (local:MODEL)")
    dtype = resolve_dtype(args.dtype)
    print(f"machine: {describe(machine())}; judge {args.judge} in {dtype}; torch {torch.__version__}")
    rates = matmul_rates(getattr(torch, dtype), (64, 1536, 8960))
    print(f"matmul: {rates['square'] / 1e9:.1f} GFLOP/s (2048^3), {rates['decode'] / 1e9:.1f} GFLOP/s (64x1536x8960)")
    examples = load_task_data(alpaca_eval, resolve_data_dir(args.data_dir)).examples
    instructions, references = [ex.input for ex in examples], [ex.target for ex in examples]
    model = load_model(args.judge.removeprefix(LOCAL_PREFIX), None, dtype)
    judge = Judge(args.judge, "both", model, Engine(model), cache=None)
    print(f"judge fingerprint {model.fingerprint}; identity {json.dumps(judge.identity())}")

    all_first, all_second, all_prefs, seconds, pairs = [], [], [], 0.0, 0
    print("\n| clear-cut pairs (n) | reference wins, both orders averaged | shown first | shown second | "
          "mean P(reference) | verdict flips with order |\n|---|---|---|---|---|---|")
    for kind, worse in clear_cut_pairs(references, args.pairs).items():
        first, second = [references[i] for i, _ in worse], [w for _, w in worse]
        started = time.perf_counter()
        prefs = judge.preferences([instructions[i] for i, _ in worse], first, second)
        seconds, pairs = seconds + time.perf_counter() - started, pairs + len(worse)
        rate, order = reference_rates(prefs), order_statistics(prefs)
        print(f"| {kind} ({len(worse)}) | {100 * rate['averaged']:.1f}% | {100 * rate['shown first']:.1f}% | "
              f"{100 * rate['shown second']:.1f}% | {rate['mean P(reference)']:.3f} | {100 * order['flip_rate']:.1f}% |")
        all_first, all_second, all_prefs = all_first + first, all_second + second, all_prefs + prefs
    lengths = [len(model.tokenizer(p)["input_ids"]) for p in _judging_prompts(judge, instructions[:8], references[:8])]
    print(f"\nseconds per judged pair (both orders, nothing cached): {seconds / pairs:.2f} over {pairs} pairs; "
          f"judging prompts of {min(lengths)}-{max(lengths)} tokens (first 8 reference pairs)")
    print(f"first position preferred: {100 * order_statistics(all_prefs)['first_position_preference']:.1f}% of "
          f"judgments (50% = no position bias)")
    print(f"\nagreement with alpaca_eval's `longest` annotator: clear-cut pairs "
          f"{100 * agreement_with_longest(all_first, all_second, all_prefs):.1f}%")
    for label, first, second, prefs in judged_in_runs(Path(args.runs)) if args.runs else ():
        flips = order_statistics(prefs).get("flip_rate", float("nan"))
        print(f"  {label} ({len(prefs)} pairs): {100 * agreement_with_longest(first, second, prefs):.1f}% agree with "
              f"`longest`; verdict flips with order on {100 * flips:.1f}%")
    print("anchors (alpaca_eval's evaluator leaderboard, agreement with humans): humans 65.7%, alpaca_eval_gpt4 "
          "69.2%, longest 62.2%; a 1.5B judge is far weaker than any judge listed there")


def _judging_prompts(judge: Judge, instructions: list[str], outputs: list[str]) -> list[str]:
    """The prompts the judge reads, as its chat template renders them."""
    import pandas as pd
    from alpaca_eval.utils import make_prompts, prompt_to_chatml

    template = (judge.config.parents[1] / judge.settings["prompt_template"]).read_text()
    prompts, _ = make_prompts(pd.DataFrame({"instruction": instructions, "output_1": outputs, "output_2": outputs}),
                              template)
    return [judge.local.render(prompt_to_chatml(p)) for p in prompts]


if __name__ == "__main__":
    main()
