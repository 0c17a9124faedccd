# Two entry points: `make demo` (set up + run the main job), `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test demo bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --no-compile -e '.[test]'
	@# byte-code on every core (pip compiles on one: 75-95 s installs became about 60 s); best effort
	-$(BIN)/python -m compileall -q -j 0 -x '/(tests?|testing)/' $(VENV)/lib > /dev/null
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/maedet-deploy pipeline --speedup 1.5 --profile-walks 8 --bench-seconds 2 --out runs/demo
