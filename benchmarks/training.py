"""SFT speed: our trainer (fine_tune/sft.py) against TRL's SFTTrainer with its default settings, side by side.

Same seed (the embedded model), same first N training examples of the task as prompt/completion pairs through the
chat template, same LoRA and optimisation (the study's by default: r 8, alpha 16, dropout 0.1, q_proj and v_proj,
lr 1e-4 cosine, batch 2 x gradient accumulation 4; or a profile's `[sft]` table), one epoch, same dtype.
Tokens/s counts every trained token (prompt and response) of every example; each trainer runs `--repeats` times in
this process and the median is printed, with the ratio.

    .venv/bin/python benchmarks/training.py [--examples 64] [--task gsm8k] [--profile tiny] [--repeats 1]
        [--dtype auto|float32|bfloat16]

`--profile tiny` takes the tiny study's task, training examples and LoRA config (one epoch).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.data import resolve_data_dir
from bench.models import resolve_dtype, resolve_model_dir
from bench.profile import load_profile
from fine_tune.data import load_train_examples, tokenize
from fine_tune.sft import SFTConfig, config_from_dict, train_sft


def ours(task: str, examples, config: SFTConfig, dtype: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        train_sft("default", task, examples, config, Path(out), dtype)
        return time.perf_counter() - started


def trl(examples, config: SFTConfig, dtype: str) -> float:
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
        args = TRLConfig(output_dir=out, num_train_epochs=1, learning_rate=config.learning_rate,
                         lr_scheduler_type=config.scheduler, per_device_train_batch_size=config.batch_size,
                         gradient_accumulation_steps=config.gradient_accumulation, bf16=dtype == "bfloat16",
                         report_to=[], save_strategy="no", logging_steps=1, use_cpu=not torch.cuda.is_available(),
                         max_length=config.max_length, seed=config.seed)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                                    target_modules=list(config.target_modules), task_type="CAUSAL_LM"))
        trainer.train()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--examples", type=int)
    parser.add_argument("--task", default="gsm8k")
    parser.add_argument("--profile", help="take the task, examples and [sft] config of this profile")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    dtype = resolve_dtype(args.dtype)
    task, limit, config = args.task, args.examples or 64, SFTConfig(epochs=1)
    if args.profile:
        profile = load_profile(args.profile)
        task, limit = profile.train_task, args.examples or profile.train_limit
        config = replace(config_from_dict(profile.sft, f"profile {profile.name} [sft]"), epochs=1)
    examples, _ = load_train_examples(task, resolve_data_dir(args.data_dir), limit)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir("default"))
    tokens = sum(len(tokenize(tokenizer, ex.messages, ex.response, config.max_length)["input_ids"]) for ex in examples)
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
