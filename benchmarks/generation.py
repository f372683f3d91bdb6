"""Generation speed against the machine's bound: our engine, HF `generate` (batched) and lm-eval's `hf` backend.

All in one process, greedy, each method stopping at EOS only (so all do the same work), on three workloads:
- gsm8k: the first 64 GSM8K prompts (math system prompt, the chat template), 128 new tokens;
- humaneval: the first 32 HumanEval paper prompts (raw text), 512 new tokens: long outputs;
- alpaca: the first 32 AlpacaEval instructions through the Alpaca template, 256 new tokens: uneven outputs.
Per dtype (float32, and bfloat16 where the CPU computes it natively) it prints the machine's matmul rate (2048^3
and the decode shape, batch x hidden by hidden x intermediate), the FLOPs each workload needs and each method
performed, tokens/s (generated tokens, EOS included), each method's fraction of the bound (the needed FLOPs at
the measured rates: prefill's linear layers at the 2048^3 rate, everything else at the decode-shape rate), and
how many of our outputs equal HF `generate`'s in the same dtype, with the top-two logit margin (the model's own,
one unpadded forward) where an output first differs.

    .venv/bin/python benchmarks/generation.py [--data-dir DIR] [--models default,qwen2.5-coder-0.5b-instruct]
        [--workloads gsm8k,humaneval,alpaca] [--prompts N]
        [--dtypes float32,bfloat16] [--lm-eval-batch-sizes 32,64] [--repeats 1] [--profile]

FLOPs are counted from each method's algorithm, 2 per multiply-add: linear layers 2 x non-embedding parameters
per token, the output head 2 x vocab x hidden per logits row, attention 4 x layers x heads x head_dim per
(query, key) pair. Ours: what the engine ran (its `PackedDecoder.step` calls are recorded). HF `generate` and
lm-eval (which calls `generate` on batches sorted by prompt length): left-padded prefill of every batch and, until
its longest row ends, a decode step for every row, finished or not. `--profile` adds, per workload, where our
engine's time goes (torch.profiler, operators grouped). `--repeats N` runs every method N times in rounds, the
order rotated each round, and takes each one's median. Quote ratios and fractions: machines vary.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from bench.data import load_task_data, resolve_data_dir
from bench.generation.engine import Engine, PackedDecoder, common_prefix
from bench.generation.models import cpu_has_native_bf16, load_model
from bench.machine import describe, machine
from bench.memory import keep_freed_memory
from bench.types import GenerationConfig
from tasks.code import humaneval
from tasks.drift import drift
from tasks.math import gsm8k

WORKLOADS = {"gsm8k": (gsm8k, 64, 128), "humaneval": (humaneval, 32, 512), "alpaca": (drift, 32, 256)}
NEAR_TIE = 1e-3


@dataclass(frozen=True)
class Shape:
    """What a FLOP count needs to know of the model."""

    layers: int
    heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    layer_params: int  # every parameter of the decoder layers and the final norm: the per-token linear work

    @classmethod
    def of(cls, model) -> Shape:
        c = model.config
        decoder = model.get_decoder()
        layer_params = sum(p.numel() for p in decoder.layers.parameters()) + decoder.norm.weight.numel()
        return cls(c.num_hidden_layers, c.num_attention_heads, decoder.layers[0].self_attn.head_dim, c.hidden_size,
                   c.intermediate_size, c.vocab_size, layer_params)

    def linear(self, tokens: int) -> float:
        return 2.0 * self.layer_params * tokens

    def head(self, rows: int) -> float:
        return 2.0 * self.vocab * self.hidden * rows

    def attention(self, pairs: int) -> float:
        return 4.0 * self.layers * self.heads * self.head_dim * pairs


@dataclass
class Flops:
    prefill: float = 0.0  # prompt tokens through the linear layers
    rest: float = 0.0  # decode linear layers, the output head, attention

    def total(self) -> float:
        return self.prefill + self.rest

    def bound_seconds(self, rates: dict[str, float]) -> float:
        return self.prefill / rates["square"] + self.rest / rates["decode"]


def needed(shape: Shape, prompts: list[list[int]], generated: list[int]) -> Flops:
    """The work itself: the common prefix once, each prompt's own tokens once, each generated token once."""
    prefix = common_prefix(prompts)
    flops = Flops(prefill=shape.linear(prefix + sum(len(p) - prefix for p in prompts)))
    pairs = prefix * (prefix + 1) // 2
    for prompt, g in zip(prompts, generated):
        n = len(prompt) - prefix
        pairs += n * prefix + n * (n + 1) // 2 + sum(len(prompt) + j for j in range(1, g))
    flops.rest = shape.linear(sum(g - 1 for g in generated)) + shape.head(sum(generated)) + shape.attention(pairs)
    return flops


