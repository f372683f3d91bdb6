"""Pairwise judging through alpaca_eval: its annotator configs, prompt templates and parsers; ours only the glue and,
for a local judge, the completion function.

- An API judge is one of alpaca_eval's annotator configs (`alpaca_eval_gpt4`, the sdft study's;
  `weighted_alpaca_eval_gpt4_turbo`, alpaca_eval's default) or a configs.yaml of one's own, with its own completion
  function: the OpenAI API, or any OpenAI-compatible endpoint (a local vLLM server) named in an alpaca_eval client
  config (`OPENAI_CLIENT_CONFIG_PATH`) or by `OPENAI_API_BASE`.
- A local judge (`local:SPEC`, any model spec of `bench eval`) uses the prompt template and log-probability parser of
  `weighted_alpaca_eval_gpt4_turbo`, with our completion function passed to alpaca_eval as a callable: one forward
  pass through our engine per prompt, and the next-token log-probabilities of the two identifiers ("m": the first
  output, "M": the second) returned as an OpenAI completion carries them, so alpaca_eval's `logprob_parser` reads
  the preference exactly as it reads GPT-4's.

Every pair is judged in both orders and the two preferences averaged (alpaca_eval randomises the order per
instruction and judges once; its issue 263 asks for both); how often the verdict flips with the order is recorded.
Completions are cached per prompt in the results cache, so a killed run re-judges at most one chunk of pairs.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from bench.generation.cache import Cache, cache_key
from bench.types import BenchError

warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)  # alpaca_eval 0.6.6

LOCAL_PREFIX = "local:"
POINTWISE_PREFIX = "pointwise:"  # a local model scoring each output alone
SHORT_PREFIX = "short:"  # a local model with SHORT_ANNOTATOR's prompt
SHORT_ANNOTATOR = str(Path(__file__).parent / "judges" / "short")  # a pairwise prompt written for small models
POINTWISE_PROMPT = ("Here is an instruction and a response to it.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
                    "{output}\n\nIs the response a helpful, correct and complete answer to the instruction? Answer Yes "
                    "or No.")
DEFAULT_JUDGE = "local:qwen2.5-coder-1.5b-instruct"  # chosen by measurement: docs/helpfulness.md
LOCAL_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"  # the template and parser a local judge runs with
ORDERS = ("both", "random")  # both: each pair judged twice, swapped; random: alpaca_eval's one seeded random order
JUDGE_CHUNK = 8  # pairs per annotator call: what a killed run can lose
API_TIMEOUT_S = 10


def local_model_spec(spec: str) -> str | None:
    """The model spec of a local judge (`local:MODEL`, `short:MODEL`, `pointwise:MODEL`); None for an API judge."""
    for prefix in (LOCAL_PREFIX, SHORT_PREFIX, POINTWISE_PREFIX):
        if spec.startswith(prefix):
            if not spec.removeprefix(prefix):
                raise BenchError(f"--judge {spec}: name the model after {prefix!r}")
            return spec.removeprefix(prefix)
    return None


def annotator_config(name: str) -> Path:
    """An alpaca_eval annotator config by name (a directory of its evaluators_configs) or a configs.yaml path."""
    from alpaca_eval import constants

    path = Path(name)
    path = path / "configs.yaml" if path.is_dir() else path
    if path.is_file():
        return path.resolve()
    builtin = Path(constants.EVALUATORS_CONFIG_DIR) / name / "configs.yaml"
    if not builtin.is_file():
        raise BenchError(f"--judge {name}: not an alpaca_eval annotator config (a name under "
                         f"{constants.EVALUATORS_CONFIG_DIR}, a configs.yaml, or local:MODEL)")
    return builtin


def _single_config(path: Path) -> tuple[str, dict[str, Any]]:
    from alpaca_eval.utils import load_configs

    configs = load_configs(path)
    if len(configs) != 1:
        raise BenchError(f"--judge {path}: a pool of {len(configs)} annotators; forgetbench judges with one")
    return next(iter(configs.items()))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Preference:
    """How strongly the judge prefers the second output of a pair: 1 = second, 0 = first, 0.5 = a tie."""

    second: float
    orders: tuple[float, ...]  # per judged order, the preference for the second output (as given, then swapped)
    failed: bool = False  # no order parsed: the pair counts as a tie
    seconds: float = 0.0  # the judge's time on the pair, all orders (as measured when first judged: cached with it)

    @property
    def flipped(self) -> bool:
        """The verdict changed when the outputs swapped places (ties at exactly 0.5 count as no verdict)."""
        return len(self.orders) == 2 and (self.orders[0] - 0.5) * (self.orders[1] - 0.5) < 0


def next_token_log_probs(model, engine, conversations: list[list[dict[str, str]]]) -> Iterator:
    """For each conversation, rendered through the model's chat template, the log-probabilities of the next token."""
    import torch

    tokenizer = model.tokenizer
    encoded = [tokenizer(model.render(c), add_special_tokens=False)["input_ids"] for c in conversations]
    for logits in engine.logits_along(encoded, [[0]] * len(encoded)):
        yield torch.log_softmax(logits[-1].float(), dim=-1)


