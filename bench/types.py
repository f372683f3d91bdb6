"""The small shared contract: what a task is, what it yields, how it is scored."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
Prompt = list[Message] | str  # messages go through the chat template; a string is sent as is (completion prompts)
ALPACA_TEMPLATE = "alpaca"  # a template whose messages are the study's Alpaca template (bench.generation.models.is_plain)


class BenchError(Exception):
    """A user-facing error: the CLI prints its one-line message, without a traceback, and exits non-zero."""


@dataclass(frozen=True)
class Example:
    """One dataset item. `id` is stable across runs, so runs can be paired example by example."""

    id: str
    input: str
    target: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """What a pure scoring function returns: the value, the answer it extracted, and why."""

    value: float
    answer: str | None = None
    explanation: str | None = None
    others: dict[str, float] = field(default_factory=dict)  # secondary scores, each averaged into metrics.json
    details: dict[str, Any] = field(default_factory=dict)  # what a task's `aggregate` reads (kept in the row)


@dataclass(frozen=True)
class GenerationConfig:
    """Greedy by default (temperature 0); part of every cache key, so any change here means new generations.
    With a temperature, each (prompt, sample) draws from its own generator seeded from `seed`, the model, the
    prompt and the sample's index, so samples do not depend on the batch they ran in."""

    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


@dataclass(frozen=True)
class HubSource:
    """Where a dataset lives on the Hugging Face Hub, for users who are online and have no mirror.

    `rename` maps the Hub's field names to the mirror's, so one `to_example` reads both.
    """

    path: str
    split: str
    name: str | None = None
    revision: str | None = None
    rename: dict[str, str] = field(default_factory=dict)
    data_files: str | None = None  # for a repository read as plain files (`path="json"`), not through a script


@dataclass(frozen=True)
class Task:
    """A task is data plus two pure functions: how an example becomes a prompt, how an output is scored.

    `dataset` is a path relative to the data directory (`gsm8k/test.jsonl`), in the layout of the
    offline mirror; `to_example(record, index)` turns one JSON line into an `Example`. A code task gives
    `program` instead of `score`: the pure function that turns an output into a program with its tests,
    which the runner executes in the sandbox; it passes or it does not. A `drift` task scores no output: the
    runner measures how far the model moved from its seed along the seed's own responses (bench/evaluation/drift.py). A
    `judged` task scores no output alone either: an alpaca_eval judge compares it with the example's reference
    output and, for a fine-tuned model, with its seed's output (bench/evaluation/judge.py).
    """

    name: str
    capability: str
    dataset: str
    to_example: Callable[[dict[str, Any], int], Example]
    to_prompt: Callable[[Example], Prompt]
    generation: GenerationConfig
    metric: str
    score: Callable[[str, Example], Score] | None = None
    program: Callable[[str, Example], str] | None = None
    drift: bool = False  # instead of scoring: the seed's responses, and the model's NLL and KL along them
    judged: bool = False  # instead of scoring: pairwise preferences of a judge against the reference and the seed
    # metrics that are not a mean over examples (IFEval's pooled instruction-level accuracy), from every Score:
    # a dict merged into metrics.json, its "others" into the task's others
    aggregate: Callable[[list[Score]], dict[str, Any]] | None = None
    template: str = "chat"  # or ALPACA_TEMPLATE: sent as plain text in the "study" prompt format
    hub: HubSource | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if sum((self.score is not None, self.program is not None, self.drift, self.judged)) != 1:
            raise ValueError(f"task {self.name}: give exactly one of score, program, drift and judged")


@dataclass(frozen=True)
class HarnessTask:
    """A task that lm-evaluation-harness runs and scores, so that our numbers are its numbers.

    `builtin` names lm-eval's own task configs (YAML paths under lm_eval/tasks; the leaf tasks of a group such as
    mmlu), whose prompts, few-shot settings and metrics are used unchanged. Offline, each leaf reads mirror files instead of the Hub:
    `files(leaf)` maps lm-eval's split names to paths relative to the data directory, and `to_doc` (a dotted
    name, since lm-eval's configs refer to functions by name) turns one mirror record into the document the
    built-in task reads from the Hub. A task without `files` runs from the Hub only.
    """

    name: str
    capability: str
    builtin: tuple[str, ...]
    metric: str = "acc"
    files: Callable[[str], dict[str, str]] | None = None
    to_doc: str | None = None
    description: str = ""
