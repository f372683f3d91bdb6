"""lm-evaluation-harness as the backend of knowledge tasks: its tasks, prompts and metrics on our model.

`write_configs` writes one lm-eval task config per leaf task: an `include:` of the built-in YAML (prompts,
few-shot settings and metrics unchanged), renamed `forgetbench_<leaf>`, and, with a mirror, a `custom_dataset`
that reads the mirror's JSON lines through `mirror_dataset`. lm-eval's own command line reads the same configs
(`lm_eval --include_path DIR --tasks forgetbench_arc_easy`). Per-example rows come from lm-eval's `log_samples`.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from bench.data import LoadedData, read_jsonl, sha256_file
from bench.distributed import world
from bench.generation.engine import ENGINE_VERSION
from bench.types import BenchError, Example, HarnessTask

PREFIX = "forgetbench_"
HUB_TIMEOUT_S = 10


def builtin_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("knowledge tasks need lm-eval (pip install lm-eval, or make install)")
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


def leaves(task: HarnessTask) -> list[tuple[str, Path]]:
    """(leaf id, built-in YAML) for each leaf: the task's own name for a one-leaf task, else the YAML's stem."""
    if not task.builtin:
        raise BenchError(f"task {task.name}: lm-eval has no built-in tasks for it in this version")
    base = builtin_dir()
    for b in task.builtin:
        if not (base / b).is_file():
            raise BenchError(f"task {task.name}: lm-eval has no task config {b} (in {base})")
    if len(task.builtin) == 1:
        return [(task.name, base / task.builtin[0])]
    return [(Path(b).stem, base / b) for b in task.builtin]


def mirror_files(task: HarnessTask, leaf: str, data_dir: Path | None) -> dict[str, Path] | None:
    if data_dir is None or task.files is None:
        return None
    return {split: data_dir / rel for split, rel in task.files(leaf).items()}


def eval_split(files: dict[str, Any]) -> str:
    """The split lm-eval scores: test where the task has one, else validation (the others feed few-shot)."""
    return "test" if "test" in files else "validation"


def _function(dotted: str) -> Callable[[dict], dict]:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def read_docs(path: Path, to_doc: str) -> list[dict[str, Any]]:
    """Mirror records as lm-eval documents; a record missing a field is an error naming file and line."""
    if not path.is_file():
        raise BenchError(f"dataset not found: {path}")
    convert, docs = _function(to_doc), []
    for lineno, record in read_jsonl(path):
        try:
            docs.append(convert(record))
        except KeyError as e:
            raise BenchError(f"{path}:{lineno}: missing field {e}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise BenchError(f"{path}:{lineno}: bad record ({e})") from None
    return docs


def mirror_dataset(files: dict[str, str], to_doc: str, **_: Any):
    """lm-eval's `custom_dataset` hook for mirror files (lm-eval passes task metadata too: ignored)."""
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(read_docs(Path(path), to_doc))
                                 for split, path in files.items()})


def write_configs(tasks: list[HarnessTask], data_dir: Path | None, out_dir: Path) -> list[str]:
    """One YAML per leaf task in `out_dir`; returns the lm-eval task names, in order."""
    import yaml

    names = []
    for task in tasks:
        for leaf, builtin in leaves(task):
            config: dict[str, Any] = {"include": str(builtin), "task": PREFIX + leaf, "tag": PREFIX + "knowledge"}
            files = mirror_files(task, leaf, data_dir.resolve() if data_dir is not None else None)
            if files is not None:
                config.update(
                    dataset_path=str(data_dir.resolve()), dataset_name=None,
                    dataset_kwargs={"files": {split: str(path) for split, path in files.items()},
                                    "to_doc": task.to_doc},
                    training_split=None, validation_split="validation" if "validation" in files else None,
                    test_split="test" if "test" in files else None)
                if "dev" not in files:
                    config["fewshot_split"] = None
            text = yaml.safe_dump(config, sort_keys=False)
            if files is not None:
                text += "custom_dataset: !function bench.evaluation.lmeval.mirror_dataset\n"
            (out_dir / f"{PREFIX}{leaf}.yaml").write_text(text)
            names.append(PREFIX + leaf)
    return names


