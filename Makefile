# Thin wrapper: `make demo` (set up + main job on embedded defaults), `make test` (set up + tests).
VENV ?= .venv
PY := $(VENV)/bin/python
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup setup-test demo test test-unit bench bench-gpu-data clean

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

# torch 2.13.0 goes in first, so the package's `torch` requirement is already met and pip never
# replaces it. Set TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu) to pick a build.
TORCH_INDEX_URL ?=
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install -q -e '.[report]'
	touch $@

# The tests also need the team MLflow server's parts (cluster/mlflow/) and the test tools.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[report,team,test]'
	touch $@

# The whole flow on embedded defaults: prepare 20ng, a small tune on a local Ray, the champion
# registered in ./mlflow.db, then a search with it.
DEMO_QUERY ?= The space shuttle launch was delayed by a fuel leak on the pad.
demo: setup
	test -f data/20ng-18828/manifest.json || $(PY) jobs/prepare_data.py 20ng --release 18828 --out data/20ng-18828
	$(PY) jobs/tune.py --data data/20ng-18828 --model corrsh-nbr --space-file jobs/spaces/mission.yaml --bits 64 \
	  --num-samples 4 --max-concurrent 2 --epochs 20 --grace-period 5 --name demo-20ng-64b --out runs/demo/best
	echo "$(DEMO_QUERY)" | $(PY) jobs/search.py --model models:/corrhash-20ng-18828-64b@champion \
	  --corpus data/20ng-18828 --index-out runs/demo/20ng-64b.npz --queries - --k 5 > runs/demo/answers.jsonl
	@# The JSONL answer, indented: each hit's id, Hamming distance and newsgroup (shards keep no text).
	$(PY) -m json.tool --json-lines runs/demo/answers.jsonl
	@echo
	@echo "runs:   MLflow runs in ./mlflow.db (artifacts in ./mlruns), experiment corrhash-tune, run demo-20ng-64b"
	@echo "        Tune state, the Optuna study and one checkpoint per trial in runs/tune/demo-20ng-64b"
	@echo "model:  models:/corrhash-20ng-18828-64b@champion; the best trial's folder and results.json in runs/demo/best"
	@du -sh runs data mlflow.db mlruns 2>/dev/null | sed 's/^/disk:   /'
	@echo "next:   $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1  (http://127.0.0.1:5000/#/experiments?workflowType=machine_learning)"

test: setup-test
	$(PY) -m pytest -q -n 3 --dist loadgroup --durations=30 tests

# The fast tier: models, loop, data, retrieval, bad input and layers on tiny data; no Ray head, no MLflow
# server, no extra environment.
test-unit: setup-test
	$(PY) -m pytest -q -n auto -m "not cluster and not slow" tests

# The benchmark (bench/: scripts beside the package, not in it) on this machine's CPU, on the 20ng shards
# `make demo` prepares; BENCH_ARGS adds options (`$(PY) -m bench.run --help`), e.g. --sections epochs.
BENCH_ARGS ?=
bench: setup
	test -f data/20ng/manifest.json || $(PY) jobs/prepare_data.py 20ng --out data/20ng
	$(PY) -m bench.run --data data/20ng $(BENCH_ARGS)

# The 20ng shards the GPU benchmark carries to the device machine (bench/README.md), from
# $$CORRHASH_RAW_DIR with the project's own prepare job.
bench-gpu-data: setup
	test -f bench/data/20ng/manifest.json || $(PY) jobs/prepare_data.py 20ng --out bench/data/20ng

clean:
	rm -rf data runs mlruns mlflow.db .pytest_cache
