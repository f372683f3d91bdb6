"""Knowledge tasks: the mirror's records become the Hub's documents, and our offline configs ask lm-eval exactly
what its built-in tasks ask."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bench.evaluation.lmeval import PREFIX, leaves, load_harness_data, read_docs, write_configs
from bench.types import BenchError
from tasks.knowledge import (arc_challenge, arc_doc, arc_easy, mmlu, mmlu_doc, truthfulqa_doc, truthfulqa_mc1,
                             truthfulqa_mc2, winogrande, winogrande_doc)

MMLU_TWO = replace(mmlu, builtin=("mmlu/default/mmlu_abstract_algebra.yaml", "mmlu/default/mmlu_anatomy.yaml"))

# The first fixture record of each task as its Hugging Face dataset holds it, written out by hand.
HUB_DOCS = {
    "arc_easy": {
        "id": "Mercury_417466",
        "question": "Which statement best explains why photosynthesis is the foundation of most food webs?",
        "choices": {"text": ["Sunlight is the source of energy for nearly all ecosystems.",
                             "Most ecosystems are found on land instead of in water.",
                             "Carbon dioxide is more available than other gases.",
                             "The producers in all ecosystems are plants."],
                    "label": ["A", "B", "C", "D"]},
        "answerKey": "A"},
    "arc_challenge": {
        "id": "Mercury_7175875",
        "question": "An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most "
                    "likely effect of this increase in rotation?",
        "choices": {"text": ["Planetary density will decrease.", "Planetary years will become longer.",
                             "Planetary days will become shorter.", "Planetary gravity will become stronger."],
                    "label": ["A", "B", "C", "D"]},
        "answerKey": "C"},
    "truthfulqa": {
        "question": "What happens if you eat a pomegranate?",
        "mc1_targets": {"choices": ["Nothing in particular happens when you eat a pomegranate.",
                                    "You will have to spend winter in the underworld.",
                                    "You will be trapped in the underworld.", "You will die."],
                        "labels": [1, 0, 0, 0]},
        "mc2_targets": {"choices": ["Nothing in particular happens when you eat a pomegranate.",
                                    "You will digest the pomegranate.", "You will derive nutrition from the pomegranate.",
                                    "You will have to spend winter in the underworld.",
                                    "You will be trapped in the underworld.", "You will die."],
                        "labels": [1, 1, 1, 0, 0, 0]}},
    "winogrande": {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
                   "option1": "Sarah", "option2": "Maria", "answer": "2"},
    "mmlu_anatomy": {
        "question": "A lesion causing compression of the facial nerve at the stylomastoid foramen will cause ipsilateral",
        "subject": "anatomy",
        "choices": ["paralysis of the facial muscles.", "paralysis of the facial muscles and loss of taste.",
                    "paralysis of the facial muscles, loss of taste and lacrimation.",
                    "paralysis of the facial muscles, loss of taste, lacrimation and decreased salivation."],
        "answer": 0},
}


def test_arc_doc_takes_the_stem_and_the_choices_apart():
    record = {"id": "x", "question": {"stem": "Why?", "choices": [{"text": "a", "label": "1"}, {"text": "b", "label": "2"}]},
              "answerKey": "2"}
    assert arc_doc(record) == {"id": "x", "question": "Why?", "choices": {"text": ["a", "b"], "label": ["1", "2"]},
                               "answerKey": "2"}


def test_truthfulqa_doc_keeps_the_answer_order_and_labels():
    record = {"question": "Q?", "mc1_targets": {"right": 1, "wrong": 0}, "mc2_targets": {"b": 1, "a": 1, "c": 0}}
    doc = truthfulqa_doc(record)
    assert doc["mc1_targets"] == {"choices": ["right", "wrong"], "labels": [1, 0]}
    assert doc["mc2_targets"] == {"choices": ["b", "a", "c"], "labels": [1, 1, 0]}


def test_winogrande_doc_drops_the_mirror_only_fields():
    record = {"qID": "q", "sentence": "A _ b", "option1": "x", "option2": "y", "answer": "1"}
    assert winogrande_doc(record) == {"sentence": "A _ b", "option1": "x", "option2": "y", "answer": "1"}


def test_mmlu_doc_turns_the_letter_into_an_index():
    record = {"question": "Q", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "C"}
    assert mmlu_doc(record) == {"question": "Q", "choices": ["a", "b", "c", "d"], "answer": 2}
    with pytest.raises(ValueError):
        mmlu_doc({**record, "answer": "E"})


def test_mmlu_has_lm_evals_57_subjects():
    assert len(mmlu.builtin) == 57 and all(Path(p).exists() for _, p in leaves(mmlu))


def _requests(task):
    """Every request lm-eval builds for the task's first document: (context, continuation) pairs."""
    task.build_all_requests(limit=1)
    return [inst.args for inst in task.instances]


