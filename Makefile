PYTHON ?= python3
# The project's virtual environment, made from $(PYTHON) by scripts/setup.sh; every target runs in it.
# VENV= (empty) uses $(PYTHON) and the environment it belongs to instead (e.g. `make demo VENV=`).
VENV ?= .venv
PY := $(if $(VENV),$(VENV)/bin/python,$(PYTHON))
# config overrides for the demo's training, e.g. `make demo DEMO_ARGS="train.epochs=1"`
DEMO_ARGS ?=

.PHONY: setup demo test

setup:
	PYTHON="$(PYTHON)" VENV="$(VENV)" bash scripts/setup.sh

# Train ResNet-32 on Fashion-MNIST-LT (IF 100) with cross-entropy, then compare its test metrics with
# post-hoc logit adjustment of the same checkpoint.
demo: setup
	PY="$(PY)" VENV="$(VENV)" bash scripts/demo.sh $(DEMO_ARGS)

test: setup
	$(PY) -m pytest
