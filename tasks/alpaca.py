"""The Alpaca template: the sdft study's prompt format for every task but math (methods.md section 2)."""
from __future__ import annotations

from bench.types import Example, Message

ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
ALPACA_USER = "### Instruction:\n{instruction}\n\n### Response:\n"


def alpaca_messages(example: Example) -> list[Message]:
    return [
        {"role": "system", "content": ALPACA_SYSTEM},
        {"role": "user", "content": ALPACA_USER.format(instruction=example.input)},
    ]
