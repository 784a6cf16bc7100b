PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-durations test-fast demo clean bench-quick docs gpu-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,export,serve,mlflow,wandb,pretrained,video,docs]'
	touch $(STAMP)

install: $(STAMP)

# Tests run in parallel on pytest-xdist workers, one per core plus one (at most 9) to use the cores while a
# test waits on a child process or a server; torch gets each worker's share of the cores
# (tests/support/worker_threads.py). --dist loadfile keeps a test file on one worker, so its module
# fixtures (an ONNX export, a reference training run) are built once; --no-loadscope-reorder keeps the
# order of tests/durations.json, the longest files first (tests/support/file_order.py), instead of
# xdist's order by test count. The 10 slowest tests are listed at the end, so a slow new test shows in CI's log.
WORKERS = $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 8 ] && n=8; echo $$((n + 1)))
PYTEST = $(PY) -m pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder --durations 10

# The whole suite (what CI runs), with the default per-test timeout of pyproject.toml.
test: $(STAMP)
	$(PYTEST)

# The whole suite, recording each test file's duration in tests/durations.json (the order make test
# starts the files in: the longest first). Rerun when files are added or become much longer or shorter.
test-durations: $(STAMP)
	HDETR_RECORD_TEST_DURATIONS=tests/durations.json $(PYTEST)

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
