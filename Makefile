# Two commands for a fresh machine: `make demo` and `make test`. Each creates .venv by itself.
# torch is installed first and pinned (a CPU wheel here; GPU users install their CUDA build of 2.13.0 first),
# so that nothing pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv test demo stack stack-down stack-status clean ingest-every

venv: $(STAMP)

# pip's output goes to $(PIPLOG); a failed step prints the log's tail, and pip's ERROR lines (a dependency
# conflict is one, with exit status 0) are printed in any case.
PIPLOG := $(VENV)/install.log
pip_install = $(VPY) -m pip install --quiet $(1) >>$(PIPLOG) 2>&1 || \
	{ tail -n 40 $(PIPLOG); echo "pip install $(1) failed; the whole log: $(PIPLOG)"; exit 1; }

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@echo "installing pip, torch 2.13.0 and the project into $(VENV) (a few minutes; log: $(PIPLOG))"
	@$(call pip_install,--upgrade pip)
	@$(call pip_install,torch==2.13.0)
	@$(call pip_install,-e '.[dev]')
	@grep -h '^ERROR' $(PIPLOG) || true
	touch $(STAMP)

test: venv
	$(VPY) -m pytest $(PYTEST_ARGS)

# each `make demo` trains a new run (a run name is never reused without --resume)
DEMO_RUN ?= pretrain-demo-$(shell date +%Y%m%d-%H%M%S)
DEMO_RUN := $(DEMO_RUN)
# extra options of the demo's evaluation (e.g. --cs 0.1 1 for a shorter probe)
DEMO_EVAL_ARGS ?=
# the local stack's variables (STAC, S3, MLflow and Ray addresses) for one command
STACK := set -a && . .stack/env && set +a &&

demo: venv
	@echo "== 1/9 the local stack (STAC API, S3, MLflow, Ray) on 127.0.0.1"
	@$(VPY) -m infra.local up
	@echo "== 2/9 search the local STAC API and read one chip"
	@$(STACK) $(VPY) jobs/demo.py
	@echo "== 3/9 ingest the S2 + S1 demo store (a Ray job): out/demo-dataset"
	@$(STACK) $(VPY) jobs/submit.py -- \
		python jobs/ingest.py --config configs/ingest-demo.yaml --set store=$(CURDIR)/out/demo-dataset
	@echo "The store, every shard as one lazy xarray DataTree: $(VPY) -c \"import pipeline; print(pipeline.open_store('$(CURDIR)/out/demo-dataset'))\""
	@$(VENV)/bin/anysat-stac inspect $(CURDIR)/out/demo-dataset
	@echo "== 4/9 ingest the labelled Landsat 7 land-cover store (a Ray job): out/landcover-dataset"
	@$(STACK) $(VPY) jobs/submit.py -- \
		python jobs/ingest.py --config configs/ingest-landcover.yaml --set store=$(CURDIR)/out/landcover-dataset
	@echo "== 5/9 pretrain (Ray Train, JEPA) on the demo store; registered as anysat-demo@candidate"
	@$(STACK) $(VPY) jobs/submit.py -- \
		python jobs/pretrain.py --config configs/pretrain-demo.yaml --set data.datasets.0.url=$(CURDIR)/out/demo-dataset \
		--set run.storage=$(CURDIR)/out/runs --set run.name=$(DEMO_RUN)
	@echo "== 6/9 evaluate the candidate on the land-cover store (probes: raw pixels, random init, pretrained)"
	@$(STACK) $(VPY) jobs/evaluate.py --model models:/anysat-demo@candidate \
		--store $(CURDIR)/out/landcover-dataset $(DEMO_EVAL_ARGS)
	@echo "== 7/9 promote to @champion only if the candidate scores at least the champion (exit 3: refused, the demo goes on)"
	@$(STACK) $(VPY) jobs/promote.py --name anysat-demo || test $$? -eq 3
	@echo "== 8/9 embeddings of every land-cover chip: out/landcover-embeddings.parquet (geopandas.read_parquet)"
	@$(STACK) $(VPY) jobs/embed.py --model models:/anysat-demo@candidate \
		--store $(CURDIR)/out/landcover-dataset --out $(CURDIR)/out/landcover-embeddings.parquet
	@echo "== 9/9 dense embeddings of the demo store: out/demo-embeddings.zarr"
	@$(STACK) $(VPY) jobs/embed.py --model models:/anysat-demo@candidate \
		--store $(CURDIR)/out/demo-dataset --out $(CURDIR)/out/demo-embeddings.zarr --patch-size 40
	@echo "Checkpoints: $(CURDIR)/out/runs/$(DEMO_RUN); runs and the registered model anysat-demo: the MLflow UI in .stack/env"
	@echo "The stack keeps running for you to explore; stop it with: make stack-down"

# Incremental ingestion every INTERVAL seconds against the local stack, each run a `ray job submit`; Ctrl-C stops.
INTERVAL ?= 3600
CONFIG   ?= configs/ingest-demo.yaml
STORE    ?= $(CURDIR)/out/incremental-dataset
ingest-every: venv
	$(VPY) -m infra.local up
	set -a && . .stack/env && set +a && $(VPY) jobs/ingest_every.py --config $(CONFIG) --interval $(INTERVAL) \
		--set store=$(STORE)

stack: venv
	$(VPY) -m infra.local up

stack-down:
	$(VPY) -m infra.local down

stack-status:
	$(VPY) -m infra.local status

clean: stack-down
	rm -rf .stack
