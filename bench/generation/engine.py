"""The generation engine: the only code that generates text from a model.

Greedy (or seeded sampling) with our own decode loop rather than `model.generate`, so that no arithmetic is spent
on what the outputs do not need. For the Llama family (`PACKED_ARCHITECTURES`) it runs the model's own modules
layer by layer over:
- packed prefill: prompts are concatenated into one sequence, positions restarting per prompt and each prompt
  attending only to itself, so no padded token slot is computed;
- a shared prefix: the key/value cache of the prompts' longest common token prefix (chat template and system
  prompt) is computed once and copied into every row's slot;
- continuous batching over a preallocated cache: a row that finishes (EOS, a stop sequence, its token budget)
  frees its slot at once, and waiting prompts are prefilled into free slots in the same forward pass as the
  running rows' next tokens, so the decode batch stays full.
Other architectures run transformers' forward over length-sorted, left-padded batches with a DynamicCache.

Outputs do not depend on the batch size up to floating-point ties and equal `model.generate`'s greedy outputs
(tests/bench/generation/test_engine.py checks both paths). Finished generations go to the cache as soon as they finish.
"""
from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.generation.cache import CachedGeneration, Cache, cache_key
from bench.generation.models import LoadedModel
from bench.memory import available_bytes
from bench.types import GenerationConfig

ENGINE_VERSION = 3  # part of every cache key: bump it when a change to decoding can change outputs
PACKED_ARCHITECTURES = ("llama", "mistral", "qwen2")  # decoders of the same layer shape as transformers' Llama
MAX_PREFILL_TOKENS = 1024  # prompt tokens a forward pass: bounds its activations. Faster than 8192 (docs/engine.md)
KV_MEMORY_SHARE = 0.5  # of the memory available when decoding starts: the most the slot cache may take
HEAD_ROWS = 512  # LM-head rows at a time when scoring: 512 x 151,936 fp32 logits are 311 MB
DECODE_ROWS_HINT = 16  # the rows oneDNN's weight layout is chosen for (any number runs)
CACHE_GROWTH = 128  # positions the decode cache widens by (engine.PackedDecoder._reserve)
PACKED_ROWS = 256  # passes of more rows (prefill, scoring) run the model's own modules: no faster packed
PACK_MEMORY_SHARE = 0.5  # of the memory available at first use: the most the prepacked weight copies may take


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int  # generated tokens, EOS included when the sequence ended on it
    finish: str  # "eos", "stop" or "length"
    cached: bool