def hub_dataset(builtin: Path) -> str:
    """The Hub dataset a built-in task reads (following its includes)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(builtin, resolve_func=False)["dataset_path"]


def hub_unreachable(dataset: str) -> str | None:
    """Why the Hub cannot serve `dataset` now, or None when it can (checked in seconds, never a hang)."""
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE"):
        return "offline mode (HF_HUB_OFFLINE)"
    from huggingface_hub import HfApi

    try:
        HfApi().dataset_info(dataset, timeout=HUB_TIMEOUT_S)
    except Exception as e:  # connection, DNS, auth, missing repo: all mean it cannot be read here
        return f"the Hub is unreachable ({type(e).__name__})"
    return None


def load_harness_data(task: HarnessTask, data_dir: Path | None, limit: int | None) -> LoadedData:
    """Validate the task's mirror files and name its examples (`LEAF/i` for groups, `i` otherwise) as lm-eval
    will see them: the first `limit` documents of each leaf. A Hub-only task that cannot reach the Hub is
    `skipped`, with the reason; a mirror task without a mirror and without the Hub is an error."""
    pairs = leaves(task)
    if mirror_files(task, pairs[0][0], data_dir) is None:
        dataset = hub_dataset(pairs[0][1])
        reason = hub_unreachable(dataset)
        if reason is not None and task.files is not None:  # it has a mirror layout: the user forgot the mirror
            raise BenchError(f"task {task.name}: no data directory (set --data-dir or $BENCH_DATA_DIR) and {reason}")
        if reason is not None:
            reason = f"not in the mirror, and {reason}"
        return LoadedData([], f"hf://{dataset}", "", 0, skipped=reason, limit=limit)
    examples, total, digest, hashes = [], 0, hashlib.sha256(), []
    for leaf, _ in pairs:
        files = mirror_files(task, leaf, data_dir)
        for split, path in sorted(files.items()):
            docs = read_docs(path, task.to_doc)
            hashes.append((path, sha256_file(path)))
            if split == eval_split(files):
                total += len(docs)
                ids = [str(i) if len(pairs) == 1 else f"{leaf}/{i}" for i in range(len(docs))]
                examples += [Example(id=i, input="") for i in ids[:limit]]
    for path, sha in hashes:
        digest.update(f"{path.relative_to(data_dir)}:{sha}\n".encode())
    sha256 = hashes[0][1] if len(hashes) == 1 else digest.hexdigest()
    source = str(hashes[0][0]) if len(hashes) == 1 else f"{data_dir}/{task.name} ({len(hashes)} files)"
    return LoadedData(examples, source, sha256, total, limit=limit)


class Harness:
    """lm-eval on our model for the whole run: its tasks through `engine_lm` (the engine that generates scores the
    log-likelihoods), and lm-eval's request cache per model fingerprint (a killed run re-run recomputes only what is
    missing)."""

    def __init__(self, model, engine, cache_dir: Path, data_dir: Path | None):
        self.model, self.engine, self.data_dir = model, engine, data_dir
        # Per engine version: how requests are packed into passes changes bf16 sums (across documents since
        # 2026-12-04, at most MAX_PREFILL_TOKENS a pass since version 3).
        self.cache = cache_dir / "lm_eval" / f"{model.cache_id}-engine{ENGINE_VERSION}"
        self._lm = None

    def settings(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {"lm_eval": version("lm_eval"), "model": "forgetbench engine (bench.evaluation.lmeval.engine_lm)",
                "dtype": self.model.dtype, "engine": ENGINE_VERSION}

    def lm(self):
        if self._lm is None:
            self._lm = engine_lm(self.model, self.engine)
        return self._lm

    def run(self, task: HarnessTask, limit: int | None,
            ids: list[str] | None = None) -> tuple[list[dict], dict[str, Any]]:
        """lm-eval's per-example rows for the task (in our row format) and its reported results per leaf: of the
        first `limit` documents of each leaf, or of the examples `ids` (a shard's, `LEAF/i` or `i`) alone."""
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task notes about custom datasets are noise here
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="forgetbench-lm-eval-") as tmp:
            names = write_configs([task], self.data_dir, Path(tmp))
            selection: dict[str, Any] = {"limit": limit}
            if ids is not None:
                docs: dict[str, list[int]] = {name: [] for name in names}
                for i in ids:
                    leaf, _, doc = i.rpartition("/")
                    docs[PREFIX + leaf if leaf else names[0]].append(int(doc))
                names = [name for name in names if docs[name]]
                selection = {"samples": {name: docs[name] for name in names}}
            # Under a launcher each rank evaluates its own shard whole: lm-eval must neither take a LOCAL_RANK
            # other than 0 for tensor parallelism (it then returns nothing) nor share one request cache file.
            local_rank, rank = os.environ.pop("LOCAL_RANK", None), world().rank
            try:
                out = simple_evaluate(model=self.lm(), tasks=names, task_manager=TaskManager(
                    include_path=tmp, include_defaults=False), log_samples=True,
                    use_cache=str(self.cache) + (f"-process{rank}" if rank else ""), **selection)
            finally:
                if local_rank is not None:
                    os.environ["LOCAL_RANK"] = local_rank
        rows = []
        for name in names:
            leaf = name.removeprefix(PREFIX)
            for sample in sorted(out["samples"][name], key=lambda s: s["doc_id"]):
                rows.append(sample_row(sample, leaf if len(names) > 1 else None, task.metric))
        reported = {name.removeprefix(PREFIX): {k: v for k, v in out["results"][name].items() if k != "alias"}
                    for name in names}
        return rows, {"results": reported, "n-shot": {n.removeprefix(PREFIX): out["n-shot"][n] for n in names}}


