PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo clean bench-quick docs gpu-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,export,serve,mlflow,wandb,pretrained,video,docs]'
	touch $(STAMP)

install: $(STAMP)

# Tests run in parallel, one pytest-xdist worker per core (at most 8); --dist loadfile keeps a test file
# on one worker, so its module fixtures (an ONNX export, a reference training run) are built once.
# The 10 slowest tests are listed at the end, so a slow new test shows in CI's log.
PYTEST := $(PY) -m pytest -q -n auto --maxprocesses 8 --dist loadfile --durations 10

# The whole suite (what CI runs), with the default per-test timeout of pyproject.toml.
test: $(STAMP)
	$(PYTEST)

# The edit loop: everything but the tests marked slow or process (pytest markers in the test files).
test-fast: $(STAMP)
	$(PYTEST) -m "not slow and not process"

demo: $(STAMP)
	$(VENV)/bin/hdetr demo --out runs/demo

# The documentation site (mkdocs.yml) into site/; --strict: a broken link or a bad docstring reference fails.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict --quiet

bench-quick: $(STAMP)
	$(VENV)/bin/hdetr bench ablation --quick

# Everything hdetr does on a GPU, in about 8 minutes, into benchmarks/results/gpu_check.json
# (docs/performance.md, "GPU check"). Without CUDA: one line and exit 2. On a machine whose Python
# already has torch and hdetr's dependencies, without this venv: python benchmarks/gpu_check.py
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache site
