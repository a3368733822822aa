# Two commands: `make run` (set up, run every notebook for TARGET, render the report) and `make test`.
PYTHON ?= python3
VENV ?= .venv
TARGET ?= cpu
PARAMS ?=
NOTEBOOKS ?=
FORCE ?=
# Exactly one of the cpu / cuda extras per environment (onnxruntime vs onnxruntime-gpu).
EXTRAS ?= $(if $(filter cuda,$(TARGET)),cuda,cpu),dev
comma := ,
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: setup run report test clean

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

test: setup
	$(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider --durations=20

clean:
	rm -rf outputs/*/ .pytest_cache