def reported_from_rows(rows: list[dict[str, Any]], metric: str, shard_reported: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's reported results per leaf for rows merged from shards, by lm-eval's own aggregation (each metric's
    mean and its standard error) over each leaf's rows; the keys are the shards' (`shard_reported`)."""
    from lm_eval.api.metrics import mean, stderr_for_metric

    by_leaf: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        leaf = row["id"].rpartition("/")[0] or next(iter(shard_reported["results"]))
        by_leaf.setdefault(leaf, []).append(row)
    results = {}
    for leaf, leaf_rows in by_leaf.items():
        results[leaf] = {}
        for key, value in shard_reported["results"][leaf].items():
            name, comma, kind = key.partition(",")
            if not comma:  # not a metric: the leaf's name, its number of documents
                results[leaf][key] = len(leaf_rows) if key == "sample_len" else value
            if not comma or name.endswith("_stderr"):
                continue
            values = [r["score"] if name == metric else r["scores"][name] for r in leaf_rows]
            results[leaf][key] = mean(values)
            results[leaf][f"{name}_stderr,{kind}"] = stderr_for_metric(mean, 100000)(values)
    return {**shard_reported, "results": results}


def sample_row(sample: dict[str, Any], leaf: str | None, metric: str) -> dict[str, Any]:
    """One lm-eval `log_samples` record as a predictions.jsonl row: what was asked, each choice's
    log-likelihood, the choice the model prefers, the gold answer, and lm-eval's own scores."""
    requests = [list(args[:2]) for args in sample["arguments"]]
    loglikelihoods = [float(resp[0]) for resp in sample["filtered_resps"]]
    chosen = max(range(len(loglikelihoods)), key=loglikelihoods.__getitem__)
    shared_context = len({context for context, _ in requests}) == 1
    row = {"id": str(sample["doc_id"]) if leaf is None else f"{leaf}/{sample['doc_id']}",
           "prompt": requests[0][0] if shared_context else None,
           "output": requests[chosen][1] if shared_context else requests[chosen][0],
           "reference": sample["target"], "score": float(sample[metric]), "answer": chosen,
           "requests": requests, "loglikelihoods": loglikelihoods, "doc": sample["doc"]}
    others = {m: float(sample[m]) for m in sample.get("metrics", []) if m != metric and m in sample}
    if others:
        row["scores"] = others
    return row


def engine_lm(model, engine):
    """lm-eval's model interface on our engine: log-likelihoods only, the requests of knowledge tasks. Requests are
    tokenized as lm-eval's hf backend does (TemplateLM's context/continuation split, HFLM's `tok_encode`, its left
    truncation at the model's maximum length) and scored by `loglikelihoods`, so a batch's memory is bounded by the
    engine's token budget, not by batch x length x vocabulary as in the hf backend, and the model in memory is the
    one that generates (the hf backend loads a second copy). lm-eval is imported here, where it is used."""
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.utils import DEFAULT_MAX_LENGTH, has_bos_prefix, resolve_max_length

    class EngineLM(TemplateLM):
        def __init__(self):
            super().__init__()
            self.tokenizer = model.tokenizer
            self.max_length = resolve_max_length(model.model.config, model.tokenizer, default=DEFAULT_MAX_LENGTH)

        @property
        def eot_token_id(self) -> int:
            return self.tokenizer.eos_token_id

        @property
        def prefix_token_id(self) -> int:
            bos = self.tokenizer.bos_token_id
            return bos if bos is not None else self.tokenizer.eos_token_id

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_) -> list[int]:
            kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
            if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
                kwargs["add_special_tokens"] = False
            return self.tokenizer.encode(string, **kwargs)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_) -> list[tuple[float, bool]]:
            return loglikelihoods(engine, [(context, continuation) for _, context, continuation in requests],
                                  self.max_length)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise BenchError("the engine's lm-eval model scores continuations only (no rolling perplexity tasks)")

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise BenchError("the engine's lm-eval model scores log-likelihoods only: a generative task is a "
                             "forgetbench Task, which the engine runs directly")

    return EngineLM()


def loglikelihoods(engine, pairs: list[tuple[list[int], list[int]]], max_length: int) -> list[tuple[float, bool]]:
    """Per (context, continuation) token lists: the continuation's summed log-probability and whether greedy decoding
    gives it, the context left-truncated as lm-eval's hf backend does (context and continuation to max_length + 1
    tokens). The continuations of one context form a group and `Engine.score_continuations` scores all groups
    together: packed across requests, each context once, the LM head only at the scored positions."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (context, continuation) in enumerate(pairs):
        whole = (context + continuation)[-(max_length + 1):]
        if len(whole) <= len(continuation):
            raise BenchError(f"a continuation of {len(continuation)} tokens leaves no context within the model's "
                             f"{max_length} positions")
        groups.setdefault(tuple(whole[:len(whole) - len(continuation)]), []).append(i)
    scored = engine.score_continuations([(list(context), [pairs[i][1] for i in members])
                                         for context, members in groups.items()])
    out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    for members, scores in zip(groups.values(), scored):
        for i, score in zip(members, scores):
            out[i] = score
    return out