def padded_batches(shape: Shape, prompts: list[list[int]], generated: list[int], batch: int) -> Flops:
    """What `generate` does on batches of `batch` prompts, in the order given: prefill over the padded width, then a
    decode step for every row until the batch's longest generation ends."""
    flops = Flops()
    for start in range(0, len(prompts), batch):
        rows = range(start, min(start + batch, len(prompts)))
        width, steps = max(len(prompts[i]) for i in rows), max(generated[i] for i in rows) - 1
        b = len(rows)
        flops.prefill += shape.linear(b * width)
        flops.rest += (shape.attention(b * width * width) + shape.head(b * (steps + 1)) + shape.linear(b * steps)
                       + shape.attention(b * sum(width + t for t in range(1, steps + 1))))
    return flops


class StepRecorder:
    """Records the work of every `PackedDecoder` the engine builds: prefix, and per step rows, widths, prompts."""

    def __init__(self, shape: Shape):
        self.shape, self.flops = shape, Flops()

    def __enter__(self):
        recorder, init, step = self, PackedDecoder.__init__, PackedDecoder.step
        self._originals = (init, step)

        def recording_init(decoder, model, prefix, slots, length, *args):
            init(decoder, model, prefix, slots, length, *args)
            p = len(prefix)
            recorder.flops.prefill += recorder.shape.linear(p)
            recorder.flops.rest += recorder.shape.attention(p * (p + 1) // 2)

        def recording_step(decoder, tokens, prompts):
            live, p, sizes = len(tokens), decoder.prefix, [len(x) for x in prompts]
            logits = step(decoder, tokens, prompts)
            s = recorder.shape  # live rows attend over the cache's whole width (masked past each row's end)
            recorder.flops.prefill += s.linear(sum(sizes))
            recorder.flops.rest += (s.linear(live) + s.head(live + len(sizes)) + s.attention(live * decoder.capacity)
                                    + s.attention(sum(n * (p + n) for n in sizes)))
            return logits

        PackedDecoder.__init__, PackedDecoder.step = recording_init, recording_step
        return self

    def __exit__(self, *exc):
        PackedDecoder.__init__, PackedDecoder.step = self._originals


def matmul_rates(dtype: torch.dtype, decode_shape: tuple[int, int, int], repeats: int = 10) -> dict[str, float]:
    """GFLOP/s of a 2048^3 matmul and of the decode shape (rows x hidden by hidden x intermediate), best of repeats."""
    rates = {}
    for name, (m, k, n) in {"square": (2048, 2048, 2048), "decode": decode_shape}.items():
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        inner = max(1, int(2e9 / (2 * m * k * n)))
        torch.nn.functional.linear(a, b)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(inner):
                torch.nn.functional.linear(a, b)
            best = min(best, (time.perf_counter() - started) / inner)
        rates[name] = 2.0 * m * k * n / best
    return rates


def rounds(methods: dict, repeats: int) -> tuple[dict, dict[str, float]]:
    """Each method once a round, the order rotated each round (this virtual machine's memory costs change over a
    process's life: first-touched pages are slow): (each method's last output, its median seconds)."""
    names, outputs, times = list(methods), {}, {name: [] for name in methods}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            started = time.perf_counter()
            outputs[name] = methods[name]()
            times[name].append(time.perf_counter() - started)
            print(f"  round {r + 1}: {name} {times[name][-1]:.1f} s", flush=True)
    return outputs, {name: statistics.median(t) for name, t in times.items()}


def hf_generate(model, token_lists: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """One left-padded batch through `model.generate`; each row's tokens up to and including its first EOS."""
    tokenizer, eos = model.tokenizer, model.tokenizer.eos_token_id
    width = max(len(t) for t in token_lists)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(t)) + t for t in token_lists])
    mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in token_lists])
    with torch.inference_mode():
        out = model.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)[:, width:].tolist()
    return [row[:row.index(eos) + 1] if eos in row else row for row in out]


def lm_eval_generate(model, prompts: list[str], batch_size: int, dtype: str, max_new_tokens: int) -> list[str]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model.model, tokenizer=model.tokenizer, batch_size=batch_size, dtype=dtype, device="cpu")
    requests = [Instance(request_type="generate_until", doc={}, idx=i, arguments=(
        p, {"until": [model.tokenizer.eos_token], "max_gen_toks": max_new_tokens, "do_sample": False}))
        for i, p in enumerate(prompts)]
    return lm.generate_until(requests, disable_tqdm=True)


