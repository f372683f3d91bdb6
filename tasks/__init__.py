"""The task registry: every task by name, and the suites that group them. Plain Python, no discovery."""
from __future__ import annotations

from bench.types import BenchError, HarnessTask, Task
from tasks.code import humaneval, humaneval_chat
from tasks.drift import drift
from tasks.helpfulness import alpaca_eval
from tasks.instructions import ifeval
from tasks.knowledge import arc_challenge, arc_easy, hellaswag, mmlu, truthfulqa_mc1, truthfulqa_mc2, winogrande
from tasks.math import gsm8k, multiarith
from tasks.safety import advbench, harmbench
from tasks.tooluse import openfunction

TASKS: dict[str, Task | HarnessTask] = {
    task.name: task
    for task in (
        gsm8k,
        multiarith,
        advbench("raw"),
        advbench("jailbreak"),
        harmbench,
        humaneval,
        humaneval_chat,
        openfunction,
        mmlu,
        truthfulqa_mc1,
        truthfulqa_mc2,
        arc_easy,
        arc_challenge,
        winogrande,
        hellaswag,
        drift,
        alpaca_eval,
        ifeval,
    )
}

SUITES: dict[str, tuple[str, ...]] = {
    "math": ("gsm8k", "multiarith"),
    "safety": ("advbench_raw", "advbench_jailbreak", "harmbench"),
    "code": ("humaneval",),
    "tooluse": ("openfunction",),
    "knowledge": ("mmlu", "truthfulqa_mc1", "truthfulqa_mc2", "arc_easy", "arc_challenge", "winogrande", "hellaswag"),
    "drift": ("drift",),
    "helpfulness": ("alpaca_eval",),
    "instructions": ("ifeval",),
}
SUITES["all"] = tuple(name for names in SUITES.values() for name in names)


def select_tasks(suites: list[str], tasks: list[str]) -> list[Task | HarnessTask]:
    """The suites' tasks then the named tasks, each once, in that order; an unknown name fails listing the choices."""
    for suite in suites:
        if suite not in SUITES:
            raise BenchError(f"unknown suite {suite!r}; choose from: {', '.join(SUITES)}")
    for name in tasks:
        if name not in TASKS:
            raise BenchError(f"unknown task {name!r}; choose from: {', '.join(TASKS)}")
    names = [name for suite in suites for name in SUITES[suite]] + list(tasks)
    return [TASKS[name] for name in dict.fromkeys(names)]
