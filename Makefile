# Two commands for a fresh machine:  `make demo`  and  `make test`.
# Each creates .venv with pip and installs what it needs.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
SEED    ?= 0
OUT     ?= out/demo
# torch/torchvision are pinned to the releases this project is developed and tested with.
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/lesionforge demo --out $(OUT) --seed $(SEED)

test: install
	WANDB_MODE=disabled $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check augment gan downstream tests bench

bench: install
	$(BIN)/python bench/phantom_rate.py

clean:
	rm -rf $(VENV) out