def progress_bar(shown: bool = True) -> Progress:
    """Bars with a rate column; `shown` False (a rank other than 0) draws nothing."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
        disable=not shown)


def packed_architecture(model) -> bool:
    """Whether the packed path computes this model as transformers does: a Llama-shaped decoder, full attention."""
    config = model.config
    windowed = getattr(config, "sliding_window", None) is not None and (
        config.model_type == "mistral" or getattr(config, "use_sliding_window", False))
    return config.model_type in PACKED_ARCHITECTURES and not windowed


def common_prefix(token_lists: list[list[int]]) -> int:
    """Length of the longest common token prefix, leaving every list at least one token of its own."""
    first, n = token_lists[0], min(len(t) for t in token_lists) - 1
    for tokens in token_lists[1:]:
        n = next((i for i in range(n) if tokens[i] != first[i]), n)
    return n


class Engine:
    def __init__(self, model: LoadedModel, cache: Cache | None = None, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.model = model
        self.cache = cache
        self.batch_size = batch_size
        self.packed = packed_architecture(model.model)
        config_eos = model.model.generation_config.eos_token_id
        eos = set(config_eos if isinstance(config_eos, list) else [config_eos])
        eos.add(model.tokenizer.eos_token_id)
        self.eos_ids = {e for e in eos if e is not None}

    def settings(self, config: GenerationConfig) -> dict:
        """Everything besides the model and the prompt that decides the output: the cache key's third part."""
        settings = {**asdict(config), "stop": list(config.stop), "dtype": self.model.dtype, "engine": ENGINE_VERSION,
                    "packed_weights": self.packed and packs_weights(self.model.model),
                    # GPU kernels round otherwise: a cache shared with a CPU machine must not mix their outputs (on
                    # the CPU the key is as before, so earlier caches and runs stay valid).
                    **({"device": self.model.device} if self.model.device != "cpu" else {})}
        if config.temperature == 0:
            del settings["seed"]  # greedy ignores it: keep greedy keys (and caches) independent of it
        return settings

    def generate(self, prompts: list[str], config: GenerationConfig, progress: Progress | None = None,
                 label: str = "generate", samples: int = 1) -> list[Generation]:
        """`samples` generations per prompt (needs a temperature), prompt-major: p0s0, p0s1, ..., p1s0, ..."""
        if samples > 1 and config.temperature == 0:
            raise ValueError("several samples need a temperature above 0: greedy samples are all the same")
        settings = self.settings(config)
        keys, items = [], []
        for p in prompts:
            for i in range(samples):
                keys.append(cache_key(self.model.cache_id, p, {**settings, "sample": i} if samples > 1 else settings))
                items.append(p)
        done = self.cache.get_many(keys) if self.cache is not None else {}
        results = {k: Generation(g.text, g.n_tokens, g.finish, cached=True) for k, g in done.items()}
        todo = {k: p for k, p in zip(keys, items) if k not in results}
        bar = progress.add_task(label, total=len(keys), completed=len(keys) - len(todo), rate="") if progress else None
        tokenizer = self.model.tokenizer
        encoded = {k: tokenizer(p, add_special_tokens=False)["input_ids"] for k, p in todo.items()}
        if any(not tokens for tokens in encoded.values()):
            raise ValueError("an empty prompt: there is no token to generate from")
        order = sorted(encoded, key=lambda k: len(encoded[k]), reverse=True)  # longest first: memory peaks early
        decode = self._decode_packed if self.packed else self._decode_padded
        seeds = [int(k[:15], 16) for k in order]
        finished_batches = decode([encoded[k] for k in order], config, seeds) if order else []
        started, n_generated, n_done = time.perf_counter(), 0, 0
        for finished in finished_batches:
            fresh = {order[i]: self._finish(tokens, reason, config) for i, tokens, reason in finished}
            if self.cache is not None:
                self.cache.put_many(fresh)
            results.update({k: Generation(g.text, g.n_tokens, g.finish, cached=False) for k, g in fresh.items()})
            n_generated += sum(g.n_tokens for g in fresh.values())
            n_done += len(fresh)
            if progress is not None:
                elapsed = time.perf_counter() - started
                progress.update(bar, advance=len(fresh),
                                rate=f"{n_done / elapsed:.2f} ex/s {n_generated / elapsed:.0f} tok/s")
        return [results[k] for k in keys]

    def sample_ids(self, prompts: list[list[int]], config: GenerationConfig, seeds: list[int]) -> list[list[int]]:
        """The token ids generated after each prompt (its EOS included when it ended on one), each drawn with its
        own seed; no cache. For trainers that sample from the weights of their current step."""
        if len(seeds) != len(prompts):
            raise ValueError("one seed per prompt")
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        decode = self._decode_packed if self.packed else self._decode_padded
        out: list[list[int]] = [[] for _ in prompts]
        for finished in decode([prompts[i] for i in order], config, [seeds[i] for i in order]) if prompts else ():
            for i, tokens, _ in finished:
                out[order[i]] = tokens
        return out

    def _decode_packed(self, token_lists: list[list[int]], config: GenerationConfig,
                       seeds: list[int]) -> Iterator[list[tuple[int, list[int], str]]]:
        """Continuous batching over `batch_size` slots; yields (index, tokens, finish reason) as rows finish."""
        import torch

        prefix = common_prefix(token_lists)
        length = max(len(t) for t in token_lists) - prefix + config.max_new_tokens
        linears = linears_of(self.model.model, pack=True)  # before sizing the slot cache: the copies take memory
        slots = fitting_slots(self.model.model, prefix + length, min(self.batch_size, len(token_lists)))
        # Inference mode is entered around each computation, never held across a `yield`: generators closed out of
        # order would restore each other's grad mode.
        with torch.inference_mode():
            packed = PackedDecoder(self.model.model, token_lists[0][:prefix], slots, length, linears)
        waiting = deque(range(len(token_lists)))
        rows: list[int] = []  # the index of the prompt in each live slot, slots 0..len(rows)-1
        generated: list[list[int]] = [[] for _ in token_lists]
        generators = [torch.Generator().manual_seed(s) for s in seeds] if config.temperature > 0 else None
        tokens = torch.zeros(0, dtype=torch.long, device=packed.device)
        while rows or waiting:
            admitted, budget = [], MAX_PREFILL_TOKENS
            while waiting and len(rows) + len(admitted) < slots and (
                    not admitted or len(token_lists[waiting[0]]) - prefix <= budget):
                budget -= len(token_lists[waiting[0]]) - prefix
                admitted.append(waiting.popleft())
            rows += admitted
            with torch.inference_mode():
                logits = packed.step(tokens, [token_lists[i][prefix:] for i in admitted])
                tokens = self._next_tokens(logits, config, generators, rows)
            ended, finished = set(), []
            for slot, token in enumerate(tokens.tolist()):
                out = generated[rows[slot]]
                out.append(token)
                reason = self._finish_reason(out, config)
                if reason is not None:
                    ended.add(slot)
                    finished.append((rows[slot], out, reason))
            if finished:
                with torch.inference_mode():
                    order = packed.release(ended, len(rows))
                    tokens = tokens[torch.tensor(order, dtype=torch.long, device=tokens.device)]
                rows = [rows[s] for s in order]
                yield finished

    def _finish_reason(self, out: list[int], config: GenerationConfig) -> str | None:
        if out[-1] in self.eos_ids:
            return "eos"
        stop_window = max((len(s) for s in config.stop), default=0) + 2
        if config.stop and any(s in self.model.tokenizer.decode(out[-stop_window:]) for s in config.stop):
            return "stop"
        return "length" if len(out) >= config.max_new_tokens else None

    def _decode_padded(self, token_lists: list[list[int]], config: GenerationConfig,
                       seeds: list[int]) -> Iterator[list[tuple[int, list[int], str]]]:
        """Left-padded batches of `batch_size` through transformers' forward; a finished row leaves its batch."""
        for start in range(0, len(token_lists), self.batch_size):
            batch = token_lists[start:start + self.batch_size]
            outputs = self._decode_batch(batch, config, seeds[start:start + self.batch_size])
            yield [(start + i, tokens, reason) for i, (tokens, reason) in enumerate(outputs)]

    def _decode_batch(self, token_lists: list[list[int]], config: GenerationConfig,
                      seeds: list[int]) -> list[tuple[list[int], str]]:
        import torch
        from transformers import DynamicCache

        model, tokenizer = self.model.model, self.model.tokenizer
        device = model.device
        width = max(len(t) for t in token_lists)
        input_ids = torch.full((len(token_lists), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(token_lists), width), dtype=torch.long)
        for i, tokens in enumerate(token_lists):
            input_ids[i, width - len(tokens):] = torch.tensor(tokens)
            attention[i, width - len(tokens):] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        generated: list[list[int]] = [[] for _ in token_lists]
        finish = ["length"] * len(token_lists)
        rows = list(range(len(token_lists)))  # which original row each live batch row is
        cache = DynamicCache(config=model.config)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds] if config.temperature > 0 else None
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                           past_key_values=cache, use_cache=True, logits_to_keep=1).logits
            next_positions = positions[:, -1:] + 1
            for _ in range(config.max_new_tokens):
                tokens = self._next_tokens(logits[:, -1], config, generators, rows)
                keep = []
                for j, token in enumerate(tokens.tolist()):
                    out = generated[rows[j]]
                    out.append(token)
                    reason = self._finish_reason(out, config)
                    if reason is None:
                        keep.append(j)
                    else:
                        finish[rows[j]] = reason
                if not keep:
                    break
                if len(keep) < len(rows):
                    index = torch.tensor(keep, device=device)
                    cache.batch_select_indices(index)
                    attention, tokens, next_positions = attention[index], tokens[index], next_positions[index]
                    rows = [rows[j] for j in keep]
                attention = torch.cat([attention, attention.new_ones((len(rows), 1))], dim=1)
                logits = model(input_ids=tokens[:, None], attention_mask=attention, position_ids=next_positions,
                               past_key_values=cache, use_cache=True, logits_to_keep=1).logits
                next_positions = next_positions + 1
        return list(zip(generated, finish))

    def logits_along(self, prompts: list[list[int]], continuations: list[list[int]]) -> Iterator:
        """Teacher-forced: for each (prompt, continuation) pair of token lists, in order, the logits
        [len(continuation), vocab] that predict each continuation token. The prompts' common prefix is computed
        once and the pairs are packed without padding (the Llama family); otherwise one forward per pair."""
        import torch

        if any(not c for c in continuations):
            raise ValueError("an empty continuation: there is no token to score")
        if any(not p for p in prompts):
            raise ValueError("an empty prompt: no position predicts the continuation's first token")
        if not self.packed:
            for prompt, continuation in zip(prompts, continuations):
                with torch.inference_mode():
                    ids = torch.tensor([prompt + continuation[:-1]], device=self.model.model.device)
                    logits = self.model.model(ids).logits[0, len(prompt) - 1:]
                yield logits
            return
        prefix = common_prefix(prompts)
        sizes = [len(p) + len(c) - 1 - prefix for p, c in zip(prompts, continuations)]
        rows = fitting_slots(self.model.model, prefix + max(sizes), len(prompts))  # each chunk's rows hold a cache
        chunks = token_budget_chunks(range(len(sizes)), sizes, rows)
        with torch.inference_mode():
            packed = PackedDecoder(self.model.model, prompts[0][:prefix], max(map(len, chunks)), max(sizes))
        for chunk in chunks:
            with torch.inference_mode():  # not held across the yield: see _decode_packed
                logits = packed.step(packed.lengths[:0], [(prompts[i] + continuations[i][:-1])[prefix:] for i in chunk],
                                     starts=[len(prompts[i]) - prefix - 1 for i in chunk])
            yield from logits

    def score_continuations(self, groups: list[tuple[list[int], list[list[int]]]]) -> list[list[tuple[float, bool]]]:
        """Log-likelihood requests: per (context, continuations) group, each continuation's summed log-probability
        given the context and whether greedy decoding gives it. The Llama family packs groups across requests,
        longest first, up to MAX_PREFILL_TOKENS tokens a pass (`score_groups_packed`); other architectures run
        `logits_along` per group."""
        import torch

        if any(not c for _, continuations in groups for c in continuations):
            raise ValueError("an empty continuation: there is no token to score")
        scores: list[list[tuple[float, bool]] | None] = [None] * len(groups)
        if not self.packed:
            for g, (context, continuations) in enumerate(groups):
                scored = self.logits_along([context] * len(continuations), continuations)
                scores[g] = []
                for continuation, logits in zip(continuations, scored):
                    logp = torch.log_softmax(logits.float(), dim=-1)
                    target = torch.tensor(continuation, device=logp.device)
                    scores[g].append((float(logp.gather(1, target[:, None]).sum()),
                                      bool((logp.argmax(-1) == target).all())))
            return scores
        sizes = [len(context) + sum(len(c) - 1 for c in continuations) for context, continuations in groups]
        longest_first = sorted(range(len(groups)), key=lambda g: -sizes[g])  # like lengths together: little padding
        for chunk in token_budget_chunks(longest_first, sizes, len(groups)):
            with torch.inference_mode():
                for g, scored in zip(chunk, score_groups_packed(self.model.model, [groups[g] for g in chunk])):
                    scores[g] = scored
        return scores

    @staticmethod
    def _next_tokens(logits, config: GenerationConfig, generators, rows: list[int]):
        """Greedy, or a draw from softmax(logits / temperature) with each original row's own generator."""
        import torch

        if generators is None:
            return logits.float().argmax(-1)  # bf16 argmax on the CPU is slow
        probs = torch.softmax(logits.float().cpu() / config.temperature, dim=-1)
        drawn = [torch.multinomial(probs[j], 1, generator=generators[row]) for j, row in enumerate(rows)]
        return torch.cat(drawn).to(logits.device)

    def _finish(self, tokens: list[int], reason: str, config: GenerationConfig) -> CachedGeneration:
        body = tokens[:-1] if reason == "eos" else tokens
        text = self.model.tokenizer.decode(body, skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in config.stop) if i >= 0]
        if cuts:
            text, reason = text[:min(cuts)], "stop"
        return CachedGeneration(text, len(tokens), reason)


