# Two commands: `make run` (set up, run every notebook for TARGET, render the report) and `make test`.
PYTHON ?= python3
VENV ?= .venv
TARGET ?= cpu
PARAMS ?=
NOTEBOOKS ?=
FORCE ?=
# make test: every test file on TEST_WORKERS pytest-xdist workers, a file per worker (its module
# fixtures built once), the two notebook-pipeline files first (tests/conftest.py, which also makes
# OpenMP's waiting threads sleep: spinning, two 2-thread processes on 2 cores ran 4x slower each).
# TEST_WORKERS=0: one process.
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
	$(PY) -m pytest tests $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder) \
	  -p no:cacheprovider --durations=25

test-notebooks: setup
	$(PY) -m pytest notebooks --nbval-lax -p no:cacheprovider

clean:
	rm -rf outputs/*/ outputs/.cache .pytest_cache
