# make demo  — create .venv if needed, pretrain a small ESM-2-style protein model on bundled UniProt data
# make test  — create .venv if needed, run the test suite
# make lint  — ruff over the code and tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install clean-demo

$(BIN)/foundry: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(BIN)/foundry

install: $(BIN)/foundry

demo: $(BIN)/foundry
	rm -rf runs/demo-protein
	$(BIN)/foundry protein pretrain --out runs/demo-protein

test: $(BIN)/foundry
	$(BIN)/python -m pytest -q

lint: $(BIN)/foundry
	$(BIN)/ruff check foundry modalities plugins tests bench examples
