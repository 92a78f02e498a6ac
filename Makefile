# p2ptls: `make demo` and `make test` each work on a fresh machine (they create .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench mutate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m p2ptls.demo
	@echo ""
	@echo "The p2ptls command is $(BIN)/p2ptls (or run: source $(BIN)/activate); see 'Command line' in README.md."

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check p2ptls tests benchmarks examples
	$(BIN)/ruff format --check p2ptls tests benchmarks examples
	$(BIN)/mypy

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]' || echo "optional benchmark extras unavailable; comparisons will be skipped"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	mkdir -p bench-results
	$(BIN)/python benchmarks/stream.py --quick --json bench-results/stream.json
	$(BIN)/python benchmarks/sllp.py --quick --json bench-results/sllp.json
	@if [ -f benchmarks/replication.py ]; then $(BIN)/python benchmarks/replication.py --quick --json bench-results/replication.json; fi
	@if [ -f benchmarks/camera_stream.py ]; then $(BIN)/python benchmarks/camera_stream.py --quick --json bench-results/camera.json --plot bench-results; fi

MUTATE_STAMP := $(VENV)/.mutate-installed

$(MUTATE_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,mutate]'
	touch $(MUTATE_STAMP)

# Mutation testing of the security-critical modules ([tool.mutmut] in pyproject.toml); slow, and
# not part of `make test`. Results accumulate in mutants/ (a mutant already judged is not run
# again; `rm -rf mutants` starts afresh). Narrow a run with mutant name patterns, e.g.
#   make mutate MUTANTS='p2ptls.state._crypto.* p2ptls.peerdb.*'
MUTANTS ?=
MUTATE_JOBS ?= 2

mutate: $(MUTATE_STAMP)
	set -f; $(BIN)/mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS)
	$(BIN)/mutmut export-cicd-stats
	@cat mutants/mutmut-cicd-stats.json; echo
	@echo "survivors and timeouts (mutmut show NAME for the diff):"
	@$(BIN)/mutmut results | grep -v ': not checked$$' || true

# Everything the targets above leave behind: the venv, build output, tool caches, the demo's keys and
# databases (demo-run/), the benchmark results (bench-results/), mutation results (mutants/) and bytecode.
clean:
	rm -rf $(VENV) mutants build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	rm -rf demo-run bench-results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
