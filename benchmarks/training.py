"""Training speed against TRL, side by side in one run: SFT (fine_tune/sft.py vs TRL's SFTTrainer), GKD
(fine_tune/gkd.py vs trl.experimental.gkd.GKDTrainer) and on-policy self-distillation (fine_tune/onpolicy_sd.py vs
trl.experimental.sdft.SDFTTrainer).

SFT:

Same seed (the embedded model), same first N training examples of the task as prompt/completion pairs through the
chat template, same LoRA and optimisation (the study's by default: r 8, alpha 16, dropout 0.1, q_proj and v_proj,
lr 1e-4 cosine, batch 2 x gradient accumulation 4; or a profile's `[sft]` table), one epoch, same dtype.
Tokens/s counts every trained token (prompt and response) of every example; each trainer runs `--repeats` times in
this process and the median is printed, with the ratio.

    .venv/bin/python benchmarks/training.py [--examples 64] [--task gsm8k] [--profile tiny] [--repeats 1]
        [--dtype auto|float32|bfloat16]

`--profile tiny` takes the tiny study's task, training examples and LoRA config (one epoch).

GKD and on-policy self-distillation (`--methods gkd,onpolicy_sd`): the same first `--distil-examples` training
examples, LoRA and optimisation, one epoch, every micro-batch on-policy (lambda 1, so both sides generate for every
example), the same teacher (gkd: the embedded model in the run's dtype; onpolicy_sd: the EMA teacher with the
reference answer in its context, full-vocabulary forward KL, one sample per prompt, no importance-sampling clip),
the same sampling temperature and token budget. Each trainer runs in its own process, so its peak memory (max RSS)
is its own; printed: wall time (model loading included), trained tokens/s (prompt and completion of every trained
sequence over the wall time), generated tokens/s (over the time spent generating) and peak memory.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.data import resolve_data_dir
from bench.generation.models import resolve_dtype, resolve_model_dir
from bench.study import load_profile
from fine_tune.data import load_train_examples, tokenize
from fine_tune.common import TrainJob, config_from_dict
from fine_tune.sft import SFTConfig, train_sft


def ours(task: str, examples, config: SFTConfig, dtype: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        train_sft(TrainJob("sft", task, "default", Path(out), examples, "", dtype=dtype), config)
        return time.perf_counter() - started


def trl(examples, config: SFTConfig, dtype: str) -> float:
    lora, opt = config.lora, config.optimization
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    model_dir = resolve_model_dir("default")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = Dataset.from_list([{"prompt": list(ex.messages), "completion": [{"role": "assistant",
                                                                                "content": ex.response}]}
                                 for ex in examples])
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        args = TRLConfig(output_dir=out, num_train_epochs=1, learning_rate=opt.learning_rate,
                         lr_scheduler_type=opt.scheduler, per_device_train_batch_size=opt.batch_size,
                         gradient_accumulation_steps=opt.gradient_accumulation, bf16=dtype == "bfloat16",
                         report_to=[], save_strategy="no", logging_steps=1, use_cpu=not torch.cuda.is_available(),
                         max_length=opt.max_length, seed=opt.training_seed)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                    target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
        trainer.train()
        return time.perf_counter() - started


DISTIL_TRL = {"gkd": "TRL GKDTrainer", "onpolicy_sd": "TRL SDFTTrainer"}


def distil_ours(method: str, task: str, examples, config, dtype: str) -> dict:
    from fine_tune.gkd import train_gkd
    from fine_tune.onpolicy_sd import train_onpolicy_sd

    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        job = TrainJob(method, task, "default", Path(out), examples, "", dtype=dtype,
                       teacher="default" if method == "gkd" else None)
        record = (train_gkd if method == "gkd" else train_onpolicy_sd)(job, config)
        seconds = time.perf_counter() - started
    totals = record["tokens_this_run"]
    return {"seconds": seconds, "trained_tokens": totals["trained_tokens"],
            "generated_tokens": totals["generated_tokens"], "generation_seconds": record["seconds_by_part"]["generation"]}


class GenerationMeter:
    """Wraps a TRL trainer's generation call: the completion tokens it returns and the seconds it takes."""

    def __init__(self, generate, count):
        self.generate, self.count, self.tokens, self.seconds = generate, count, 0, 0.0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        out = self.generate(*args, **kwargs)
        self.seconds += time.perf_counter() - started
        self.tokens += self.count(out)
        return out