class LocalCompletions:
    """alpaca_eval's completion function for a local model: a ChatML prompt in, one token's log-probabilities out."""

    def __init__(self, model, engine, identifiers: tuple[str, ...] = ("m", "M"), top: int = 5):
        self.model, self.engine, self.top = model, engine, top
        tokenizer = model.tokenizer
        self.identifiers: dict[str, int] = {}
        for identifier in identifiers:
            ids = tokenizer(identifier, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise BenchError(f"judge {model.spec}: identifier {identifier!r} is {len(ids)} tokens, not one")
            self.identifiers[identifier] = ids[0]

    def __call__(self, prompts: list[str], **_: Any) -> dict[str, list]:
        from alpaca_eval.utils import prompt_to_chatml

        started = time.perf_counter()
        tokenizer = self.model.tokenizer
        completions, texts = [], []
        for logp in next_token_log_probs(self.model, self.engine, [prompt_to_chatml(p) for p in prompts]):
            values, ids = logp.topk(self.top)
            top = {int(i): float(v) for v, i in zip(values, ids)}
            listed = [{"token": tokenizer.decode([i]), "logprob": v} for i, v in top.items()
                      if i not in self.identifiers.values()]
            listed += [{"token": t, "logprob": float(logp[i])} for t, i in self.identifiers.items()]
            best = max(listed, key=lambda entry: entry["logprob"])
            mass = sum(math.exp(float(logp[i])) for i in self.identifiers.values())
            texts.append(best["token"])
            completions.append({"text": best["token"], "identifier_mass": mass,
                                "logprobs": {"content": [{**best, "top_logprobs": listed}]}})
        seconds = (time.perf_counter() - started) / max(len(prompts), 1)
        return {"completions": texts, "completions_all": completions, "time_per_example": [seconds] * len(prompts),
                "price_per_example": [0.0] * len(prompts)}


class CachedCompletions:
    """Wraps a completion function with the results cache, keyed by the judge, the prompt and the call's settings."""

    def __init__(self, complete: Callable[..., dict[str, list]], cache: Cache | None, judge_key: str):
        self.complete, self.cache, self.judge_key = complete, cache, judge_key

    def __call__(self, prompts: list[str], **kwargs: Any) -> dict[str, list]:
        settings = json.loads(json.dumps(kwargs, sort_keys=True, default=str))
        keys = [cache_key(self.judge_key, p, settings) for p in prompts]
        done = self.cache.get_judgments(keys) if self.cache is not None else {}
        todo = list(dict.fromkeys(i for i, k in enumerate(keys) if k not in done))
        if todo:
            fresh = self.complete(prompts=[prompts[i] for i in todo], **kwargs)
            rows = {keys[i]: {name: values[j] for name, values in fresh.items()
                              if isinstance(values, list) and len(values) == len(todo)}
                    for j, i in enumerate(todo)}
            rows = json.loads(json.dumps(rows, default=str))
            if self.cache is not None:
                self.cache.put_judgments(rows)
            done.update(rows)
        names = list(done[keys[0]]) if keys else ["completions"]
        return {name: [done[k].get(name) for k in keys] for name in names}


class PointwiseScores:
    """A local model's log-odds of "Yes" over "No" as the next token, asked whether one output answers its
    instruction well: each output scored alone, so no output is ever shown first."""

    def __init__(self, model, engine):
        self.model, self.engine = model, engine
        self.ids = [model.tokenizer(answer, add_special_tokens=False)["input_ids"][0] for answer in ("Yes", "No")]
        if self.ids[0] == self.ids[1]:  # the first tokens decide (one token each in the Qwen2.5 and SmolLM2 vocabularies)
            raise BenchError(f"judge {model.spec}: 'Yes' and 'No' begin with the same token")

    def __call__(self, prompts: list[str], **_: Any) -> dict[str, list]:
        started = time.perf_counter()
        log_odds = [float(logp[self.ids[0]] - logp[self.ids[1]]) for logp in
                    next_token_log_probs(self.model, self.engine, [[{"role": "user", "content": p}] for p in prompts])]
        seconds = (time.perf_counter() - started) / max(len(prompts), 1)
        return {"log_odds": log_odds, "time_per_example": [seconds] * len(prompts)}


class Judge:
    """One judge: an alpaca_eval annotator config, its completion function (ours for a local model: `local:MODEL`
    with LOCAL_ANNOTATOR's prompt, `short:MODEL` with SHORT_ANNOTATOR's), the orders; or, `pointwise:MODEL`, a local
    model scoring each output alone (POINTWISE_PROMPT), compared across the pair."""

    def __init__(self, spec: str, orders: str = "both", local_model=None, local_engine=None, cache: Cache | None = None):
        if orders not in ORDERS:
            raise BenchError(f"--judge-orders {orders}: choose from {', '.join(ORDERS)}")
        self.spec, self.orders, self.cache = spec, orders, cache
        self.local = local_model
        local = spec.startswith((LOCAL_PREFIX, SHORT_PREFIX, POINTWISE_PREFIX))
        if local_model is None and local:
            raise ValueError("a local judge needs its model")
        self.pointwise, self.completions = None, None
        if spec.startswith(POINTWISE_PREFIX):
            self.config, self.name, self.settings = None, "pointwise_yes_no", {}
            self.template_sha256 = _sha256(POINTWISE_PROMPT)
            self.pointwise = PointwiseScores(local_model, local_engine)
            return
        self.config = annotator_config(SHORT_ANNOTATOR if spec.startswith(SHORT_PREFIX) else
                                       LOCAL_ANNOTATOR if local else spec)
        self.name, settings = _single_config(self.config)
        base = self.config.parents[1]
        template = settings["prompt_template"]
        template_path = Path(template) if Path(template).is_absolute() else base / template
        self.template_sha256 = _sha256(template_path.read_text()) if template_path.is_file() else _sha256(template)
        self.settings = settings
        identifiers = tuple(settings.get("completion_parser_kwargs", {}).get("denominator_tokens", ("m", "M")))
        self.completions = LocalCompletions(local_model, local_engine, identifiers) if local_model is not None else None

    def identity(self) -> dict[str, Any]:
        """What decides a judgment: part of the identity of every run it judges."""
        identity = {"spec": self.spec, "annotator": self.name, "template_sha256": self.template_sha256,
                    "parser": self.settings.get("fn_completion_parser"),
                    "parser_kwargs": self.settings.get("completion_parser_kwargs", {}), "orders": self.orders}
        if self.pointwise is not None:
            identity |= {"fingerprint": self.local.fingerprint, "completion": "bench.evaluation.judge.PointwiseScores",
                         "parser": "logistic of the difference in log-odds of Yes over No", "orders": "none"}
        elif self.local is not None:
            identity |= {"fingerprint": self.local.fingerprint, "completion": "bench.evaluation.judge.LocalCompletions"}
        else:
            identity |= {"completion": self.settings.get("fn_completions"),
                         "completions_kwargs": self.settings.get("completions_kwargs", {})}
        return identity

    def key(self) -> str:
        return _sha256(json.dumps(self.identity(), sort_keys=True))[:16]

    def cache_id(self) -> str:
        """The judge part of a cached judgment's key: for a local judge, besides its identity, the model's decoding
        files (its chat template renders the judge's prompt) and the engine whose forward gave the log-probabilities,
        so that neither change is served the judgments of before. Not in the identity: judged runs stay valid."""
        if self.local is None:
            return self.key()
        from bench.generation.engine import ENGINE_VERSION

        return _sha256(f"{self.key()}:{self.local.cache_id}:engine{ENGINE_VERSION}")[:16]

    def check(self) -> None:
        """Before any generation: an API judge needs a key and an endpoint that answers (one line if not)."""
        if self.local is None and self.settings.get("fn_completions") == "openai_completions":
            check_openai_endpoint(self.spec, self.settings.get("completions_kwargs", {}).get("model_name"))

    def _pointwise_preferences(self, instructions: list[str], first: list[str], second: list[str]) -> list[Preference]:
        """The logistic of the second output's log-odds minus the first's: alike in either order by construction."""
        prompts = [POINTWISE_PROMPT.format(instruction=i, output=o) for i, o in zip(instructions * 2, first + second)]
        scored = CachedCompletions(self.pointwise, self.cache, self.cache_id())(prompts)
        log_odds, seconds = scored["log_odds"], scored["time_per_example"]
        out = []
        for i in range(len(instructions)):
            j = i + len(instructions)
            p = 1 / (1 + math.exp(log_odds[i] - log_odds[j]))
            out.append(Preference(p, (p, p), seconds=seconds[i] + seconds[j]))
        return out

    def _annotator(self):
        from alpaca_eval.annotators import PairwiseAnnotator

        annotator = PairwiseAnnotator(annotators_config=str(self.config), seed=0, caching_path=None,
                                      is_avoid_reannotations=False, is_randomize_output_order=self.orders == "random")
        for single in annotator.annotators.values():
            single.fn_completions = CachedCompletions(self.completions or single.fn_completions, self.cache, self.cache_id())
        return annotator

    def preferences(self, instructions: list[str], first: list[str], second: list[str], progress=None,
                    label: str = "judge") -> list[Preference]:
        """Per pair, the judge's preference for `second` over `first`, averaged over the judged orders."""
        import logging

        logging.getLogger().setLevel(logging.WARNING)  # alpaca_eval sets INFO at import: one line per batch
        annotator = self._annotator() if self.pointwise is None else None
        bar = progress.add_task(label, total=len(instructions), rate="") if progress else None
        out, started = [], time.perf_counter()
        for start in range(0, len(instructions), JUDGE_CHUNK):
            chunk = slice(start, start + JUDGE_CHUNK)
            if self.pointwise is not None:
                out += self._pointwise_preferences(instructions[chunk], first[chunk], second[chunk])
            else:
                given = _annotate(annotator, instructions[chunk], first[chunk], second[chunk])
                swapped = [(None if p is None else 1 - p, t) for p, t in
                           _annotate(annotator, instructions[chunk], second[chunk], first[chunk])] \
                    if self.orders == "both" else [(None, 0.0)] * len(given)
                for (forward, t1), (backward, t2) in zip(given, swapped):
                    orders = tuple(p for p in (forward, backward) if p is not None)
                    out.append(Preference(sum(orders) / len(orders) if orders else 0.5, orders, not orders, t1 + t2))
            if progress is not None:
                done = min(start + JUDGE_CHUNK, len(instructions))
                progress.update(bar, completed=done, rate=f"{(time.perf_counter() - started) / done:.2f} s/pair")
        return out


def _annotate(annotator, instructions: list[str], outputs_1: list[str],
              outputs_2: list[str]) -> list[tuple[float | None, float]]:
    """alpaca_eval's preferences (1: output_1 better, 2: output_2 better) as the probability that output_2 is better,
    each with the seconds its judgment took."""
    import pandas as pd

    frame = lambda outputs, name: pd.DataFrame({"instruction": instructions, "output": outputs, "generator": name})
    annotated = annotator.annotate_head2head(outputs_1=frame(outputs_1, "output_1"),
                                             outputs_2=frame(outputs_2, "output_2"), is_ordered=True)
    found = {(row["instruction"], row["output_1"], row["output_2"]): row for row in annotated}
    rows = [found.get(key, {}) for key in zip(instructions, outputs_1, outputs_2)]  # in our order, whatever its order
    values = [(row.get("preference"), row.get("preference_time_per_example") or 0.0) for row in rows]
    return [(None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) - 1, float(t))
            for v, t in values]


