"""SDFT (methods.md section 1): the seed model rewrites every training response in its own words (distil), a
rewrite that gives itself away or is no longer correct is replaced by the original response (filter), then SFT on
the result with exactly the SFT settings. The rewrites go through the engine and its cache; the per-example record
(rewrite, accepted, why not) is written to distilled.jsonl beside the adapter.

The distillation prompts and the filter are the sdft repository's. For gsm8k the model's turn is pre-filled with
"Great! Let's think step by step. " and the rewrite is what the model writes after it: the prefix is not part of
the training target (the training prompt does not end with it either).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from typing import Any

from bench.distributed import gather, unshard, world
from bench.generation.cache import Cache
from bench.generation.engine import Engine, progress_bar
from bench.generation.models import load_model
from bench.store import write_jsonl
from bench.types import GenerationConfig, Message
from fine_tune.common import TrainJob
from fine_tune.data import TrainExample
from fine_tune.sft import SFTConfig, train_sft
from tasks.math import last_integer
from tasks.tooluse import exact_match

DISTILL_REFER = ("Below are an instruction that describes a task along with a reference answer. "
                 "Refer to the reference answer and write your own response.")
DISTILL_USING = ("Below are an instruction that describes a task along with a reference answer. "
                 "Using the reference answer as a guide, write your own response.")
DISTILL_USER = "### Instruction:\n{instruction}\n\n### Reference Answer:\n{reference}\n\n### Response:\n"
DISTILL_MATH = ("You are an expert in math. Below are a math question and its reference answer. "
                "Refer to the reference answer and write a response that appropriately answers the question.")
MATH_PREFIX = "Great! Let's think step by step. "
GIVEAWAYS = ("reference answer", "your response", "my response", "your own response", "now it's your turn")
DISTILL_GENERATION = GenerationConfig(max_new_tokens=512)


def distill_messages(task: str, example: TrainExample) -> list[Message]:
    if task == "gsm8k":
        return [{"role": "system", "content": DISTILL_MATH},
                {"role": "user", "content": f"{example.instruction}\n\n{example.reference}"},
                {"role": "assistant", "content": MATH_PREFIX}]
    system = DISTILL_REFER if task == "openfunction" else DISTILL_USING
    return [{"role": "system", "content": system},
            {"role": "user", "content": DISTILL_USER.format(instruction=example.instruction,
                                                             reference=example.reference)}]


def rejection(task: str, rewrite: str, reference: str) -> str | None:
    """Why a rewrite is rejected, or None when it is kept: the sdft filter's phrases, then the task's check."""
    lowered = rewrite.lower()
    for phrase in GIVEAWAYS:
        if phrase in lowered:
            return f"contains {phrase!r}"
    if rewrite.startswith("Your turn"):
        return "starts with 'Your turn'"
    if not rewrite.strip():
        return "empty"
    if task == "gsm8k":
        got, want = last_integer(rewrite), last_integer(reference)
        if got is None or got != want:
            return f"last integer {got} != {want}"
    if task == "openfunction" and not exact_match(rewrite, reference):
        return "the reference call is not in the rewrite"
    return None


def distill_rewrites(model: Any, engine: Any, task: str, examples: list[TrainExample],
                     progress=None) -> tuple[list[TrainExample], list[dict[str, Any]]]:
    """The examples with each accepted rewrite as the response (a rejected one keeps the original), and one
    record per example: the rewrite, whether it was accepted, and why not. Under a launcher each process writes
    its shard of the rewrites and every process gets them all."""
    w = world()
    prompts = [model.render(distill_messages(task, ex), ex.template) for ex in examples]
    generations = unshard(gather(w, engine.generate(w.shard(prompts), DISTILL_GENERATION, progress,
                                                    label=f"distil {task}")))
    distilled, records = [], []
    for ex, gen in zip(examples, generations):
        rewrite = gen.text.strip()
        reason = rejection(task, rewrite, ex.reference)
        distilled.append(replace(ex, response=ex.response if reason else rewrite))
        records.append({"id": ex.id, "instruction": ex.instruction, "reference": ex.reference, "rewrite": rewrite,
                        "finish": gen.finish, "accepted": reason is None, "reason": reason})
    return distilled, records


def acceptance(records: list[dict[str, Any]]) -> dict[str, Any]:
    accepted = sum(r["accepted"] for r in records)
    reasons = Counter("last integer differs" if r["reason"].startswith("last integer") else r["reason"]
                      for r in records if not r["accepted"])
    return {"examples": len(records), "accepted": accepted, "rate": accepted / len(records) if records else 0.0,
            "rejected_by": dict(reasons.most_common())}


def train_sdft(job: TrainJob, config: SFTConfig) -> dict[str, Any]:
    """Distil, filter, then SFT with `config`; returns SFT's train.json record with the distillation's statistics."""
    started = time.perf_counter()
    model = load_model(job.model, None, job.dtype, job.prompt_format)
    engine = Engine(model, Cache(job.results_dir / "cache" / "generations.sqlite"))
    with progress_bar(world().main) as progress:
        distilled, records = distill_rewrites(model, engine, job.task, job.examples, progress)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    if world().main:
        write_jsonl(job.out_dir / "distilled.jsonl", records)
    stats = {**acceptance(records), "seconds": round(time.perf_counter() - started, 2),
             "generation": engine.settings(DISTILL_GENERATION)}
    del model, engine
    return {**train_sft(job, config, distilled), "distillation": stats}
