"""Generation speed: our engine against lm-eval's `hf` backend and the sdft repository's batch-1 `generate`.

All in one process, on the same 64 GSM8K prompts (the math system prompt, the embedded model's chat template),
greedy, 128 new tokens, stop at EOS. Prints tokens/s (generated tokens, EOS included, padding excluded), the
ratio to the best lm-eval figure, and each method's GSM8K accuracy on those prompts.

    .venv/bin/python benchmarks/generation.py [--data-dir DIR] [--repeats 3] [--batch1-prompts 8]

Batch-1 generation is timed on the first --batch1-prompts prompts only (it is ~10x slower) and its
tokens/s is quoted from those. Medians over --repeats; quote ratios, machines vary.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.data import load_task_data, resolve_data_dir
from bench.engine import Engine
from bench.models import load_model
from bench.types import GenerationConfig
from tasks.math import gsm8k, score_math

N_PROMPTS = 64
MAX_NEW_TOKENS = 128


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return result, statistics.median(times)


def hf_batch1(model, prompts: list[str]) -> list[tuple[str, int]]:
    """What the sdft repository's evaluation does: one prompt at a time through `generate`."""
    tokenizer, out = model.tokenizer, []
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            gen = model.model.generate(**ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)[0, ids.input_ids.shape[1]:].tolist()
            out.append((tokenizer.decode(gen, skip_special_tokens=True), len(gen)))
    return out


def lm_eval_generate(model, prompts: list[str], batch_size: int, dtype: str) -> list[tuple[str, int]]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model.model, tokenizer=model.tokenizer, batch_size=batch_size, dtype=dtype, device="cpu")
    eos = model.tokenizer.eos_token
    requests = [Instance(request_type="generate_until", doc={}, idx=i,
                         arguments=(p, {"until": [eos], "max_gen_toks": MAX_NEW_TOKENS, "do_sample": False}))
                for i, p in enumerate(prompts)]
    texts = lm.generate_until(requests, disable_tqdm=True)
    # lm-eval returns text only: count its tokens, plus the EOS it stopped on when it did not hit the budget.
    counts = [len(model.tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
    return [(t, min(n + 1, MAX_NEW_TOKENS)) for t, n in zip(texts, counts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch1-prompts", type=int, default=8)
    parser.add_argument("--batch-sizes", default="16,32,64", help="lm-eval batch sizes")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    examples = load_task_data(gsm8k, resolve_data_dir(args.data_dir), N_PROMPTS).examples
    config = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS)
    rows = []

    def record(method: str, dtype: str, batch: int | str, outputs, seconds: float, n_examples: int):
        tokens = sum(n for _, n in outputs)
        accuracy = sum(score_math(text, ex).value for (text, _), ex in zip(outputs, examples)) / len(outputs)
        rows.append({"method": method, "dtype": dtype, "batch": batch, "tok_s": tokens / seconds,
                     "seconds": seconds, "examples": n_examples, "accuracy": accuracy, "outputs": outputs})
        print(f"{method:>10} {dtype:>9} batch {batch!s:>3}: {tokens / seconds:7.1f} tok/s  "
              f"({seconds:.1f} s, {n_examples} prompts, accuracy {accuracy:.3f})", flush=True)

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    for dtype in args.dtypes.split(","):
        model = load_model("default", dtype=dtype)
        prompts = [model.render(gsm8k.to_prompt(ex)) for ex in examples]
        engine = Engine(model, cache=None, batch_size=N_PROMPTS)
        engine.generate(prompts[:2], GenerationConfig(max_new_tokens=4))  # warm-up
        gens, seconds = timed(lambda: engine.generate(prompts, config), args.repeats)
        record("forgetbench", dtype, N_PROMPTS, [(g.text, g.n_tokens) for g in gens], seconds, len(prompts))
        for batch in batch_sizes:
            outputs, seconds = timed(lambda: lm_eval_generate(model, prompts, batch, dtype), args.repeats)
            record("lm-eval", dtype, batch, outputs, seconds, len(prompts))
        k = args.batch1_prompts
        outputs, seconds = timed(lambda: hf_batch1(model, prompts[:k]), 1)
        record("batch-1", dtype, 1, outputs, seconds, k)

    best_lm = max((r for r in rows if r["method"] == "lm-eval"), key=lambda r: r["tok_s"])
    print(f"\nbest lm-eval: {best_lm['dtype']} batch {best_lm['batch']}, {best_lm['tok_s']:.1f} tok/s")
    print(f"| method | dtype | batch | tokens/s | x best lm-eval | GSM8K acc (prompts) | same outputs as lm-eval batch {batch_sizes[0]}, same dtype |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        peer = next(p for p in rows if p["method"] == "lm-eval" and p["dtype"] == r["dtype"])
        n = r["examples"]
        same = sum(a[0] == b[0] for a, b in zip(r["outputs"][:n], peer["outputs"][:n]))
        print(f"| {r['method']} | {r['dtype']} | {r['batch']} | {r['tok_s']:.1f} | {r['tok_s'] / best_lm['tok_s']:.2f} "
              f"| {r['accuracy']:.3f} ({n}) | {same}/{n} |")


if __name__ == "__main__":
    main()