def first_difference(model, prompt: list[int], reference: list[int], text: str) -> tuple[int, float, bool]:
    """Where our `text` (re-tokenized: the engine returns text) leaves the reference tokens: (position, top-two margin
    of the model's logits there, whether ours took the runner-up). The margin is the model's own, from one
    unpadded forward over the prompt and the common tokens."""
    ours = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    k = next((i for i, (a, b) in enumerate(zip(ours, reference)) if a != b), min(len(ours), len(reference)))
    with torch.inference_mode():
        logits = model.model(torch.tensor([prompt + reference[:k]])).logits[0, -1].float()
    top = logits.topk(2)
    return k, float(top.values[0] - top.values[1]), k < len(ours) and ours[k] == int(top.indices[1])


def profile_engine(engine: Engine, prompts: list[str], config: GenerationConfig) -> None:
    from torch.profiler import ProfilerActivity, profile

    groups = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"),
              "attention": ("aten::_scaled_dot_product", "aten::scaled_dot_product", "aten::_softmax", "aten::softmax"),
              "copies": ("aten::copy_", "aten::index_put", "aten::cat", "aten::index", "aten::_index_put",
                         "aten::masked_fill", "aten::clone", "aten::contiguous")}
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.generate(prompts, config)
    wall = time.perf_counter() - started
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        group = next((g for g, names in groups.items() if event.key.startswith(names)), "other operators")
        totals[group] = totals.get(group, 0.0) + event.self_cpu_time_total / 1e6
    operators = sum(totals.values())
    print(f"  profile ({wall:.1f} s under the profiler): " + ", ".join(
        f"{g} {t:.1f} s ({t / wall:.0%})" for g, t in sorted(totals.items(), key=lambda x: -x[1]))
        + f", Python and the rest {max(wall - operators, 0):.1f} s ({max(wall - operators, 0) / wall:.0%})")