def token_budget_chunks(order, sizes: list[int], rows: int) -> list[list[int]]:
    """The indices of `order`, in order, cut into forward passes of at most MAX_PREFILL_TOKENS tokens (`sizes`) and
    `rows` indices; one over the budget gets a pass of its own."""
    chunks: list[list[int]] = []
    budget = 0
    for i in order:
        if not chunks or budget + sizes[i] > MAX_PREFILL_TOKENS or len(chunks[-1]) == rows:
            chunks.append([])
            budget = 0
        chunks[-1].append(i)
        budget += sizes[i]
    return chunks


def fitting_slots(model, width: int, wanted: int) -> int:
    """As many of `wanted` slots as a cache of `width` positions a row fits in KV_MEMORY_SHARE of the memory
    available (at least one): a long token cap or a big model decodes fewer rows at once rather than run out of
    memory (each row's computation is its own: the outputs equal an unbounded run's, tested in fp32)."""
    import torch

    weight = model.get_output_embeddings().weight
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_slot = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * width * weight.element_size()
    available = torch.cuda.mem_get_info(weight.device)[0] if weight.device.type == "cuda" else available_bytes()
    return wanted if available is None else max(1, min(wanted, int(KV_MEMORY_SHARE * available) // per_slot))


class PackedDecoder:
    """A Llama-shaped model's own modules over a shared prefix, packed prompts and a slot cache.

    The prefix's keys and values are computed once and copied into the first positions of each of `slots` rows,
    which then hold up to `length` positions of their own. `step` runs one forward pass over the live rows' next
    tokens (slots 0..B-1) and new prompts packed into the following slots: the linear layers see only real tokens
    (no padding); the live rows attend over their own slots in two batched matmuls per layer, each new prompt
    over the prefix and itself.
    """

    def __init__(self, model, prefix: list[int], slots: int, length: int, linears: Linears | None = None):
        import torch
        from torch.nn.functional import scaled_dot_product_attention

        self.decoder = model.get_decoder()
        self.linears = linears or linears_of(model, pack=False)
        attention = self.decoder.layers[0].self_attn
        self.head_dim, self.scaling = attention.head_dim, attention.scaling
        self.n_kv = model.config.num_key_value_heads
        weight = model.get_output_embeddings().weight
        self.device, self.dtype = weight.device, weight.dtype
        self.prefix = len(prefix)
        self.slots, self.width = slots, self.prefix + length  # the most positions a row may hold
        # Keys are kept transposed ([slot, head, dim, position]) so that a decode step's scores are a matmul, and
        # the cache's position axis is only as wide as the longest row needs (`_reserve`), so that the live rows'
        # keys and values are contiguous: a slice of a wider cache is copied by every batched matmul in bf16.
        self.capacity = 0
        self.keys = [torch.zeros((slots, self.n_kv, self.head_dim, 0), dtype=self.dtype, device=self.device)
                     for _ in self.decoder.layers]
        self.values = [torch.zeros((slots, self.n_kv, 0, self.head_dim), dtype=self.dtype, device=self.device)
                       for _ in self.decoder.layers]
        self._reserve(self.prefix)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=self.device)  # positions after the prefix

        def attend_prefix(layer: int, q, k, v):
            k, v = k.transpose(0, 1), v.transpose(0, 1)
            self.keys[layer][:, :, :, :self.prefix] = k.transpose(1, 2)
            self.values[layer][:, :, :self.prefix] = v
            out = scaled_dot_product_attention(q.transpose(0, 1)[None], k[None], v[None], is_causal=True,
                                               scale=self.scaling, enable_gqa=True)
            return out[0].transpose(0, 1).reshape(len(q), -1)

        if prefix:
            ids = torch.tensor(prefix, dtype=torch.long, device=self.device)
            self._forward(ids, torch.arange(len(prefix), device=self.device), attend_prefix, None)

    def step(self, tokens, prompts: list[list[int]], starts: list[int] | None = None):
        """Logits [len(tokens) + len(prompts), vocab]: the next token of each live row, then of each new prompt.
        With `starts` (teacher forcing, no live rows), the logits of each prompt from its position `start` on."""
        import torch
        from torch.nn.functional import scaled_dot_product_attention

        live, device, prefix = len(tokens), self.device, self.prefix
        arange = lambda n: torch.arange(n, device=device)
        positions = self.lengths[:live]  # where each live row's token goes
        at = prefix + positions  # their cache positions
        rows = arange(live)
        sizes = [len(p) for p in prompts]
        longest = max(sizes, default=0)
        self._reserve(max(prefix + int(positions.max()) + 1 if live else 0, prefix + longest))
        width = self.capacity
        beyond = torch.zeros((live, 1, 1, width), dtype=self.dtype, device=device).masked_fill_(
            (arange(width)[None] > at[:, None])[:, None, None], float("-inf"))  # past each row's end
        segment = torch.cat([torch.full((n,), i, device=device) for i, n in enumerate(sizes)] + [arange(0)])
        offset = torch.cat([arange(n) for n in sizes] + [arange(0)])  # each prompt token's position in its prompt
        slot = live + segment
        causal = arange(prefix + longest)[None] <= prefix + arange(longest)[:, None]  # [query, key]
        ids = torch.cat([tokens, torch.tensor([t for p in prompts for t in p], dtype=torch.long, device=device)])

        def attend(layer: int, q, k, v):
            keys, values = self.keys[layer], self.values[layer]
            out = []
            if live:
                keys[rows, :, :, at] = k[:live]
                values[rows, :, at] = v[:live]
                # One query per row: two batched matmuls over the row's slot beat the CPU's flash kernel here.
                grouped = q[:live].view(live, self.n_kv, -1, self.head_dim)  # the query heads of each KV head
                scores = (grouped @ keys[:live]) * self.scaling + beyond
                weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
                out.append((weights @ values[:live]).reshape(live, -1))
            if sizes:
                keys[slot, :, :, prefix + offset] = k[live:]
                values[slot, :, prefix + offset] = v[live:]
                start = live
                for i, n in enumerate(sizes, start=live):  # one call per prompt: padding them costs more
                    attended = scaled_dot_product_attention(
                        q[start:start + n].transpose(0, 1)[None], keys[i, :, :, :prefix + n].transpose(1, 2)[None],
                        values[i, :, :prefix + n][None], attn_mask=causal[:n, :prefix + n], scale=self.scaling,
                        enable_gqa=True)
                    out.append(attended[0].transpose(0, 1).reshape(n, -1))
                    start += n
            return out[0] if len(out) == 1 else torch.cat(out)

        ends = live + torch.tensor(sizes, dtype=torch.long, device=device).cumsum(0)
        if starts is None:
            keep = torch.cat([rows, ends - 1])
        else:
            keep = torch.cat([torch.arange(end - n + start, end, device=device)
                              for start, n, end in zip(starts, sizes, ends.tolist())])
        logits = self._forward(ids, torch.cat([positions, offset]) + prefix, attend, keep)
        self.lengths[:live] += 1
        self.lengths[live:live + len(sizes)] = torch.tensor(sizes, dtype=torch.long, device=device)
        if starts is not None:
            return list(logits.split([n - start for start, n in zip(starts, sizes)]))
        return logits

    def _reserve(self, width: int) -> None:
        """Widen the cache to hold `width` positions a row, in steps of CACHE_GROWTH (at most `self.width`): the
        masked positions past a row's end cost less than a copy of the cache at every step."""
        import torch

        if width <= self.capacity:
            return
        capacity = min(self.width, -(-width // CACHE_GROWTH) * CACHE_GROWTH)
        shape = (self.slots, self.n_kv)
        for i, (keys, values) in enumerate(zip(self.keys, self.values)):  # a layer at a time: little extra memory
            # Zeros, not empty: a masked position's value is still multiplied by 0 (0 x NaN = NaN).
            wider = torch.zeros(shape + (self.head_dim, capacity), dtype=self.dtype, device=self.device)
            wider[..., :self.capacity] = keys
            self.keys[i] = wider
            wider = torch.zeros(shape + (capacity, self.head_dim), dtype=self.dtype, device=self.device)
            wider[:, :, :self.capacity] = values
            self.values[i] = wider
        self.capacity = capacity

    def release(self, ended: set[int], live: int) -> list[int]:
        """Free the `ended` slots by moving the last live rows into them; returns the old slot of each new slot."""
        kept = live - len(ended)
        holes = [s for s in range(kept) if s in ended]
        movers = [s for s in range(kept, live) if s not in ended]
        for hole, mover in zip(holes, movers):
            end = self.prefix + int(self.lengths[mover])
            for keys, values in zip(self.keys, self.values):
                keys[hole, :, :, self.prefix:end] = keys[mover, :, :, self.prefix:end]
                values[hole, :, self.prefix:end] = values[mover, :, self.prefix:end]
            self.lengths[hole] = self.lengths[mover]
        order = list(range(kept))
        for hole, mover in zip(holes, movers):
            order[hole] = mover
        return order

    def _forward(self, ids, positions, attend, keep):
        """The decoder's layers over one packed sequence, attention delegated to `attend`; logits at `keep`."""
        x = decoder_layers(self.decoder, self.linears, self.head_dim, ids, positions, attend)
        return None if keep is None else self.linears.head(self.decoder.norm(x[keep]))


def decoder_layers(decoder, linears: Linears, head_dim: int, ids, positions, attend):
    """A Llama-shaped decoder's layers over one packed sequence of token `ids` at `positions`, attention delegated
    to `attend(layer, q, k, v)`: the hidden states before the final norm."""
    from transformers.models.llama.modeling_llama import rotate_half

    x = decoder.embed_tokens(ids)
    cos, sin = decoder.rotary_emb(x[None], positions[None])
    cos, sin = cos[0, :, None], sin[0, :, None]  # [tokens, 1, head_dim]: the same rotation for every head
    shape = (len(ids), -1, head_dim)
    for i, layer in enumerate(decoder.layers):
        q, k, v = (t.view(shape) for t in linears.qkv(i, layer.input_layernorm(x)))
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        x = x + linears.o(i, attend(i, q, k, v))
        x = x + linears.mlp(i, layer.post_attention_layernorm(x))
    return x


class Linears:
    """A Llama-shaped model's linear layers as the packed path calls them.

    For decoding on a CPU, their weights are reordered once into oneDNN's blocked layout, q/k/v as one product and
    gate/up as one: `F.linear` reorders its weight on every call, which at decode shapes (a few rows by a large
    weight) costs about as much as the product, so these run 1.4-1.9x faster (docs/engine.md). bf16 products are
    the same bit for bit at nearly every shape, not all (a 1-row product of width 4,864: 1e-4 of its outputs), so
    bf16 outputs can part where logits tie; fp32's come from oneDNN's kernel instead of MKL's and round differently
    (about 1e-6 relative). Passes of more than PACKED_ROWS rows (prefill) gain nothing and run the model's own
    modules. The copies take the layers' size again, so they are made only where they fit in PACK_MEMORY_SHARE of
    the memory available; elsewhere (a GPU, fp16, a CPU without bf16 support, projections that are neither
    `nn.Linear` nor PEFT's plain, unmerged LoRA layer over one, memory too short) the model's own modules run.

    A LoRA layer (a trainer's student, sampling from the adapter of its current step) packs its frozen base weight
    and adds its adapters' product as PEFT does, from their live weights, so samples follow every step's update."""

    def __init__(self, model, packed: dict | None):
        self.layers = model.get_decoder().layers
        self.lm_head = model.get_output_embeddings()
        self.packed = packed

    def qkv(self, i: int, x):
        if self._plain(x):
            a = self.layers[i].self_attn
            return a.q_proj(x), a.k_proj(x), a.v_proj(x)
        return self._product("qkv", i, x)

    def o(self, i: int, x):
        return self.layers[i].self_attn.o_proj(x) if self._plain(x) else self._product("o", i, x)[0]

    def mlp(self, i: int, x):
        mlp = self.layers[i].mlp
        if self._plain(x):
            return mlp(x)
        gate, up = self._product("gate_up", i, x)
        return self._product("down", i, mlp.act_fn(gate) * up)[0]

    def head(self, x):
        return self.lm_head(x) if self._plain(x) else self._product("head", 0, x)[0]

    def _plain(self, x) -> bool:
        return self.packed is None or len(x) > PACKED_ROWS

    def _product(self, name: str, i: int, x):
        import torch

        packed = self.packed[name][i]
        products = torch.ops.mkldnn._linear_pointwise(x, packed.weight, packed.bias, "none", [], "").split(
            packed.sizes, dim=-1)
        return [p if layer is None else with_adapters(layer, x, p) for layer, p in zip(packed.lora_layers, products)]


class PackedGroup(NamedTuple):
    """One product of `Linears`: projections side by side, packed as one weight."""

    weight: Any  # oneDNN's blocked layout of the projections' base weights, concatenated
    bias: Any
    sizes: list[int]  # each projection's output features
    lora_layers: list[Any]  # each projection's LoRA layer, or None where it is a plain `nn.Linear`


def base_linear(module):
    """The plain `nn.Linear` a projection computes first: itself, or the base layer of PEFT's plain LoRA layer
    while unmerged (merging changes the base weight in place). None for any other, whose model is not packed."""
    import torch

    if hasattr(module, "lora_A"):
        from peft.tuners.lora.layer import Linear as LoraLinear

        if type(module) is not LoraLinear or module.merged or module.lora_variant:
            return None
        module = module.base_layer
    return module if type(module) is torch.nn.Linear else None


def with_adapters(layer, x, base_product):
    """A LoRA layer's output from its base layer's product, as `peft.tuners.lora.layer.Linear.forward` computes
    it for plain LoRA (the same expression, so the same rounding)."""
    if layer.disable_adapters:
        return base_product
    result = base_product
    for name in layer.active_adapters:
        if name in layer.lora_A:
            x = layer._cast_input_dtype(x, layer.lora_A[name].weight.dtype)
            result = result + layer.lora_B[name](layer.lora_A[name](layer.lora_dropout[name](x))) * layer.scaling[name]
    return result.to(base_product.dtype)


_PACKED = weakref.WeakKeyDictionary()  # plain model -> (its projections, its packed Linears), made once
_PACKS = weakref.WeakKeyDictionary()  # model -> whether decoding packs its weights, decided once


def linears_of(model, pack: bool) -> Linears:
    """`pack` for decoding; teacher-forced passes and scoring (hundreds of rows a pass) gain nothing from it. A
    model with LoRA layers is packed afresh at each call and its copies freed with the decode: a trainer samples
    between training passes, whose peak memory they would otherwise add to."""
    if not pack:
        return Linears(model, None)
    groups = _projection_groups(model)
    modules = None if groups is None else [m for group_list in groups.values() for group in group_list for m in group]
    cached_modules, cached = _PACKED.pop(model, (None, None))
    if cached is not None and cached_modules == modules:  # none replaced (by LoRA layers) since
        _PACKED[model] = (modules, cached)
        return cached
    linears = Linears(model, _prepack(groups) if groups is not None and packs_weights(model) else None)
    if modules is not None and all(base_linear(m) is m for m in modules):
        _PACKED[model] = (modules, linears)
    return linears


def packs_weights(model) -> bool:
    """Whether decoding runs `model`'s linear layers through packed copies (`Linears`). Decided at the first ask and
    kept, as it depends on the memory available then; bf16 outputs can differ packed or not (docs/engine.md), so it
    is one of the generation settings (`Engine.settings`)."""
    if model not in _PACKS:
        groups = _projection_groups(model)
        available = available_bytes()
        size = 0 if groups is None else sum(base_linear(m).weight.nbytes for group_list in groups.values()
                                            for group in group_list for m in group)
        _PACKS[model] = groups is not None and (available is None or size <= PACK_MEMORY_SHARE * available)
    return _PACKS[model]


def _projection_groups(model) -> dict[str, list[tuple]] | None:
    """The projections `Linears` packs, per group and layer; None where the model's own modules must run."""
    import torch

    head = model.get_output_embeddings()
    dtype = head.weight.dtype
    if head.weight.device.type != "cpu" or not torch.backends.mkldnn.is_available() or dtype not in (
            torch.float32, torch.bfloat16) or (dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return None
    groups: dict[str, list[tuple]] = {"qkv": [], "o": [], "gate_up": [], "down": [], "head": [(head,)]}
    for layer in model.get_decoder().layers:
        a, mlp = layer.self_attn, layer.mlp
        groups["qkv"].append((a.q_proj, a.k_proj, a.v_proj))
        groups["o"].append((a.o_proj,))
        groups["gate_up"].append((mlp.gate_proj, mlp.up_proj))
        groups["down"].append((mlp.down_proj,))
    bases = [[base_linear(m) for m in group] for group_list in groups.values() for group in group_list]
    if any(b is None or b.weight.dtype != dtype for group in bases for b in group) or any(
            len({b.bias is None for b in group}) > 1 for group in bases):
        return None
    return groups


def _prepack(groups: dict[str, list[tuple]]) -> dict:
    """`Linears`' packed weights: per group of projections and layer, a `PackedGroup`."""
    import torch

    def pack(group: tuple):
        bases = [base_linear(m) for m in group]
        # A group of one is reordered from the module's own weight: a concatenated copy would only add page faults.
        weight = bases[0].weight.detach() if len(bases) == 1 else torch.cat([b.weight.detach() for b in bases])
        bias = None if bases[0].bias is None else torch.cat([b.bias.detach() for b in bases])
        return PackedGroup(torch.ops.mkldnn._reorder_linear_weight(weight, DECODE_ROWS_HINT), bias,
                           [b.out_features for b in bases], [None if b is m else m for b, m in zip(bases, group)])

    with torch.no_grad():
        return {name: [pack(group) for group in group_list] for name, group_list in groups.items()}


def score_groups_packed(model, groups: list[tuple[list[int], list[list[int]]]]) -> list[list[tuple[float, bool]]]:
    """One forward pass over (context, continuations) groups packed without padding: each context once, each
    continuation a branch that attends to its context and to itself (positions going on from the context's end),
    no group to another. The LM head runs only at the scored positions, each distinct one once (a context's last
    token predicts the first token of every continuation), HEAD_ROWS at a time. Per continuation: its summed
    log-probability and whether greedy decoding gives it."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention

    lm_head, decoder = model.get_output_embeddings(), model.get_decoder()
    attention = decoder.layers[0].self_attn
    device = lm_head.weight.device
    ids: list[int] = []
    positions: list[int] = []
    branches: list[int] = []  # 0 for a context token, j + 1 for continuation j's
    spans: list[tuple[int, int]] = []  # each group's tokens in the packed sequence
    predicting: list[int] = []  # per scored token, the packed position whose logits predict it
    targets: list[int] = []
    owners: list[int] = []  # per scored token, its continuation's number over all groups
    n_continuations = 0
    for context, continuations in groups:
        start = len(ids)
        ids += context
        positions += range(len(context))
        branches += [0] * len(context)
        for j, continuation in enumerate(continuations):
            branch = len(ids)
            ids += continuation[:-1]
            positions += range(len(context), len(context) + len(continuation) - 1)
            branches += [j + 1] * (len(continuation) - 1)
            predicting += [start + len(context) - 1, *range(branch, branch + len(continuation) - 1)]
            targets += continuation
            owners += [n_continuations] * len(continuation)
            n_continuations += 1
        spans.append((start, len(ids)))
    tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)
    longest = max(end - start for start, end in spans)
    # The groups side by side, padded to the longest, for one attention call per layer (padding costs only there).
    # A padding query attends to itself alone (never to nothing: that is NaN) and its output is dropped.
    offsets = torch.arange(longest, device=device)
    starts, sizes = tensor([s for s, _ in spans]), tensor([e - s for s, e in spans])
    real = offsets[None] < sizes[:, None]  # [group, slot]
    index = torch.where(real, starts[:, None] + offsets[None], 0)
    positions_t = tensor(positions)
    position, branch = positions_t[index], tensor(branches)[index]
    mask = real[:, None, :] & (position[:, None, :] <= position[:, :, None]) & (
        (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None]))  # [group, query, key]
    mask |= ~real[:, :, None] & torch.eye(longest, dtype=torch.bool, device=device)

    def attend(layer: int, q, k, v):
        spread = lambda t: t[index].transpose(1, 2)  # [group, head, slot, dim]
        out = scaled_dot_product_attention(spread(q), spread(k), spread(v), attn_mask=mask[:, None],
                                           scale=attention.scaling, enable_gqa=True)
        return out.transpose(1, 2)[real].reshape(len(q), -1)

    linears = linears_of(model, pack=False)
    hidden = decoder_layers(decoder, linears, attention.head_dim, tensor(ids), positions_t, attend)
    rows, row_of = torch.unique(tensor(predicting), return_inverse=True)
    targets_t = tensor(targets)
    logp = torch.empty(len(targets), dtype=torch.float64, device=device)
    missed = torch.empty(len(targets), dtype=torch.long, device=device)
    for first in range(0, len(rows), HEAD_ROWS):
        logits = linears.head(decoder.norm(hidden[rows[first:first + HEAD_ROWS]])).float()
        here = ((row_of >= first) & (row_of < first + HEAD_ROWS)).nonzero()[:, 0]
        local = row_of[here] - first
        logp[here] = torch.log_softmax(logits, dim=-1)[local, targets_t[here]].double()
        missed[here] = (logits.argmax(-1)[local] != targets_t[here]).long()
    owner = tensor(owners)
    total = torch.zeros(n_continuations, dtype=torch.float64, device=device).index_add_(0, owner, logp).tolist()
    wrong = torch.zeros(n_continuations, dtype=torch.long, device=device).index_add_(0, owner, missed).tolist()
    scores, n = [], 0
    for _, continuations in groups:
        scores.append([(total[n + j], wrong[n + j] == 0) for j in range(len(continuations))])
        n += len(continuations)
    return scores