def distil_trl(method: str, examples, config, dtype: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fine_tune.onpolicy_sd import DEMONSTRATION

    model_dir = resolve_model_dir("default")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    opt = config.optimization
    lora = LoraConfig(r=config.lora.rank, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=list(config.lora.target_modules), task_type="CAUSAL_LM")
    common = dict(num_train_epochs=1, learning_rate=opt.learning_rate, lr_scheduler_type=opt.scheduler,
                  per_device_train_batch_size=opt.batch_size, gradient_accumulation_steps=opt.gradient_accumulation,
                  bf16=dtype == "bfloat16", report_to=[], save_strategy="no", logging_steps=1,
                  use_cpu=not torch.cuda.is_available(), seed=opt.training_seed, temperature=config.temperature)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if method == "gkd":
            from trl.experimental.gkd import GKDConfig, GKDTrainer

            teacher = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
            dataset = Dataset.from_list([{"messages": [*ex.messages, {"role": "assistant", "content": ex.response}]}
                                         for ex in examples])
            args = GKDConfig(output_dir=out, lmbda=1.0, beta=config.beta, max_new_tokens=config.max_new_tokens,
                             max_length=opt.max_length, **common)
            trainer = GKDTrainer(model=model, teacher_model=teacher, args=args, train_dataset=dataset,
                                 processing_class=tokenizer, peft_config=lora)
            meter = GenerationMeter(trainer.generate_on_policy_outputs, lambda out: int((out[2] != -100).sum()))
            trainer.generate_on_policy_outputs = meter
        else:
            from trl.experimental.sdft import SDFTConfig, SDFTTrainer

            context = DEMONSTRATION.split("{reference}")
            dataset = Dataset.from_list([{"prompt": list(ex.messages), "privileged_context":
                                          context[0].removeprefix("{instruction}\n\n") + ex.reference + context[1]}
                                         for ex in examples])
            args = SDFTConfig(output_dir=out, num_generations=1, max_completion_length=config.max_new_tokens,
                              teacher_model_kind=config.teacher_kind, teacher_update_rate=config.ema_rate,
                              distillation_mode="full_logits", distillation_alpha=0.0, distillation_is_clip=None,
                              max_prompt_length=None, **common)
            trainer = SDFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                  peft_config=lora)
            meter = GenerationMeter(trainer._generate, lambda out: sum(len(c) for c in out[1]))
            trainer._generate = meter
        trainer.train()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "generated_tokens": meter.tokens, "generation_seconds": meter.seconds}


def worker(args) -> None:
    """One trainer in this process; prints its figures as one JSON line."""
    import json
    import resource

    from fine_tune.gkd import GKDConfig
    from fine_tune.onpolicy_sd import OnPolicySDConfig

    method, side = args.worker.split(":")
    profile = load_profile(args.profile or "tiny")
    cls = GKDConfig if method == "gkd" else OnPolicySDConfig
    config = config_from_dict(profile.train_config(method), f"profile {profile.name}", cls)
    config = config_from_dict({"epochs": 1, "max_new_tokens": args.max_new_tokens or config.max_new_tokens,
                               **({"lmbda": 1.0} if method == "gkd" else {})}, "benchmark", cls, config)
    examples, _ = load_train_examples(profile.train_task, resolve_data_dir(args.data_dir), args.distil_examples)
    dtype = resolve_dtype(args.dtype)
    result = distil_ours(method, profile.train_task, examples, config, dtype) if side == "ours" else \
        distil_trl(method, examples, config, dtype)
    result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["config"] = {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
                        "examples": len(examples), "dtype": dtype}
    print("RESULT " + json.dumps(result), flush=True)


