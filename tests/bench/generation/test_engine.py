from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, build_tiny_model, make_adapter
from bench.generation.cache import Cache
from bench.generation.engine import Engine, PackedDecoder, common_prefix, linears_of, packs_weights
from bench.generation.models import load_model
from bench.types import GenerationConfig

QUESTIONS = [
    "Janet has 3 ducks.",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total?",
    "x",
    "Josh decides to try flipping a house. He buys a house for $80,000 and then puts in $50,000 in repairs.",
    "What is 2 + 2?",
]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tiny_model_dir, tmp_path_factory):
    """Every engine test on both families the harness ships: Llama (SmolLM2) and Qwen2 (Qwen2.5)."""
    if request.param == "llama":
        return load_model(str(tiny_model_dir), dtype="float32")
    return load_model(str(build_tiny_model(tmp_path_factory.mktemp("qwen2"), architecture="qwen2")), dtype="float32")


def prompts_for(model, questions=QUESTIONS):
    return [model.render([{"role": "system", "content": "Answer."}, {"role": "user", "content": q}]) for q in questions]


def test_outputs_do_not_depend_on_batch_size(tiny):
    prompts = prompts_for(tiny) + ["x", "Janet has 3 ducks."]  # no shared prefix with the others
    config = GenerationConfig(max_new_tokens=40)
    by_size = {b: [g.text for g in Engine(tiny, batch_size=b).generate(prompts, config)] for b in (1, 2, 5, 64)}
    assert by_size[1] == by_size[2] == by_size[5] == by_size[64]
    assert [g.text for g in engine(tiny, packed=False, batch_size=3).generate(prompts, config)] == by_size[1]


def test_slots_shrink_to_the_memory_available_and_outputs_stay_the_same(tiny, monkeypatch):
    """The slot cache takes at most KV_MEMORY_SHARE of the memory available: with room for two rows' caches, two
    rows decode at once, and every output is the one it gets with 64 slots."""
    import bench.generation.engine as engine_module

    prompts = prompts_for(tiny)
    config = GenerationConfig(max_new_tokens=30)
    free = [g.text for g in Engine(tiny, batch_size=64).generate(prompts, config)]
    c, token_lists = tiny.model.config, [tiny.tokenizer(p)["input_ids"] for p in prompts]
    width = max(map(len, token_lists)) + config.max_new_tokens
    per_slot = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * width * 4
    monkeypatch.setattr(engine_module, "available_bytes", lambda: int(2.5 * per_slot / engine_module.KV_MEMORY_SHARE))
    slots = []
    monkeypatch.setattr(engine_module, "PackedDecoder",
                        lambda model, prefix, n, *args: slots.append(n) or PackedDecoder(model, prefix, n, *args))
    assert [g.text for g in Engine(tiny, batch_size=64).generate(prompts, config)] == free
    assert slots == [2]
    monkeypatch.setattr(engine_module, "available_bytes", lambda: 1)
    assert [g.text for g in Engine(tiny, batch_size=64).generate(prompts, config)] == free, "one row at a time"
    assert slots[-1] == 1


def test_teacher_forced_logits_equal_a_plain_forward_in_any_number_of_chunks(tiny, monkeypatch):
    """logits_along (GKD's teacher, knowledge log-likelihoods): each continuation's logits equal one unpadded forward
    over prompt + continuation, whether the pairs share one packed pass or memory allows one row a chunk."""
    import torch

    import bench.generation.engine as engine_module

    prompts = [tiny.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts_for(tiny)]
    continuations = [[5, 9, 11], [7], [3, 4, 5, 6, 7, 8], [12, 13], [2, 40]]
    with torch.inference_mode():
        plain = [tiny.model(torch.tensor([p + c[:-1]])).logits[0, len(p) - 1:] for p, c in zip(prompts, continuations)]
    packed = list(Engine(tiny).logits_along(prompts, continuations))
    monkeypatch.setattr(engine_module, "available_bytes", lambda: 1)
    one_by_one = list(Engine(tiny).logits_along(prompts, continuations))
    for expected, a, b, c in zip(plain, packed, one_by_one, continuations):
        assert a.shape == b.shape == (len(c), tiny.model.config.vocab_size)
        assert torch.allclose(a, expected, atol=1e-5) and torch.allclose(b, expected, atol=1e-5)
    refusing = Engine(tiny)
    for path in {refusing.packed, False}:  # nothing predicts the first token: refused, not one row or a RuntimeError
        refusing.packed = path
        with pytest.raises(ValueError, match="an empty prompt"):
            list(refusing.logits_along([prompts[0], []], [[5], [6, 7]]))


