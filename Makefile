# The two commands a fresh clone needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint install clean

# torch first, from its pinned CPU wheel, so nothing later pulls a CUDA build.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the built-in default.
demo: $(STAMP)
	$(BIN)/rlhfkit pipeline --out runs/demo

# The default suite (slow tests excluded; under 10 minutes on 2 cores).
test: $(STAMP)
	bash scripts/pytest.sh

test-slow: $(STAMP)
	bash scripts/pytest.sh -m slow

# The optional experiment trackers of --report-to (wandb, mlflow), without changing the rest.
.PHONY: trackers
trackers: $(STAMP)
	$(BIN)/pip freeze --exclude-editable > $(VENV)/constraints.txt
	$(BIN)/pip install -q -e '.[trackers]' -c $(VENV)/constraints.txt

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
