# One entry point per job. A fresh machine needs only python3 (3.10+) and make.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= models/demo
SLICE ?= ../shared/data/squad2-dev-slice.json
TRAIN_ARTICLES ?= Huguenot,European_Union_law,Yuan_dynasty

.PHONY: install test demo reference bench-reference

$(BIN)/qa-toolkit: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[cpu,test]"
	touch $@

install: $(BIN)/qa-toolkit

test: install
	$(BIN)/python -m pytest -q

# The main job on the offline defaults: LoRA-train MiniLM on 5,000 SQuAD v1.1 train questions,
# merge + export to ONNX, answer 1,000 SQuAD v1.1 dev questions from JSONL and score them.
demo: install
	$(BIN)/qa-toolkit train --output-dir $(RUN)
	$(BIN)/qa-toolkit export --merge --adapter $(RUN)/adapter
	$(BIN)/qa-toolkit to-jsonl "squad-v1.1-dev?samples=1000" $(RUN)/dev-sample.jsonl
	$(BIN)/qa-toolkit serve-batch $(RUN)/dev-sample.jsonl --model $(RUN)/export/onnx -o $(RUN)/dev-sample.answers.jsonl
	$(BIN)/qa-toolkit score $(RUN)/dev-sample.answers.jsonl --references "squad-v1.1-dev?samples=1000"

# The reference recipe with real unanswerable questions (needs ../shared/data beside the checkout):
# 3,710 SQuAD v1.1 train + 1,290 questions of 3 slice articles = 5,000; eval on the 7 other articles.
reference: install
	$(BIN)/qa-toolkit train --output-dir models/minilm-reference \
	  --train-file "squad-v1.1-train?samples=3710" --train-file "$(SLICE)?articles=$(TRAIN_ARTICLES)" \
	  --train-samples 5000 --eval-file "$(SLICE)?exclude-articles=$(TRAIN_ARTICLES)"
	$(BIN)/qa-toolkit export --merge --adapter models/minilm-reference/adapter --eval-samples 2420

bench-reference: install
	$(BIN)/qa-toolkit bench --model models/minilm-reference/export \
	  --eval-file "$(SLICE)?exclude-articles=$(TRAIN_ARTICLES)" --name minilm-reference-cpu
	$(BIN)/qa-toolkit bench --train --name train-lora-vs-full