def read_model_outputs(path: Path) -> list[dict[str, str]]:
    """alpaca_eval's model_outputs.json: a list of {instruction, output[, generator]}; anything else names the entry."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(entries, list) or not entries:
        raise BenchError(f"{path}: expected a non-empty JSON list of {{instruction, output}} objects")
    for i, entry in enumerate(entries):
        for key in ("instruction", "output"):
            if not isinstance(entry, dict) or not isinstance(entry.get(key), str):
                raise BenchError(f"{path}: entry {i}: missing or non-string {key!r}")
    return entries


def paired_outputs(outputs: list[dict[str, str]], references: list[dict[str, str]], where: str) -> list[int]:
    """For each model output, the index of the reference with the same instruction; every instruction must have
    exactly one reference, and no reference may be left without its output."""
    index = {r["instruction"]: i for i, r in enumerate(references)}
    places = []
    for i, entry in enumerate(outputs):
        if entry["instruction"] not in index:
            raise BenchError(f"{where}: entry {i}: instruction {entry['instruction'][:60]!r} is not among the "
                             f"references' instructions")
        places.append(index[entry["instruction"]])
    if len(set(places)) != len(places) or len(places) != len(references):
        raise BenchError(f"{where}: {len(places)} outputs for {len(set(places))} distinct instructions of "
                         f"{len(references)} references; give one output per reference instruction (--limit)")
    return places


def check_openai_endpoint(spec: str, model_name: str | None) -> None:
    """A key and an endpoint that answers, checked in seconds; any HTTP answer but a rejected key will do."""
    import openai

    config_path = os.environ.get("OPENAI_CLIENT_CONFIG_PATH")
    if config_path and Path(config_path).is_file():
        from alpaca_eval.utils import load_configs

        entries = load_configs(config_path)
        clients = entries.get(model_name) or entries.get("default") or next(iter(entries.values()))
        client_kwargs = clients[0] if isinstance(clients, list) else clients
        client_kwargs = {k: v for k, v in client_kwargs.items() if k in ("api_key", "base_url", "organization")}
    else:
        key = (os.environ.get("OPENAI_API_KEYS") or os.environ.get("OPENAI_API_KEY") or "").split(",")[0]
        if not key:
            raise BenchError(f"--judge {spec}: no API key (set OPENAI_API_KEY, or OPENAI_CLIENT_CONFIG_PATH for "
                             f"another OpenAI-compatible endpoint; offline, judge with --judge local:MODEL)")
        client_kwargs = {"api_key": key, **({"base_url": os.environ["OPENAI_API_BASE"]}
                                           if os.environ.get("OPENAI_API_BASE") else {})}
    try:
        client = openai.OpenAI(**client_kwargs, timeout=API_TIMEOUT_S, max_retries=0)
        client.models.list()
    except openai.AuthenticationError:
        raise BenchError(f"--judge {spec}: the endpoint {client.base_url} rejected the API key") from None
    except openai.APIStatusError:
        return  # it answered: an endpoint without a model list is still there
    except (openai.APIConnectionError, openai.OpenAIError) as e:
        raise BenchError(f"--judge {spec}: the endpoint {client_kwargs.get('base_url') or 'api.openai.com'} is "
                         f"unreachable ({type(e).__name__})") from None


def win_rates(preferences: list[Preference]) -> dict[str, Any]:
    """alpaca_eval's win rate (ties as half) and discrete win rate of the second outputs, its own function."""
    from alpaca_eval.metrics import get_winrate

    reported = get_winrate([{"preference": 1 + p.second} for p in preferences])
    return {k: (float(v) if isinstance(v, float) else int(v)) for k, v in reported.items()}