def distillation(args, method: str) -> None:
    """Ours and TRL's trainer of `method`, each in a subprocess, side by side; TRL's trained tokens are ours'
    count of the same sequences' prompts plus its generated completions."""
    import json
    import subprocess
    import sys

    results = {}
    for side in ("ours", "trl"):
        command = [sys.executable, __file__, "--worker", f"{method}:{side}", "--distil-examples",
                   str(args.distil_examples), "--dtype", args.dtype]
        command += ["--data-dir", args.data_dir] if args.data_dir else []
        command += ["--profile", args.profile] if args.profile else []
        command += ["--max-new-tokens", str(args.max_new_tokens)] if args.max_new_tokens else []
        run = subprocess.run(command, capture_output=True, text=True)
        line = next((l for l in run.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{method} {side} failed:\n{run.stderr[-3000:]}")
        results[side] = json.loads(line.removeprefix("RESULT "))
    ours, trl = results["ours"], results["trl"]
    prompt_tokens = ours["trained_tokens"] - ours["generated_tokens"]
    trl["trained_tokens"] = prompt_tokens + trl["generated_tokens"]
    names = {"ours": f"forgetbench {method}", "trl": DISTIL_TRL[method]}
    for side, r in results.items():
        print(f"{names[side]:24s} wall {r['seconds']:6.1f} s  trained {r['trained_tokens'] / r['seconds']:6.1f} tok/s  "
              f"generated {r['generated_tokens']:5d} tokens at {r['generated_tokens'] / r['generation_seconds']:6.1f} "
              f"tok/s  peak {r['peak_memory_mb']:6.0f} MiB", flush=True)
    print(f"ratio forgetbench / TRL ({method}, {ours['config']}): wall {trl['seconds'] / ours['seconds']:.2f}x faster, "
          f"trained tok/s {(ours['trained_tokens'] / ours['seconds']) / (trl['trained_tokens'] / trl['seconds']):.2f}x, "
          f"generated tok/s {(ours['generated_tokens'] / ours['generation_seconds']) / (trl['generated_tokens'] / trl['generation_seconds']):.2f}x, "
          f"peak memory {ours['peak_memory_mb'] / trl['peak_memory_mb']:.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--examples", type=int)
    parser.add_argument("--task", default="gsm8k")
    parser.add_argument("--profile", help="take the task, examples and [sft] config of this profile")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--methods", default="sft,gkd,onpolicy_sd", help="comma-separated: sft, gkd, onpolicy_sd")
    parser.add_argument("--distil-examples", type=int, default=32, help="training examples for gkd and onpolicy_sd")
    parser.add_argument("--max-new-tokens", type=int, help="gkd and onpolicy_sd: tokens per sample (default: the "
                                                          "profile's, else the trainer's)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from bench.memory import keep_freed_memory

    keep_freed_memory()  # as the bench CLI does: the peers run under the same allocator settings
    if args.worker:
        return worker(args)
    from bench.machine import describe, machine

    print(f"machine: {describe(machine())}", flush=True)
    methods = [m.strip() for m in args.methods.split(",")]
    for method in methods:
        if method in DISTIL_TRL:
            distillation(args, method)
    if "sft" not in methods:
        return
    dtype = resolve_dtype(args.dtype)
    task, limit, config = args.task, args.examples or 64, config_from_dict({"epochs": 1}, "benchmark", SFTConfig)
    if args.profile:
        profile = load_profile(args.profile)
        task, limit = profile.train_task, args.examples or profile.train_limit
        config = config_from_dict({**profile.sft, "epochs": 1}, f"profile {profile.name} [sft]", SFTConfig)
    examples, _ = load_train_examples(task, resolve_data_dir(args.data_dir), limit)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir("default"))
    tokens = sum(len(tokenize(tokenizer, ex.messages, ex.response, config.optimization.max_length)["input_ids"]) for ex in examples)
    rates = {}
    trainers = {"forgetbench (Trainer, length-grouped)": lambda: ours(task, examples, config, dtype),
                "TRL SFTTrainer (defaults)": lambda: trl(examples, config, dtype)}
    for name, fn in trainers.items():
        seconds = statistics.median(fn() for _ in range(args.repeats))
        rates[name] = tokens / seconds
        print(f"{name:40s} {rates[name]:7.1f} tokens/s  ({seconds:.1f} s, {tokens} tokens, {dtype})", flush=True)
    ours_rate, trl_rate = rates.values()
    print(f"ratio forgetbench / TRL: {ours_rate / trl_rate:.2f}x ({len(examples)} {task} examples, "
          f"median of {args.repeats}; "
          f"both times include loading the model)")


if __name__ == "__main__":
    main()
