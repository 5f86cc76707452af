# The two commands a user needs: `make demo` and `make test`. Each sets up what it needs from scratch.
PYTHON ?= python3
VENV := .venv
ORACLE := .venv-oracle
PY := $(VENV)/bin/python
PIP_FLAGS := --disable-pip-version-check -q

.PHONY: demo test lint bench bench-serve setup oracle clean

# The product's environment, CPU flavour: the runtime, the exporter, the server (embedded and Ray) and the test tools.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e '.[cpu,export,serve,ray,test]'
	touch $@

# FlagEmbedding 1.4.2 in its own pinned environment: the oracle that the parity tests compare against.
$(ORACLE)/.installed: tests/oracle/requirements.txt
	$(PYTHON) -m venv $(ORACLE)
	$(ORACLE)/bin/python -m pip install $(PIP_FLAGS) -r tests/oracle/requirements.txt
	touch $@

setup: $(VENV)/.installed
oracle: $(ORACLE)/.installed

demo: $(VENV)/.installed
	$(PY) -m rerank_export.demo

# Lint (ruff) and type-check the runtime (basedpyright) first: both are configured in pyproject.toml.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/basedpyright --pythonpath $(PY)

test: lint $(VENV)/.installed $(ORACLE)/.installed
	RERANK_ORACLE_PYTHON=$(abspath $(ORACLE))/bin/python $(PY) -m pytest -q

# sentence-transformers' ONNX CrossEncoder, a benchmark contender, in its own environment (optimum-onnx pins transformers).
BENCH_ST := .cache/bench/venv-st
$(BENCH_ST)/.installed: benchmarks/st-requirements.txt
	$(PYTHON) -m venv $(BENCH_ST)
	$(BENCH_ST)/bin/python -m pip install $(PIP_FLAGS) -r benchmarks/st-requirements.txt
	touch $@

bench: $(VENV)/.installed $(ORACLE)/.installed $(BENCH_ST)/.installed
	$(PY) -m pip install $(PIP_FLAGS) -e '.[cpu,export,bench]'
	RERANK_ORACLE_PYTHON=$(abspath $(ORACLE))/bin/python $(PY) benchmarks/bench_rerank.py

# rerank-serve under bounded loopback load (embedded server, batching on and off, a peer server where installed).
bench-serve: $(VENV)/.installed
	$(PY) -m pip install $(PIP_FLAGS) -e '.[cpu,export,serve,bench]'
	$(PY) benchmarks/bench_serve.py

clean:
	rm -rf $(VENV) $(ORACLE) .cache exports demo