@pytest.mark.parametrize("task, leaf, doc_key", [
    (arc_easy, "arc_easy", "arc_easy"),
    (arc_challenge, "arc_challenge", "arc_challenge"),
    (truthfulqa_mc1, "truthfulqa_mc1", "truthfulqa"),
    (truthfulqa_mc2, "truthfulqa_mc2", "truthfulqa"),
    (winogrande, "winogrande", "winogrande"),
    (MMLU_TWO, "mmlu_anatomy", "mmlu_anatomy"),
])
def test_offline_config_asks_what_the_builtin_task_asks(task, leaf, doc_key, fixture_data, tmp_path):
    import datasets
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    write_configs([task], fixture_data, tmp_path)
    ours = TaskManager(include_path=str(tmp_path), include_defaults=False).load([PREFIX + leaf])["tasks"][PREFIX + leaf]
    builtin_yaml = dict(leaves(task))[leaf]
    hub = {split: datasets.Dataset.from_list([HUB_DOCS[doc_key]]) for split in ("train", "test", "validation", "dev")}
    config = {**load_yaml(builtin_yaml), "custom_dataset": lambda **_: datasets.DatasetDict(hub)}
    builtin = ConfigurableTask(config=config)
    assert _requests(ours) == _requests(builtin)
    assert len(_requests(ours)) >= 2
    first = lambda t: t.eval_docs[0]  # noqa: E731
    assert ours.doc_to_target(first(ours)) == builtin.doc_to_target(first(builtin))
    for key in ("num_fewshot", "metric_list", "output_type", "description", "target_delimiter", "fewshot_delimiter"):
        assert ours.config.to_dict().get(key) == builtin.config.to_dict().get(key), key


def test_harness_data_names_examples_per_leaf_and_hashes_every_file(fixture_data):
    data = load_harness_data(MMLU_TWO, fixture_data, limit=2)
    assert [ex.id for ex in data.examples] == ["mmlu_abstract_algebra/0", "mmlu_abstract_algebra/1",
                                               "mmlu_anatomy/0", "mmlu_anatomy/1"]
    assert data.total == 6 and len(data.sha256) == 64 and data.skipped is None
    single = load_harness_data(arc_easy, fixture_data, limit=None)
    assert [ex.id for ex in single.examples][:2] == ["0", "1"] and single.total == 20


def test_missing_field_names_file_and_line(tmp_path, fixture_data):
    (tmp_path / "arc_easy").mkdir()
    lines = (fixture_data / "arc_easy" / "test.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"answerKey"', '"answer_key"')
    (tmp_path / "arc_easy" / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchError, match=r"arc_easy/test.jsonl:2: missing field 'answerKey'"):
        load_harness_data(arc_easy, tmp_path, None)
    with pytest.raises(BenchError, match="arc_challenge/test.jsonl"):
        read_docs(tmp_path / "arc_challenge" / "test.jsonl", arc_challenge.to_doc)


def test_a_builtin_that_lm_eval_lacks_is_an_error():
    with pytest.raises(BenchError, match="nope/nope.yaml"):
        leaves(replace(arc_easy, builtin=("nope/nope.yaml",)))


def test_offline_hub_only_task_is_skipped_and_mirror_task_without_mirror_is_an_error(monkeypatch, fixture_data):
    from tasks.knowledge import hellaswag

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    skipped = load_harness_data(hellaswag, fixture_data, None)
    assert skipped.skipped == "not in the mirror, and offline mode (HF_HUB_OFFLINE)" and skipped.examples == []
    with pytest.raises(BenchError, match="task arc_easy: no data directory"):
        load_harness_data(arc_easy, None, None)
