"""Distribution drift on held-out general instructions: the first AlpacaEval instructions in the Alpaca template,
the seed's greedy responses (256 new tokens at most), the model's KL from the seed (score) and NLL along them."""
from __future__ import annotations

from typing import Any

from bench.types import ALPACA_TEMPLATE, Example, GenerationConfig, Task
from tasks.alpaca import alpaca_messages


def alpaca_eval_example(record: dict[str, Any], index: int) -> Example:
    return Example(id=str(index), input=record["instruction"], target=record.get("output"))


drift = Task(name="drift", capability="drift", dataset="alpaca_eval/eval.jsonl", to_example=alpaca_eval_example,
             to_prompt=alpaca_messages, template=ALPACA_TEMPLATE, generation=GenerationConfig(max_new_tokens=256),
             metric="kl", drift=True, description="mean per-token KL(seed || model) in nats; NLL beside it")
