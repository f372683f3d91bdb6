from __future__ import annotations

import pytest

from bench.types import BenchError
from tasks import SUITES, TASKS, select_tasks


def test_tasks_by_name() -> None:
    assert list(TASKS) == ["gsm8k", "multiarith", "advbench_raw", "advbench_jailbreak", "harmbench", "humaneval",
                           "humaneval_chat", "openfunction", "mmlu", "truthfulqa_mc1", "truthfulqa_mc2", "arc_easy",
                           "arc_challenge", "winogrande", "hellaswag", "drift", "alpaca_eval", "ifeval"]
    for name, task in TASKS.items():
        assert task.name == name


def test_suites() -> None:
    assert SUITES == {
        "math": ("gsm8k", "multiarith"),
        "safety": ("advbench_raw", "advbench_jailbreak", "harmbench"),
        "code": ("humaneval",),
        "tooluse": ("openfunction",),
        "knowledge": ("mmlu", "truthfulqa_mc1", "truthfulqa_mc2", "arc_easy", "arc_challenge", "winogrande",
                      "hellaswag"),
        "drift": ("drift",),
        "helpfulness": ("alpaca_eval",),
        "instructions": ("ifeval",),
        "all": ("gsm8k", "multiarith", "advbench_raw", "advbench_jailbreak", "harmbench", "humaneval", "openfunction",
                "mmlu", "truthfulqa_mc1", "truthfulqa_mc2", "arc_easy", "arc_challenge", "winogrande", "hellaswag",
                "drift", "alpaca_eval", "ifeval"),
    }
    for suite, names in SUITES.items():
        if suite == "all":
            continue
        assert all(name in TASKS for name in names), suite
        assert {TASKS[name].capability for name in names} == {suite}


@pytest.mark.parametrize(
    ("suites", "tasks", "expected"),
    [
        ([], [], []),
        (["math"], [], ["gsm8k", "multiarith"]),
        (["safety", "math"], [], ["advbench_raw", "advbench_jailbreak", "harmbench", "gsm8k", "multiarith"]),
        (["math"], ["harmbench", "gsm8k"], ["gsm8k", "multiarith", "harmbench"]),
        ([], ["multiarith", "gsm8k", "multiarith"], ["multiarith", "gsm8k"]),
        (["math", "math"], [], ["gsm8k", "multiarith"]),
    ],
)
def test_select_tasks(suites: list[str], tasks: list[str], expected: list[str]) -> None:
    assert [task.name for task in select_tasks(suites, tasks)] == expected


def test_unknown_task_lists_choices() -> None:
    with pytest.raises(BenchError) as info:
        select_tasks(["math"], ["gsm8k", "gsm9k"])
    message = str(info.value)
    assert "'gsm9k'" in message
    assert all(name in message for name in TASKS)
    assert "\n" not in message


def test_unknown_suite_lists_choices() -> None:
    with pytest.raises(BenchError) as info:
        select_tasks(["coding"], [])
    message = str(info.value)
    assert "'coding'" in message
    assert "math" in message and "safety" in message
    assert "\n" not in message
