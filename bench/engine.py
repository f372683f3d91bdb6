"""The generation engine: the only code that generates text from a model.

Greedy (or seeded sampling) over length-sorted, left-padded batches. The decode loop is our own (model forward plus a
DynamicCache) rather than `model.generate`, so that a sequence that has finished (EOS, a stop sequence, or
its token budget) leaves the batch at once instead of being computed until the longest one ends; on a CPU
that is most of the saving. Outputs do not depend on the batch size up to floating-point ties
(tests/test_engine.py checks it). Every finished batch goes to the cache before the next one starts.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.cache import CachedGeneration, Cache, cache_key
from bench.models import LoadedModel
from bench.types import GenerationConfig

ENGINE_VERSION = 1  # part of every cache key: bump it when a change to decoding can change outputs


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int  # generated tokens, EOS included when the sequence ended on it
    finish: str  # "eos", "stop" or "length"
    cached: bool


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(), transient=False)


class Engine:
    def __init__(self, model: LoadedModel, cache: Cache | None = None, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.model = model
        self.cache = cache
        self.batch_size = batch_size
        config_eos = model.model.generation_config.eos_token_id
        eos = set(config_eos if isinstance(config_eos, list) else [config_eos])
        eos.add(model.tokenizer.eos_token_id)
        self.eos_ids = {e for e in eos if e is not None}

    def settings(self, config: GenerationConfig) -> dict:
        """Everything besides the model and the prompt that decides the output: the cache key's third part."""
        settings = {**asdict(config), "stop": list(config.stop), "dtype": self.model.dtype, "engine": ENGINE_VERSION}
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
                keys.append(cache_key(self.model.fingerprint, p, {**settings, "sample": i} if samples > 1 else settings))
                items.append(p)
        done = self.cache.get_many(keys) if self.cache is not None else {}
        results = {k: Generation(g.text, g.n_tokens, g.finish, cached=True) for k, g in done.items()}
        todo = {k: p for k, p in zip(keys, items) if k not in results}
        bar = progress.add_task(label, total=len(keys), completed=len(keys) - len(todo), rate="") if progress else None
        tokenizer = self.model.tokenizer
        encoded = {k: tokenizer(p, add_special_tokens=False)["input_ids"] for k, p in todo.items()}
        order = sorted(encoded, key=lambda k: len(encoded[k]), reverse=True)  # longest first: memory peaks early
        started, n_generated, n_done = time.perf_counter(), 0, 0
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            outputs = self._decode_batch([encoded[k] for k in batch], config, [int(k[:15], 16) for k in batch])
            fresh = dict(zip(batch, outputs))
            if self.cache is not None:
                self.cache.put_many(fresh)
            results.update({k: Generation(g.text, g.n_tokens, g.finish, cached=False) for k, g in fresh.items()})
            n_generated += sum(g.n_tokens for g in outputs)
            n_done += len(batch)
            if progress is not None:
                elapsed = time.perf_counter() - started
                progress.update(bar, advance=len(batch),
                                rate=f"{n_done / elapsed:.2f} ex/s {n_generated / elapsed:.0f} tok/s")
        return [results[k] for k in keys]

    def _decode_batch(self, token_lists: list[list[int]], config: GenerationConfig,
                      seeds: list[int]) -> list[CachedGeneration]:
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
        stop_window = max((len(s) for s in config.stop), default=0) + 2
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
                    row = rows[j]
                    out = generated[row]
                    out.append(token)
                    if token in self.eos_ids:
                        finish[row] = "eos"
                    elif config.stop and any(s in tokenizer.decode(out[-stop_window:]) for s in config.stop):
                        finish[row] = "stop"
                    elif len(out) < config.max_new_tokens:
                        keep.append(j)
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
        return [self._finish(tokens, reason, config) for tokens, reason in zip(generated, finish)]

    @staticmethod
    def _next_tokens(logits, config: GenerationConfig, generators, rows: list[int]):
        """Greedy, or a draw from softmax(logits / temperature) with each original row's own generator."""
        import torch

        if generators is None:
            return logits.argmax(-1)
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
