# The two commands a new user needs: `make demo` and `make test`.
# Both create .venv and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# The demo's archiver burns discs with xorriso: install it as .ci/run does, or
# say exactly what to install before anything starts.
demo: $(STAMP)
	@command -v xorriso >/dev/null 2>&1 || { \
	    if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq xorriso; \
	    else echo "make demo needs xorriso for the DVD archiver: sudo apt-get install xorriso" >&2; exit 1; fi; }
	@echo "demo: web viewer at http://127.0.0.1:8080/ (broker 127.0.0.1:3333)"
	$(BIN)/turbine mcp configs/demo.toml

# The suite starts some 350 turbine and component processes.  Where
# PYTHONDONTWRITEBYTECODE is set, none of them writes the bytecode of turbine/
# and components/, so each compiles what it imports again (0.05-0.08 s of CPU
# a process): compile both once, into their __pycache__ (git ignores it).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m compileall -q turbine components
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy turbine components

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
