# The two commands a user needs: `make demo` and `make test`. Each sets up what it needs from scratch.
PYTHON ?= python3
VENV := .venv
ORACLE := .venv-oracle
PY := $(VENV)/bin/python
PIP_FLAGS := --disable-pip-version-check -q
# setuptools prints an "Editable installation" information box for every editable install of a package whose import
# names differ from its folders (rerank_runtime lives in runtime/): nothing is wrong, so the box is filtered out.
EDITABLE := PYTHONWARNINGS="ignore:Editable installation"

.PHONY: demo test lint bench bench-serve setup oracle clean

# Where torch comes from: by default wherever pip finds it (the package index's torch is the CUDA build on Linux, some
# GB); TORCH_INDEX=https://download.pytorch.org/whl/cpu adds PyTorch's CPU index, whose `+cpu` builds pip prefers.
TORCH_INDEX ?=
TORCH_FROM := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

# The product's environment, CPU flavour: the runtime, the exporter, the server (embedded and Ray) and the test tools.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(EDITABLE) $(PY) -m pip install $(PIP_FLAGS) $(TORCH_FROM) -e '.[cpu,export,serve,ray,test]'
	touch $@

# FlagEmbedding 1.4.2 in its own pinned environment: the oracle that the parity tests compare against.
$(ORACLE)/.installed: tests/oracle/requirements.txt
	$(PYTHON) -m venv $(ORACLE)
	$(ORACLE)/bin/python -m pip install $(PIP_FLAGS) $(TORCH_FROM) -r tests/oracle/requirements.txt
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
	$(EDITABLE) $(PY) -m pip install $(PIP_FLAGS) -e '.[cpu,export,bench]'
	RERANK_ORACLE_PYTHON=$(abspath $(ORACLE))/bin/python $(PY) benchmarks/bench_rerank.py

# rerank-serve under bounded loopback load (embedded server, batching on and off, a peer server where installed).
bench-serve: $(VENV)/.installed
	$(EDITABLE) $(PY) -m pip install $(PIP_FLAGS) -e '.[cpu,export,serve,bench]'
	$(PY) benchmarks/bench_serve.py

# Everything the targets above made here, and the built-in models generated into the user's cache (RERANK_CACHE,
# default ~/.cache/rerank): `rerank-export cache --clean` removes only directories laid out as rerank-export writes
# them, and lists anything else it finds there.
clean:
	@if [ -x $(VENV)/bin/rerank-export ]; then $(VENV)/bin/rerank-export cache --clean; \
	else echo "no $(VENV): the built-in model cache ($${RERANK_CACHE:-~/.cache/rerank}) is left as it is"; fi
	rm -rf $(VENV) $(ORACLE) .cache exports demo bge_rerank_fast.egg-info