def order_statistics(preferences: list[Preference]) -> dict[str, Any]:
    """Position bias: how often the verdict flips when the outputs swap places, and how often the first shown wins."""
    both = [p for p in preferences if len(p.orders) == 2]
    if not both:
        return {"pairs_in_both_orders": 0}
    first_shown = [1 - p.orders[0] for p in both] + [p.orders[1] for p in both]
    return {"pairs_in_both_orders": len(both), "flip_rate": sum(p.flipped for p in both) / len(both),
            "first_position_preference": sum(first_shown) / len(first_shown)}


def length_controlled(indices: list[int], references: list[str], outputs: list[str],
                      preferences: list[Preference], annotator: str, generator: str) -> dict[str, Any]:
    """alpaca_eval's length-controlled win rate (`indices`: the instructions' places among AlpacaEval's 805); its
    regression reads `df_gamed.csv` from the Hub, so without the Hub it is recorded as unavailable, with the reason."""
    from bench.evaluation.lmeval import hub_unreachable

    reason = hub_unreachable("tatsu-lab/alpaca_eval")
    if reason is not None:
        return {"unavailable": f"needs df_gamed.csv from the Hub: {reason}"}
    import pandas as pd
    from alpaca_eval.metrics import get_length_controlled_winrate

    frame = pd.DataFrame({"index": indices, "output_1": references, "output_2": outputs,
                          "generator_1": "text_davinci_003", "generator_2": generator, "annotator": annotator,
                          "preference": [1 + p.second for p in preferences]})
    try:
        reported = get_length_controlled_winrate(frame, save_weights_dir=None)
    except Exception as e:  # a download or a fit that fails: reported, not fatal to the run
        return {"unavailable": f"alpaca_eval's length-controlled fit failed ({type(e).__name__}: {e})"}
    return {k: float(v) for k, v in reported.items() if k in ("length_controlled_winrate", "lc_standard_error")}