def uneven_stop(texts: list[str]) -> str:
    """A stop sequence that ends rows at different places: not in every output, or found at different offsets."""
    return next(t[k:k + 3] for t in texts for k in range(8, len(t) - 3) if len({u.find(t[k:k + 3]) for u in texts}) > 1)


def test_rows_that_stop_early_free_their_slot_for_waiting_prompts(tiny):
    """Uneven outputs: stop sequences end some rows early; the prompts waiting behind them are admitted mid-batch
    and every output equals the one it gets with a slot of its own."""
    prompts = prompts_for(tiny, QUESTIONS * 3)
    free = Engine(tiny, batch_size=64).generate(prompts, GenerationConfig(max_new_tokens=40))
    config = GenerationConfig(max_new_tokens=40, stop=(uneven_stop([g.text for g in free[:5]]),))
    alone = [Engine(tiny, batch_size=1).generate([p], config)[0] for p in prompts[:5]] * 3
    for batch_size in (2, 4):
        mixed = Engine(tiny, batch_size=batch_size).generate(prompts, config)
        assert [(g.text, g.n_tokens, g.finish) for g in mixed] == [(g.text, g.n_tokens, g.finish) for g in alone]
    assert len({g.n_tokens for g in alone}) > 1, "rows end at different steps"


def test_a_cache_widened_a_few_positions_at_a_time_gives_the_same_outputs(tiny, monkeypatch):
    """The decode cache grows with its longest row (a copy every CACHE_GROWTH positions, here 3), also while rows
    finish and waiting prompts take their slots; the outputs equal those of a cache wide enough from the start."""
    import bench.generation.engine as engine_module

    prompts = prompts_for(tiny, QUESTIONS * 2)
    free = Engine(tiny, batch_size=3).generate(prompts[:5], GenerationConfig(max_new_tokens=30))
    config = GenerationConfig(max_new_tokens=30, stop=(uneven_stop([g.text for g in free]),))
    wide = Engine(tiny, batch_size=3).generate(prompts, config)
    capacities = []
    reserve = PackedDecoder._reserve

    def recorded(self, width: int) -> None:
        reserve(self, width)
        capacities.append(self.capacity)

    monkeypatch.setattr(engine_module, "CACHE_GROWTH", 3)
    monkeypatch.setattr(PackedDecoder, "_reserve", recorded)
    narrow = Engine(tiny, batch_size=3).generate(prompts, config)
    assert [(g.text, g.n_tokens, g.finish) for g in narrow] == [(g.text, g.n_tokens, g.finish) for g in wide]
    assert len(set(capacities)) > 3 and len({g.finish for g in wide}) == 2


def test_samples_are_seeded_per_prompt_and_do_not_depend_on_batch_size(tiny):
    prompts = prompts_for(tiny)
    config = GenerationConfig(max_new_tokens=20, temperature=1.0, seed=7)
    by_size = {b: [g.text for g in Engine(tiny, batch_size=b).generate(prompts, config, samples=3)] for b in (1, 4, 64)}
    assert by_size[1] == by_size[4] == by_size[64]
    texts = by_size[64]
    assert len(texts) == 3 * len(prompts)
    assert len(set(texts)) > len(prompts), "samples of one prompt differ"
    other_seed = Engine(tiny).generate(prompts, GenerationConfig(max_new_tokens=20, temperature=1.0, seed=8), samples=3)
    assert [g.text for g in other_seed] != texts
    with pytest.raises(ValueError, match="temperature"):
        Engine(tiny).generate(prompts, GenerationConfig(max_new_tokens=5), samples=2)


def test_greedy_cache_keys_ignore_the_seed(tiny):
    engine = Engine(tiny)
    assert engine.settings(GenerationConfig(seed=1)) == engine.settings(GenerationConfig(seed=2))
    assert engine.settings(GenerationConfig(temperature=0.8, seed=1)) != engine.settings(GenerationConfig(temperature=0.8, seed=2))


