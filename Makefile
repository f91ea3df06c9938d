# One-command set-up: every target creates .venv when missing and installs into it.
PY := .venv/bin/python
TORCH_PIN := torch==2.13.0
# The local CPU wheel, where this machine has one (an unpinned torch pulls GBs of CUDA).
WHEELS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)

.PHONY: install test run serve lint bench grpo

.venv/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q $(WHEELS) $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev]"
	# build the CPU kernels now (g++; each warns and falls back to torch ops without it)
	$(PY) -c "from rlserve.models import decode_step, fused, int8_build, paged_kernel; int8_build.int8_kernel(); paged_kernel.kernel(); fused.kernel(); decode_step.kernel()"
	touch $@

install: .venv/.installed

test: install
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check src tests bench scripts examples
	$(PY) -m ruff format --check src tests bench scripts examples

# make serve PORT=8001 HOST=127.0.0.1 ARGS="--max-batch 32"
PORT ?= 8000
HOST ?= 127.0.0.1
serve: install
	.venv/bin/rlserve serve --host $(HOST) --port $(PORT) $(ARGS)

run: install
	.venv/bin/rlserve generate --chat "What is 37 + 48?" --max-tokens 32 --logprobs

bench: install
	$(PY) bench/throughput.py --quick

# GRPO on the bundled model, 9 minutes on CPU (examples/grpo.py --help for the knobs):
# make grpo ARGS="--async" | ARGS="--server http://127.0.0.1:8000" | ARGS="--seed 1"
grpo: install
	$(PY) examples/grpo.py --time-budget-s 540 --out grpo_out $(ARGS)
