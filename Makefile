# One entry point per job. A fresh machine needs only python3 (3.10+) and make.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= models/demo
RUN ?= models/reference-run
REFERENCE ?= models/minilm-squad-lora
SLICE ?= ../shared/data/squad2-dev-slice.json
TUNE_ARTICLES ?= Huguenot,European_Union_law,Yuan_dynasty

.PHONY: install test demo reference bench-reference

$(BIN)/qa-toolkit: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[cpu,test]"
	touch $@

install: $(BIN)/qa-toolkit

# The tests also cover serve-batch --ray and bench's OpenVINO peers: the 'ray' (~300 MB) and 'peers'
# (~200 MB) extras are installed for them, not for the demo.
test: install
	$(BIN)/pip install -q -c constraints.txt -e ".[cpu,test,ray,peers]"
	$(BIN)/ruff check toolkit tests bench
	$(BIN)/python -m pytest -q

# The main job on the offline defaults, in minutes: the shipped reference adapter (models/minilm-squad-lora)
# merged and exported to ONNX, 1,000 SQuAD v1.1 dev questions answered from JSONL by serve-batch and scored,
# a few answers printed with their confidences; and, where ../shared is beside the checkout, the 7 held-out
# SQuAD 2.0 slice articles the same way. An existing DEMO directory is never overwritten.
demo: install
	@test ! -e $(DEMO) || { echo "$(DEMO) exists; run make demo DEMO=models/other"; exit 1; }
	$(BIN)/qa-toolkit export --merge --adapter $(REFERENCE)/adapter --output-dir $(DEMO)/export \
	  --variants fp32,int8 --eval-file "squad-v1.1-dev?samples=300" --eval-samples 300
	$(BIN)/qa-toolkit to-jsonl "squad-v1.1-dev?samples=1000" $(DEMO)/dev-sample.jsonl
	$(BIN)/qa-toolkit serve-batch $(DEMO)/dev-sample.jsonl --model $(DEMO)/export/onnx -o $(DEMO)/dev-sample.answers.jsonl
	$(BIN)/qa-toolkit score $(DEMO)/dev-sample.answers.jsonl --references "squad-v1.1-dev?samples=1000" --examples 3
	@echo "SQuAD v1.1 dev sample, best span (v1.1 has no unanswerable questions):"
	$(BIN)/qa-toolkit score $(DEMO)/dev-sample.answers.jsonl --references "squad-v1.1-dev?samples=1000" --best-span
	@if [ -f $(SLICE) ]; then \
	  $(BIN)/qa-toolkit to-jsonl "$(SLICE)?exclude-articles=$(TUNE_ARTICLES)" $(DEMO)/slice-eval.jsonl && \
	  $(BIN)/qa-toolkit serve-batch $(DEMO)/slice-eval.jsonl --model $(DEMO)/export/onnx -o $(DEMO)/slice-eval.answers.jsonl && \
	  echo "SQuAD 2.0 slice, 7 held-out articles (tuned no-answer threshold):" && \
	  $(BIN)/qa-toolkit score $(DEMO)/slice-eval.answers.jsonl --references "$(SLICE)?exclude-articles=$(TUNE_ARTICLES)" --examples 3; \
	else echo "($(SLICE) not found: SQuAD 2.0 slice evaluation skipped)"; fi

# Retrain the shipped adapter (configs/reference.json; about 6 hours on 2 CPU cores: 13,000 steps at
# ~1.5 s/step, then a 10-minute export) and export it. Trains on SQuAD v1.1 train with synthetic
# unanswerable questions; the no-answer threshold is tuned on 3 slice articles; the 7 others stay held out.
# Interrupted, it goes on from its last checkpoint (every 1,000 steps) with
#   qa-toolkit train --config configs/reference.json --output-dir $(RUN) --resume
reference: install
	$(BIN)/qa-toolkit train --config configs/reference.json --output-dir $(RUN)
	$(BIN)/qa-toolkit export --merge --adapter $(RUN)/adapter --eval-file "$(SLICE)?exclude-articles=$(TUNE_ARTICLES)" \
	  --eval-samples 2420

bench-reference: install
	$(BIN)/qa-toolkit bench --model $(REFERENCE)/export \
	  --eval-file "$(SLICE)?exclude-articles=$(TUNE_ARTICLES)" --name minilm-squad-lora-cpu
	$(BIN)/qa-toolkit bench --train --name train-speed-cpu