def engine(model, packed: bool = True, **kwargs) -> Engine:
    """The packed path (the Llama family), or transformers' forward over padded batches (other architectures)."""
    e = Engine(model, **kwargs)
    assert e.packed, "the tiny Llama takes the packed path"
    e.packed = packed
    return e


def test_common_prefix_leaves_every_prompt_a_token():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix([[1, 2, 3], [1, 2, 3]]) == 2
    assert common_prefix([[7], [7, 8]]) == 0
    assert common_prefix([[1, 2], [3, 2]]) == 0


@pytest.mark.parametrize("pack", [False, True])
def test_packed_prefill_logits_equal_a_full_forward(tiny, pack):
    """Prompts packed into one sequence after a shared prefix, with no padding, give each prompt's own logits;
    so does the next decode step, with rows of different lengths in the cache, also through the weights packed
    for oneDNN (`pack`)."""
    import torch

    tokenizer = tiny.tokenizer
    token_lists = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts_for(tiny)]
    prefix = common_prefix(token_lists)
    assert prefix > 5, "the chat template and system prompt are shared"
    linears = linears_of(tiny.model, pack)
    assert (linears.packed is not None) == pack, "a CPU build of torch packs fp32 weights"
    with torch.inference_mode():
        packed = PackedDecoder(tiny.model, token_lists[0][:prefix], slots=5, length=128, linears=linears)
        first = packed.step(torch.zeros(0, dtype=torch.long), [t[prefix:] for t in token_lists])
        nxt = first.argmax(-1)
        second = packed.step(nxt, [])
        for i, tokens in enumerate(token_lists):
            full = tiny.model(torch.tensor([tokens + [int(nxt[i])]])).logits[0]
            torch.testing.assert_close(first[i], full[-2], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(second[i], full[-1], atol=1e-5, rtol=1e-5)


def test_weights_pack_only_where_the_copies_fit_and_outputs_stay_the_same(tiny_model_dir, monkeypatch):
    """The packed weight copies take at most PACK_MEMORY_SHARE of the memory available; with less, the model's own
    modules decode, to the same fp32 outputs. The choice is made once per model and is a generation setting (bf16
    outputs can differ with it): a cache never serves one's outputs to the other, and run.json records it."""
    import torch

    import bench.generation.engine as engine_module

    config, models = GenerationConfig(max_new_tokens=30), {}
    for fits in (True, False):
        models[fits] = load_model(str(tiny_model_dir), dtype="float32")
        size = sum(m.weight.nbytes for m in models[fits].model.modules() if isinstance(m, torch.nn.Linear))
        room = size / engine_module.PACK_MEMORY_SHARE
        monkeypatch.setattr(engine_module, "available_bytes", lambda: int(room) + (1 if fits else -1))
        assert (linears_of(models[fits].model, pack=True).packed is not None) == fits
        monkeypatch.setattr(engine_module, "available_bytes", lambda: 1 if fits else 2 ** 50)
        assert Engine(models[fits]).settings(config)["packed_weights"] == fits, "decided once, whatever memory is left"
    prompts = prompts_for(models[True])
    texts = {fits: [g.text for g in Engine(m).generate(prompts, config)] for fits, m in models.items()}
    assert texts[True] == texts[False]
    assert Engine(models[True]).settings(config) != Engine(models[False]).settings(config)


def test_packed_weights_give_the_same_bf16_logits_bit_for_bit(tiny_model_dir):
    """oneDNN's bf16 product is the same with its weights packed once as with `F.linear`'s reorder per call, so
    packing does not change this model's bf16 logits (a rare product of a real model rounds differently:
    docs/engine.md)."""
    import torch

    model = load_model(str(tiny_model_dir), dtype="bfloat16")
    token_lists = [model.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts_for(model)]
    prefix = common_prefix(token_lists)
    logits = []
    for pack in (False, True):
        with torch.inference_mode():
            decoder = PackedDecoder(model.model, token_lists[0][:prefix], 5, 128, linears_of(model.model, pack))
            first = decoder.step(torch.zeros(0, dtype=torch.long), [t[prefix:] for t in token_lists])
            logits.append((first, decoder.step(first.float().argmax(-1), [])))
    assert torch.equal(logits[0][0], logits[1][0]) and torch.equal(logits[0][1], logits[1][1])


def packed_logits(model, prompts, linears):
    """The logits of a packed prefill and of one decode step after it."""
    import torch

    token_lists = [model.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    prefix = common_prefix(token_lists)
    with torch.inference_mode():
        decoder = PackedDecoder(model.model, token_lists[0][:prefix], 5, 128, linears)
        first = decoder.step(torch.zeros(0, dtype=torch.long), [t[prefix:] for t in token_lists])
        return first, decoder.step(first.float().argmax(-1), [])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lora_layers_decode_packed_and_follow_the_adapter(tiny_model_dir, tmp_path, dtype):
    """Trainers sample from a PEFT model whose adapters change every step. Its frozen base weights are packed and
    each LoRA layer adds its adapters' product as PEFT does: the logits equal PEFT's own forward's (bf16 bit for
    bit), the outputs follow the adapters' current weights, and with the adapters disabled or merged they are
    the base model's or the merged model's."""
    import dataclasses

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    import bench.generation.engine as engine_module

    packs = dtype == "float32" or torch.ops.mkldnn._is_mkldnn_bf16_supported()  # else PEFT's own modules decode
    config = GenerationConfig(max_new_tokens=30)
    base = load_model(str(tiny_model_dir), dtype=dtype)
    prompts = prompts_for(base)
    plain = [g.text for g in Engine(base).generate(prompts, config)]
    adapted = load_model(str(tiny_model_dir), dtype=dtype)
    adapted.model = PeftModel.from_pretrained(adapted.model, make_adapter(tiny_model_dir, tmp_path / "adapter"))
    adapted = dataclasses.replace(adapted, adapter_sha256="random")
    linears = linears_of(adapted.model, pack=True)
    assert (linears.packed is not None) == packs and adapted.model not in engine_module._PACKED  # freed after use
    own = packed_logits(adapted, prompts, linears_of(adapted.model, pack=False))
    for ours, theirs in zip(packed_logits(adapted, prompts, linears), own):
        if dtype == "bfloat16":
            assert torch.equal(ours, theirs)
        else:
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    engine = Engine(adapted)
    outputs = [g.text for g in engine.generate(prompts, config)]
    assert outputs != plain
    with adapted.model.disable_adapter():
        assert [g.text for g in engine.generate(prompts, config)] == plain
        torch.testing.assert_close(packed_logits(adapted, prompts, linears_of(adapted.model, pack=True))[0],
                                   packed_logits(base, prompts, linears_of(base.model, pack=False))[0])
    adapted.model.merge_adapter()  # the base weights now hold the adapters: a packed copy must not add them again
    assert linears_of(adapted.model, pack=True).packed is None
    for merged, unmerged in zip(packed_logits(adapted, prompts, linears_of(adapted.model, pack=True)), own):
        torch.testing.assert_close(merged.float(), unmerged.float(), atol=0.05 if dtype == "bfloat16" else 1e-4,
                                   rtol=0)
    adapted.model.unmerge_adapter()
    with torch.no_grad():
        for name, param in adapted.model.named_parameters():
            if "lora_B" in name:
                param.zero_()
    assert [g.text for g in engine.generate(prompts, config)] == plain

    injected = load_model(str(tiny_model_dir), dtype=dtype)
    before = linears_of(injected.model, pack=True)  # packed and kept while its projections are plain
    get_peft_model(injected.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    after = linears_of(injected.model, pack=True)
    assert after is not before and injected.model not in engine_module._PACKED  # the stale plain copy let go
    torch.testing.assert_close(packed_logits(injected, prompts, after)[0],
                               packed_logits(injected, prompts, linears_of(injected.model, pack=False))[0])


@pytest.mark.parametrize("packed,batch_size", [(True, 8), (True, 2), (False, 8)])
def test_greedy_matches_transformers_generate(tiny, packed, batch_size):
    """Our decode loop is a faster route to the same greedy outputs as `model.generate` at batch 1, also when
    prompts wait for a free slot and are admitted into a running batch (batch size 2)."""
    import torch

    prompts = prompts_for(tiny)
    ours = engine(tiny, packed, batch_size=batch_size).generate(prompts, GenerationConfig(max_new_tokens=30))
    tokenizer = tiny.tokenizer
    for prompt, gen in zip(prompts, ours):
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = tiny.model.generate(**ids, max_new_tokens=30, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids.input_ids.shape[1]:].tolist()
        assert gen.n_tokens == len(new)
        assert gen.text == tokenizer.decode(new, skip_special_tokens=True)


def test_max_new_tokens_and_finish_reason(tiny):
    gens = Engine(tiny, batch_size=4).generate(prompts_for(tiny), GenerationConfig(max_new_tokens=7))
    assert gens == engine(tiny, packed=False, batch_size=4).generate(prompts_for(tiny), GenerationConfig(max_new_tokens=7))
    assert all(g.n_tokens <= 7 for g in gens)
    assert all((g.finish == "length") == (g.n_tokens == 7 and g.finish != "eos") for g in gens)


def test_stop_sequences_cut_the_output(tiny):
    prompts = prompts_for(tiny)
    free = Engine(tiny, batch_size=4).generate(prompts, GenerationConfig(max_new_tokens=40))
    # Stop on a piece of the first free-running output: that output must end right before it.
    text = free[0].text
    assert len(text) > 6, "the tiny model should babble for 40 tokens"
    stop = text[3:6]
    stopped = Engine(tiny, batch_size=4).generate(prompts, GenerationConfig(max_new_tokens=40, stop=(stop,)))
    assert stopped[0].text == text[:text.find(stop)]
    assert stopped[0].finish == "stop"
    for before, after in zip(free, stopped):
        assert stop not in after.text
        assert before.text.startswith(after.text)


def test_cache_makes_a_rerun_generate_nothing(tiny, tmp_path):
    cache = Cache(tmp_path / "gen.sqlite")
    prompts = prompts_for(tiny)
    config = GenerationConfig(max_new_tokens=20)
    first = Engine(tiny, cache, batch_size=2).generate(prompts, config)
    assert not any(g.cached for g in first) and len(cache) == len(prompts)
    second = Engine(tiny, cache, batch_size=3).generate(prompts, config)
    assert all(g.cached for g in second)
    assert [g.text for g in first] == [g.text for g in second]
    other = Engine(tiny, cache, batch_size=3).generate(prompts[:1], GenerationConfig(max_new_tokens=21))
    assert not other[0].cached, "other generation settings are another cache key"


def test_duplicate_prompts_are_generated_once(tiny, tmp_path):
    cache = Cache(tmp_path / "gen.sqlite")
    prompts = prompts_for(tiny)
    gens = Engine(tiny, cache, batch_size=2).generate(prompts + prompts[:2], GenerationConfig(max_new_tokens=5))
    assert len(cache) == len(prompts)
    assert [g.text for g in gens[-2:]] == [g.text for g in gens[:2]]


def _bench(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "eval", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _cached_rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow  # over 10 s here: left out by make test-fast
def test_sigkill_then_rerun_gives_the_same_results(tiny_model_dir, fixture_data, tmp_path):
    """kill -9 mid-run, re-run: the remaining examples are generated and every number equals an uninterrupted run."""
    args = [str(tiny_model_dir), "--tasks", "gsm8k", "--data-dir", str(fixture_data), "--batch-size", "1",
            "--dtype", "float32", "--name", "tiny"]
    repo = ROOT
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    cache = killed_dir / "cache" / "generations.sqlite"

    proc = _bench(*args, "--results-dir", str(killed_dir), cwd=repo)
    deadline = time.monotonic() + 120
    while _cached_rows(cache) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before_rerun = _cached_rows(cache)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    assert 2 <= done_before_rerun < 12
    run = json.loads((killed_dir / "runs" / "tiny" / "run.json").read_text())
    assert run["complete"] is False

    rerun = _bench(*args, "--results-dir", str(killed_dir), cwd=repo)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    clean = _bench(*args, "--results-dir", str(clean_dir), cwd=repo)
    assert clean.wait(timeout=300) == 0, clean.stderr.read()

    for name in ("predictions.jsonl", "metrics.json"):
        killed_file = (killed_dir / "runs" / "tiny" / "gsm8k" / name).read_text()
        assert killed_file == (clean_dir / "runs" / "tiny" / "gsm8k" / name).read_text()
    assert json.loads((killed_dir / "runs" / "tiny" / "run.json").read_text())["complete"] is True
    assert _cached_rows(cache) == 12
