# smri — set-up, tests and the experiments. `make test` and `make experiments` need nothing else.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned here (not in setup.cfg) so CI machines take their local CPU wheel;
# on a GPU machine the same pin from PyPI is the CUDA build. Override: make TORCH=torch
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install test test-all lint bench clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)  ## create .venv and install smri with its test tools

test: $(STAMP)  ## the default test run (CPU, about 7½ minutes on 2 cores)
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

test-all: $(STAMP)  ## every test, slow ones included (GPU tests skip without a GPU)
	$(BIN)/python -m pytest -q

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check smri tests benchmarks studies
	$(BIN)/ruff format --check smri tests benchmarks studies

# Reduced sizes fit a 2-core CPU in under 10 minutes; on a GPU machine run the scripts with
# their defaults (BraTS geometry). Tables are printed and kept in benchmarks/.work/latest.md.
BENCH_PATIENTS ?= 8
# Preprocessing with more: with 8, the run's serial start and commit and the last patient running
# alone on one core cost about 9 % (8 vs 40 patients, 2 workers, one process: 25.6 vs 27.6/s).
BENCH_PREPROCESS_PATIENTS ?= 24
# Training input needs at least one batch of 8 per worker, or the NIfTI baseline runs on one core.
BENCH_INPUT_PATIENTS ?= 16
bench: $(STAMP)  ## the benchmarks (reduced sizes; GPU parts skip without a GPU)
	mkdir -p benchmarks/.work
	{ $(BIN)/python -m benchmarks.bench_preprocess $(BENCH_PREPROCESS_PATIENTS) && echo && \
	  $(BIN)/python -m benchmarks.bench_store $(BENCH_PATIENTS) && echo && \
	  $(BIN)/python -m benchmarks.bench_input $(BENCH_INPUT_PATIENTS) && echo && \
	  $(BIN)/python -m benchmarks.bench_train 16 32 64 64 && echo && \
	  $(BIN)/python benchmarks/bench_synth_difficulty.py 80 64 64 155 ; } | tee benchmarks/.work/latest.md

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# ---------------------------------------------------------------------------------------------
# make experiments: the seed's three-model comparison (CNN1, CNN2, CNN3, each + LSTM), with the
# same 5 folds for every model and the baselines.
#   make experiments                      demo cohort (smri synth), sized for the machine
#   make experiments DATA=/path/to/BraTS  a real copy, either BraTS layout
#   make experiments FOLDS=1              one stratified split instead of cross-validation
#   make experiments QUICK=1              a tiny smoke run (what CI runs)
#   make experiments SEEDS=3              every fold trained with 3 initialisation seeds
# The untouched test set: the demo generates a second, independent phantom cohort (seed
# TEST_SEED, site code TST in its ids); with DATA, a stratified TEST_FRACTION of the patients
# is listed in OUT/holdout.csv before anything trains, kept out of every fold by
# `smri train --holdout`, and scored only at the end (`smri evaluate RUN ... --out RUN/test`).
# Training settings are smri train's own defaults (smri train --help says where each comes
# from); this file passes only what it changes: the demo's size on a machine without a GPU, and
# any variable you set (EPOCHS, BATCH, WIDTH, DROPOUT, INPUT_POOL, AUGMENT=0/1, SEED, DEVICE).
# Every step is a file target: re-running skips what is finished; a failed step stops the run.
# ---------------------------------------------------------------------------------------------
QUICK   ?= 0
DATA    ?=
OUT     ?= results
FOLDS   ?= 5
JOBS    ?= $(shell nproc 2>/dev/null || echo 2)
MODELS  ?= cnn1 cnn2 cnn3
EPOCHS  ?=
BATCH   ?=
WIDTH   ?=
DROPOUT ?=
INPUT_POOL ?=
AUGMENT ?=
SEED    ?=
DEVICE  ?=
SEEDS   ?= 1
TEST_FRACTION ?= 0.2
TEST_SEED ?= $(shell echo $$(( $(or $(SEED),0) + 1000 )))
HAS_GPU := $(shell $(BIN)/python -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)

ifeq ($(QUICK),1)
  PATIENTS ?= 24
  SHAPE    ?= 32 32 155
  EPOCHS   := $(or $(EPOCHS),2)
  BATCH    := $(or $(BATCH),4)
  WIDTH    := $(or $(WIDTH),0.25)
  FOLDS    := $(if $(filter command line,$(origin FOLDS)),$(FOLDS),2)
  SIZE_NOTE := QUICK=1 smoke run: tiny phantoms, 2 folds of 2 epochs; the numbers mean nothing
else ifeq ($(HAS_GPU),1)
  PATIENTS ?= 200
  SHAPE    ?= 240 240 155
  SIZE_NOTE := GPU found: BraTS geometry (240x240x155), smri train's defaults
else
  PATIENTS ?= 240
  SHAPE    ?= 40 40 155
  EPOCHS   := $(or $(EPOCHS),20)
  BATCH    := $(or $(BATCH),4)
  WIDTH    := $(or $(WIDTH),0.5)
  SIZE_NOTE := no GPU: reduced demo geometry 40x40x155 (6 mm in-plane voxels), half-width CNNs, 20 epochs of batch 4, folds trained $(JOBS) at a time, so that 3 models x $(FOLDS) folds and the test cohort end in about 23 minutes on 2 cores, set-up included (BraTS is 240x240x155, 1 mm)