def measure(model, shape: Shape, name: str, dtype: str, data_dir, args) -> tuple[list, list, list, Flops, float]:
    """Ours, HF `generate` and lm-eval's hf backend at each batch size on one workload: (rows, our outputs, HF's
    tokens, the needed FLOPs, the bound in seconds); a row is (method, batch, tokens, seconds, FLOPs performed)."""
    task, n_prompts, max_new_tokens = WORKLOADS[name]
    n_prompts = min(args.prompts or n_prompts, n_prompts)
    examples = load_task_data(task, data_dir, n_prompts).examples
    prompts = [model.render(task.to_prompt(ex), task.template) for ex in examples]
    tokens = [model.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    rates = matmul_rates(getattr(torch, dtype), (n_prompts, shape.hidden, shape.intermediate))
    print(f"\n{name} {dtype}: {n_prompts} prompts, {sum(map(len, tokens))} prompt tokens "
          f"(common prefix {common_prefix(tokens)}), {max_new_tokens} new tokens; matmul "
          f"{rates['square'] / 1e9:.0f} GFLOP/s at 2048^3, {rates['decode'] / 1e9:.0f} at "
          f"{n_prompts}x{shape.hidden} by {shape.hidden}x{shape.intermediate}", flush=True)
    engine = Engine(model, cache=None, batch_size=n_prompts)
    started = time.perf_counter()
    engine.generate(prompts[:2], GenerationConfig(max_new_tokens=4))  # warm-up: packs the weights (engine.Linears)
    print(f"our warm-up, the weights' one-time packing included: {time.perf_counter() - started:.1f} s", flush=True)
    batches = sorted({min(int(b), n_prompts) for b in args.lm_eval_batch_sizes.split(",")})
    recorder = StepRecorder(shape)

    def ours():
        with recorder:
            return engine.generate(prompts, config)

    methods = {"forgetbench": ours, "HF generate": lambda: hf_generate(model, tokens, max_new_tokens),
               **{f"lm-eval {b}": lambda b=b: lm_eval_generate(model, prompts, b, dtype, max_new_tokens)
                  for b in batches}}
    outputs, seconds = rounds(methods, args.repeats)
    ours, reference = outputs["forgetbench"], outputs["HF generate"]
    generated = [len(r) for r in reference]
    work = needed(shape, tokens, generated)
    ours_flops = Flops(recorder.flops.prefill / args.repeats, recorder.flops.rest / args.repeats)
    rows = [("forgetbench", n_prompts, sum(g.n_tokens for g in ours), seconds["forgetbench"], ours_flops),
            ("HF generate", n_prompts, sum(generated), seconds["HF generate"],
             padded_batches(shape, tokens, generated, n_prompts))]
    by_length = sorted(range(len(tokens)), key=lambda i: -len(tokens[i]))
    for batch in batches:
        texts = outputs[f"lm-eval {batch}"]
        counts = [min(len(model.tokenizer(t, add_special_tokens=False).input_ids) + 1, max_new_tokens) for t in texts]
        lm_flops = padded_batches(shape, [tokens[i] for i in by_length], [generated[i] for i in by_length], batch)
        rows.append(("lm-eval hf", batch, sum(counts), seconds[f"lm-eval {batch}"], lm_flops))
    if args.profile:
        profile_engine(engine, prompts, config)
    return rows, ours, list(zip(tokens, reference)), work, work.bound_seconds(rates)


def print_rows(rows: list, work: Flops, bound: float) -> tuple:
    """The workload's table; returns lm-eval's fastest row."""
    best_lm = max((r for r in rows if r[0] == "lm-eval hf"), key=lambda r: r[2] / r[3])
    print(f"needed {work.total() / 1e12:.2f} TFLOP (prefill linear {work.prefill / 1e12:.2f}); bound "
          f"{bound:.1f} s = {rows[1][2] / bound:.0f} tokens/s")
    print("| method | batch | tokens/s | x best lm-eval | TFLOP performed | x needed | fraction of bound |")
    print("|---|---|---|---|---|---|---|")
    for method, batch, n_tokens, secs, flops in rows:
        print(f"| {method} | {batch} | {n_tokens / secs:.1f} | {(n_tokens / secs) / (best_lm[2] / best_lm[3]):.2f} "
              f"| {flops.total() / 1e12:.2f} | {flops.total() / work.total():.2f} | {bound / secs:.0%} |")
    return best_lm


def print_equality(model, ours: list, pairs: list, dtype: str, fp32_texts: list[str] | None) -> int:
    """How many of our outputs equal HF `generate`'s (and, in another dtype, fp32's), with the top-two margin where
    one first differs; returns the count equal."""
    same, differences = 0, []
    hf_texts = [model.tokenizer.decode(ref, skip_special_tokens=True) for _, ref in pairs]
    for i, (gen, (prompt, ref), text) in enumerate(zip(ours, pairs, hf_texts)):
        if gen.text == text and gen.n_tokens == len(ref):
            same += 1
        else:
            differences.append((i, *first_difference(model, prompt, ref, gen.text)))
    if fp32_texts is not None:
        print(f"same output as HF generate in float32: ours {sum(g.text == t for g, t in zip(ours, fp32_texts))}"
              f"/{len(ours)}, HF generate {dtype} {sum(h == t for h, t in zip(hf_texts, fp32_texts))}/{len(ours)}")
    near = sum(margin <= NEAR_TIE for _, _, margin, _ in differences)
    print(f"same output as HF generate ({dtype}): {same}/{len(ours)}; differing: {len(differences)}, "
          f"{near} first at a near-tie (top-two margin <= {NEAR_TIE})")
    for i, k, margin, second in differences:
        print(f"  prompt {i}: first differs at token {k}, margin {margin:.2e}{', ours took the runner-up' if second else ''}")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--models", default="default", help="comma-separated model specs (bench/generation/models.py)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--dtypes", default="float32,bfloat16" if cpu_has_native_bf16() else "float32")
    parser.add_argument("--lm-eval-batch-sizes", default="32,64", help="each capped at the workload's prompt count")
    parser.add_argument("--prompts", type=int, help="at most this many of each workload's prompts (bigger models)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    keep_freed_memory()  # as the bench CLI does: the peers run under the same allocator settings
    data_dir = resolve_data_dir(args.data_dir)
    print(f"machine: {describe(machine())}; torch {torch.__version__}", flush=True)
    summary = []
    for spec in args.models.split(","):
        fp32_texts: dict[str, list[str]] = {}
        for dtype in args.dtypes.split(","):
            model = load_model(spec, dtype=dtype)
            shape = Shape.of(model.model)
            for name in args.workloads.split(","):
                print(f"\nmodel {spec}", end="")
                rows, ours, pairs, work, bound = measure(model, shape, name, dtype, data_dir, args)
                best_lm = print_rows(rows, work, bound)
                same = print_equality(model, ours, pairs, dtype, fp32_texts.get(name))
                if dtype == "float32":
                    fp32_texts[name] = [model.tokenizer.decode(ref, skip_special_tokens=True) for _, ref in pairs]
                ours_rate, lm_rate = rows[0][2] / rows[0][3], best_lm[2] / best_lm[3]
                summary.append(f"| {spec} | {name} | {dtype} | {ours_rate:.1f} | {lm_rate:.1f} (batch {best_lm[1]}) "
                               f"| {ours_rate / lm_rate:.2f} | {bound / rows[0][3]:.0%} | {same}/{len(ours)} |")
            del model
    print("\n| model | workload | dtype | ours tokens/s | best lm-eval tokens/s | x lm-eval | ours / bound "
          "| same as HF generate |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
