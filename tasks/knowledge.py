"""General knowledge through lm-evaluation-harness: its tasks, prompts and metrics; from us only where the data is.

Each `*_doc` function turns one record of the offline mirror into the document lm-eval's built-in task reads from
the Hub, field for field, so the built-in prompt renders the same text. lm-eval runs them 0-shot, as the sdft
study did (`lm_eval --tasks mmlu,truthfulqa,ai2_arc,hellaswag,winogrande`).
"""
from __future__ import annotations

from typing import Any

from bench.evaluation.lmeval import builtin_dir
from bench.types import HarnessTask

LETTERS = ("A", "B", "C", "D")


def arc_doc(record: dict[str, Any]) -> dict[str, Any]:
    """AI2's layout (`question.stem`, `question.choices[{text,label}]`) -> allenai/ai2_arc's."""
    choices = record["question"]["choices"]
    return {"id": record["id"], "question": record["question"]["stem"],
            "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
            "answerKey": record["answerKey"]}


def truthfulqa_doc(record: dict[str, Any]) -> dict[str, Any]:
    """mc_task.json's answer -> 0/1 maps -> truthfulqa/truthful_qa's `{choices, labels}` lists, order kept."""
    return {"question": record["question"],
            **{key: {"choices": list(record[key]), "labels": [int(v) for v in record[key].values()]}
               for key in ("mc1_targets", "mc2_targets")}}


def winogrande_doc(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record[key] for key in ("sentence", "option1", "option2", "answer")}


def mmlu_doc(record: dict[str, Any]) -> dict[str, Any]:
    """Columns A-D and a letter -> cais/mmlu's `choices` list and answer index."""
    return {"question": record["question"], "choices": [record[letter] for letter in LETTERS],
            "answer": LETTERS.index(record["answer"])}


def mmlu_subjects() -> tuple[str, ...]:
    """lm-eval's 57 MMLU leaf tasks (their YAML files), found in its package without importing it."""
    return tuple(sorted(f"mmlu/default/{p.name}" for p in (builtin_dir() / "mmlu" / "default").glob("mmlu_*.yaml")))


def mmlu_files(leaf: str) -> dict[str, str]:
    subject = leaf.removeprefix("mmlu_")
    return {"test": f"mmlu/test/{subject}.jsonl", "dev": f"mmlu/dev/{subject}.jsonl"}


mmlu = HarnessTask("mmlu", "knowledge", mmlu_subjects(), files=mmlu_files, to_doc="tasks.knowledge.mmlu_doc",
                   description="57 subjects; the mean is over all questions (lm-eval's mmlu group, weighted by size)")
truthfulqa_mc1 = HarnessTask("truthfulqa_mc1", "knowledge", ("truthfulqa/truthfulqa_mc1.yaml",),
                             files=lambda leaf: {"validation": "truthfulqa/v1/mc.jsonl"},
                             to_doc="tasks.knowledge.truthfulqa_doc")
truthfulqa_mc2 = HarnessTask("truthfulqa_mc2", "knowledge", ("truthfulqa/truthfulqa_mc2.yaml",),
                             files=lambda leaf: {"validation": "truthfulqa/v1/mc.jsonl"},
                             to_doc="tasks.knowledge.truthfulqa_doc",
                             description="per question: the probability mass on the true answers")
arc_easy = HarnessTask("arc_easy", "knowledge", ("arc/arc_easy.yaml",), files=lambda leaf: {"test": "arc_easy/test.jsonl"},
                       to_doc="tasks.knowledge.arc_doc")
arc_challenge = HarnessTask("arc_challenge", "knowledge", ("arc/arc_challenge.yaml",),
                            files=lambda leaf: {"test": "arc_challenge/test.jsonl"}, to_doc="tasks.knowledge.arc_doc")
winogrande = HarnessTask("winogrande", "knowledge", ("winogrande/default.yaml",),
                         files=lambda leaf: {"validation": "winogrande/validation.jsonl"},
                         to_doc="tasks.knowledge.winogrande_doc")
hellaswag = HarnessTask("hellaswag", "knowledge", ("hellaswag/hellaswag.yaml",), description="not in the mirror: Hub only")
