"""AlpacaEval: is the model still helpful? Judged by alpaca_eval itself, so that our win rates are its win rates.

The 805 AlpacaEval instructions go through the Alpaca template (the sdft study's prompt), greedy. A judge
(bench/evaluation/judge.py: one of alpaca_eval's API annotators, or our local judge model) compares each output with the
text-davinci-003 reference of the mirror, and, for a fine-tuned model, with its seed's own output on the same
instruction: that head-to-head (50% = no change) reads forgetting even where a small seed rarely beats the
references.

Token budget: 512 new tokens holds 98.8% of the references whole (SmolLM2 tokens: median 86, 95th percentile
317, longest 957), so an output is not cut much shorter than the answer it is judged against.
"""
from __future__ import annotations

from typing import Any

from bench.types import ALPACA_TEMPLATE, Example, GenerationConfig, HubSource, Task
from tasks.alpaca import alpaca_messages

ALPACA_EVAL_GENERATION = GenerationConfig(max_new_tokens=512)


def alpaca_eval_example(record: dict[str, Any], index: int) -> Example:
    """The instruction, with the reference output as target; a record without either is an error."""
    instruction, reference = record["instruction"], record["output"]
    if not isinstance(instruction, str) or not isinstance(reference, str) or not instruction.strip():
        raise ValueError("'instruction' and 'output' must be strings, the instruction not empty")
    return Example(id=f"alpaca_eval-{index}", input=instruction, target=reference)


alpaca_eval = Task(
    name="alpaca_eval",
    capability="helpfulness",
    dataset="alpaca_eval/eval.jsonl",
    to_example=alpaca_eval_example,
    to_prompt=alpaca_messages,
    template=ALPACA_TEMPLATE,
    judged=True,
    generation=ALPACA_EVAL_GENERATION,
    metric="win_rate",
    # The Hub repository's loader is a script, which datasets no longer runs: its JSON file is read directly.
    hub=HubSource("json", split="train", data_files="hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json"),
    description="AlpacaEval (805 instructions), win rate against text-davinci-003 and head to head against the seed.",
)
