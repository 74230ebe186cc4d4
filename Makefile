PYTHON ?= python3
# The project's virtual environment, made from $(PYTHON) by scripts/setup.sh; every target runs in it.
# VENV= (empty) uses $(PYTHON) and the environment it belongs to instead (e.g. `make demo VENV=`).
VENV ?= .venv
PY := $(if $(VENV),$(VENV)/bin/python,$(PYTHON))
# config overrides for the demo's training, e.g. `make demo DEMO_ARGS="train.epochs=1"`
DEMO_ARGS ?=
# The PyTorch build is TORCH_SPEC (scripts/setup.sh); a changed TORCH_SPEC reinstalls torch on the next make,
# e.g. the CPU build: make demo TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cpu"

.PHONY: setup demo test docs

# what the demo needs: torch, torchvision, longtail, and the report extra (matplotlib, pandas) for the
# `longtail report` the demo points to at its end
setup:
	PYTHON="$(PYTHON)" VENV="$(VENV)" EXTRAS="report" bash scripts/setup.sh

# Train ResNet-32 on Fashion-MNIST-LT (IF 100) with cross-entropy, then compare its test metrics with
# post-hoc logit adjustment of the same checkpoint.
demo: setup
	PY="$(PY)" VENV="$(VENV)" bash scripts/demo.sh $(DEMO_ARGS)

# the demo's packages plus the test extras (pytest, hypothesis, onnxruntime, timm, submitit, mkdocs, ...), then the
# whole suite; it ends with the 10 slowest tests and the wall time of the whole command, setup included
test: TEST_START := $(shell date +%s)
test:
	PYTHON="$(PYTHON)" VENV="$(VENV)" EXTRAS="test" bash scripts/setup.sh
	$(PY) -m pytest --durations=10; rc=$$?; echo "make test: $$(( $$(date +%s) - $(TEST_START) )) s wall, setup included"; exit $$rc

# the documentation site from docs/ into site/ (open site/index.html)
docs:
	PYTHON="$(PYTHON)" VENV="$(VENV)" EXTRAS="docs" bash scripts/setup.sh
	$(PY) -m mkdocs build --strict
