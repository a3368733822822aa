# Two commands: `make run` (set up, run every notebook for TARGET, render the report) and `make test`.
PYTHON ?= python3
VENV ?= .venv
TARGET ?= cpu
PARAMS ?=
NOTEBOOKS ?=
FORCE ?=
# make test: the notebook pipelines (tests/test_pipeline.py) in one process, each notebook on the
# cores its params name (two pipelines side by side oversubscribed 2 cores: CI 32.0 min against
# 24.8-27.5 serial, 2026-12-07); then the other tests on TEST_WORKERS pytest-xdist workers, a test
# file per worker (its module fixtures built once): 400 s on two against 614 s in one process on
# 2026-12-07 (AMD EPYC, 2 cores). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
# Exactly one of the cpu / cuda extras per environment (onnxruntime vs onnxruntime-gpu).
EXTRAS ?= $(if $(filter cuda,$(TARGET)),cuda,cpu),dev
comma := ,
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: setup run report test test-notebooks clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $(STAMP)

setup: $(STAMP)

# With PARAMS, the params file's own `target` names the outputs (passing --target too would override it).
WHICH := $(if $(PARAMS),--params $(PARAMS),--target $(TARGET))

run: setup
	$(PY) -m optlib run $(WHICH) $(if $(NOTEBOOKS),--notebooks $(NOTEBOOKS)) \
	  $(if $(FORCE),--force $(if $(filter 1,$(FORCE)),,$(FORCE))); \
	status=$$?; \
	$(PY) -m optlib report $(WHICH) || status=1; \
	exit $$status

report: setup
	$(PY) -m optlib report $(WHICH)

# The smoke pipeline (tests/test_pipeline.py) executes every notebook through papermill; nbval over
# notebooks/ runs them once more with their own tiny defaults (about as small): `make test-notebooks`.
test: setup
	@status=0; \
	$(PY) -m pytest tests/test_pipeline.py -p no:cacheprovider --durations=10 || status=1; \
	$(PY) -m pytest tests --ignore=tests/test_pipeline.py $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) \
	  -p no:cacheprovider --durations=20 || status=1; \
	exit $$status

test-notebooks: setup
	$(PY) -m pytest notebooks --nbval-lax -p no:cacheprovider

clean:
	rm -rf outputs/*/ outputs/.cache .pytest_cache
