PYTHON ?= python3

.PHONY: setup demo test

setup:
	PYTHON=$(PYTHON) bash scripts/setup.sh

# Train ResNet-32 on Fashion-MNIST-LT (IF 100) with cross-entropy, then re-evaluate the saved model.
demo: setup
	run=runs/demo-$$(date +%Y%m%d-%H%M%S) && \
	$(PYTHON) -m longtail train configs/fmnist_lt/ce_imba100.yaml --out $$run && \
	$(PYTHON) -m longtail evaluate $$run --split test

test: setup
	$(PYTHON) -m pytest
