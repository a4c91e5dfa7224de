# Two commands on a fresh machine:  `make run`  and  `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH_INDEX ?=

.PHONY: install models chromium run test test-fast fuzz bench bench-live schemas clean

$(STAMP): pyproject.toml Makefile  # the torch and recbole pins are in the recipe below
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first (an unpinned torch pulls a multi-GB CUDA build). Here pip's find-links hold
	# the +cpu wheel; on a host with only PyPI: make TORCH_INDEX=https://download.pytorch.org/whl/cpu run
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[test]'
	# recbole only for its ml-100k data files (its pins clash with numpy 2)
	$(PY) -m pip install -q --no-deps recbole==1.2.1
	touch $(STAMP)

install: $(STAMP)

REGISTRY := var/registry

# The models the stream uses, trained once on the real data (churn on CDNOW ~1.5 min, recs on ml-100k ~1 min on
# 2 cores) and published to the registry; `make clean` forgets them, a newer `tidewater train ...` replaces them.
$(REGISTRY)/churn/current: | $(STAMP)
	$(VENV)/bin/tidewater train churn --registry $(REGISTRY)
$(REGISTRY)/recs/current: | $(STAMP)
	$(VENV)/bin/tidewater train recs --registry $(REGISTRY)

models: $(REGISTRY)/churn/current $(REGISTRY)/recs/current

## Train the models if needed, then embedded broker + topics + replay of the real CDNOW + ml-100k data + worker;
## prints the dashboard URL and what came out of the output topics (scores, offers, recommendations).
run: install models
	$(VENV)/bin/tidewater up --dataset cdnow --dataset ml-100k

## Headless Chromium for the dashboard test (tests/integration/test_dashboard.py): Debian's packages, installed
## when /usr/bin/chromium is missing and apt-get can run (root). Elsewhere the test fails and says what is missing.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } \
		|| echo "note: apt-get could not install chromium: the dashboard test will fail, the others run"; \
	else echo "note: no /usr/bin/chromium and no root apt-get: the dashboard test will fail (install chromium)"; fi

## Unit tests, model tests and integration tests through a real embedded broker (and the dashboard in Chromium).
test: install chromium
	@$(PY) -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

test-fast: install
	$(PY) -m pytest -q tests/unit

## The property tests with fresh random examples, ten times as many (CI draws the same ones every run).
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -p no:cacheprovider tests/unit tests/models

bench: install models
	$(PY) bench/pipeline.py

bench-live: install models
	$(PY) bench/live.py

schemas: install
	$(VENV)/bin/tidewater schemas

clean:
	rm -rf $(VENV) var reports .pytest_cache
