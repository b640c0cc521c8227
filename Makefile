# zooscope's everyday commands. `make demo` and `make test` each set everything up
# on a fresh machine first (a virtual environment in .venv with pinned versions).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out

.PHONY: install demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all,dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	mkdir -p $(OUT)
	$(BIN)/zooscope plugins --all
	# --resume creates the zoo, continues an interrupted one and leaves a complete one as
	# it is, so a second `make demo` takes seconds and keeps stored analyses.
	$(BIN)/zooscope generate zoos/demo.toml --out $(OUT)/demo.h5 --resume
	$(BIN)/zooscope zoo ls $(OUT)/demo.h5
	$(BIN)/zooscope analyze $(OUT)/demo.h5 --plugin agreement

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(OUT) build *.egg-info