endif
# Without a GPU, cross-validation trains folds in parallel processes (smri train --jobs).
FOLD_JOBS := $(if $(filter 1,$(HAS_GPU)),,$(if $(filter-out 1,$(FOLDS)),$(JOBS)))

# "--flag value" only when the value is set
opt = $(if $(strip $(2)),$(1) $(2))
AUGMENT_FLAG := $(if $(filter 1,$(AUGMENT)),--augment,$(if $(filter 0,$(AUGMENT)),--no-augment))
TRAIN_OPTIONS := $(call opt,--epochs,$(EPOCHS)) $(call opt,--batch-size,$(BATCH)) \
  $(call opt,--width,$(WIDTH)) $(call opt,--dropout,$(DROPOUT)) \
  $(call opt,--input-pool,$(INPUT_POOL)) $(AUGMENT_FLAG) \
  $(call opt,--seed,$(SEED)) $(call opt,--device,$(DEVICE)) \
  $(if $(filter-out 1,$(FOLDS)),--folds $(FOLDS)) $(call opt,--jobs,$(FOLD_JOBS)) \
  $(if $(filter-out 1,$(SEEDS)),--seeds $(SEEDS))

STORE := $(OUT)/store.h5
ifeq ($(strip $(DATA)),)
  INPUT      := $(OUT)/demo
  TEST_STORE := $(OUT)/test.h5
  HOLDOUT    :=
else
  INPUT      := $(DATA)
  TEST_STORE := $(STORE)
  HOLDOUT    := $(OUT)/holdout.csv
endif
RUNS  := $(foreach m,$(MODELS),$(OUT)/runs/$(m)/summary.json)
TESTS := $(foreach m,$(MODELS),$(OUT)/runs/$(m)/test/metrics.json)
SMRI  := $(BIN)/smri

.PHONY: experiments settings
experiments: $(STAMP) settings $(OUT)/summary.md  ## the three-model comparison with its figures
	@echo "Done: $(OUT)/summary.md and figures in $(OUT)/"

settings:
	@echo "smri experiments: DATA=$(if $(DATA),$(DATA),<demo cohort from smri synth>) OUT=$(OUT)"
	@echo "  models=$(MODELS) folds=$(FOLDS) jobs=$(JOBS); smri train $(strip $(TRAIN_OPTIONS)) (everything else: smri train's defaults)"
	@$(if $(DATA),,echo "  demo cohort: $(PATIENTS) phantoms of $(SHAPE) voxels -- $(SIZE_NOTE)")
	@echo "  test set: $(if $(DATA),a stratified $(TEST_FRACTION) of DATA's patients held out ($(HOLDOUT)),a second phantom cohort ($(PATIENTS) patients, seed $(TEST_SEED))), scored only at the end"

$(OUT)/demo/truth.csv: | $(STAMP)
	$(SMRI) synth $(OUT)/demo --patients $(PATIENTS) --shape $(SHAPE) $(call opt,--seed,$(SEED)) --jobs $(JOBS) --overwrite

$(OUT)/test-demo/truth.csv: | $(STAMP)
	$(SMRI) synth $(OUT)/test-demo --patients $(PATIENTS) --shape $(SHAPE) --seed $(TEST_SEED) --site TST --jobs $(JOBS) --overwrite

$(STORE): $(if $(DATA),,$(OUT)/demo/truth.csv) | $(STAMP)
	mkdir -p $(@D)
	$(SMRI) preprocess $(INPUT) $@ --jobs $(JOBS) --overwrite

$(OUT)/test.h5: $(OUT)/test-demo/truth.csv | $(STAMP)
	$(SMRI) preprocess $(OUT)/test-demo $@ --jobs $(JOBS) --overwrite

$(OUT)/holdout.csv: $(STORE)
	$(SMRI) holdout $(STORE) $@ --fraction $(TEST_FRACTION) $(call opt,--seed,$(SEED)) --overwrite

$(OUT)/runs/%/summary.json: $(STORE) $(HOLDOUT)
	if [ -f $(OUT)/runs/$*/config.json ]; then \
	  $(SMRI) train --resume $(OUT)/runs/$*; \
	else \
	  $(SMRI) train $(STORE) --model $* $(strip $(TRAIN_OPTIONS)) $(call opt,--holdout,$(HOLDOUT)) --out $(OUT)/runs/$*; \
	fi

# every training of the run (each fold and seed) on the untouched test patients
$(OUT)/runs/%/test/metrics.json: $(OUT)/runs/%/summary.json $(TEST_STORE) $(HOLDOUT)
	$(SMRI) evaluate $(OUT)/runs/$* $(TEST_STORE) $(call opt,--holdout,$(HOLDOUT)) --out $(OUT)/runs/$*/test --overwrite

$(OUT)/summary.md: $(RUNS) $(TESTS)
	$(SMRI) plot $(addprefix $(OUT)/runs/,$(MODELS)) --store $(STORE) --test test --out $(OUT)
