# make demo: run the bundled demo end to end.   make test: install what the tests need and run them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-slow install install-test mosquitto systemd-analyze clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The device install: what runs on a board (no TensorFlow).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# Everything the tests use: tflite-runtime beside LiteRT, and the host tools (TensorFlow).
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	@# The host extra moved from tensorflow-cpu to tensorflow (tf-keras needs it by name). Both
	@# write the same files, and a venv holding both breaks tflite-runtime in the same process
	@# ("vector::reserve"): remove both, and the install below puts tensorflow back whole.
	@if $(BIN)/pip show tensorflow-cpu >/dev/null 2>&1; then \
	  echo "removing tensorflow-cpu (replaced by tensorflow)"; $(BIN)/pip uninstall -y -q tensorflow-cpu tensorflow; fi
	$(BIN)/pip install --quiet -e '.[test,host]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# mosquitto is the broker the demo and the tests start; install it when it is missing.
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
	  ( echo "installing mosquitto (apt-get)"; $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mosquitto >/dev/null )
	@# the distribution's service is not needed: the demo and tests start their own
	@-$(SUDO) systemctl disable --now mosquitto >/dev/null 2>&1 || true

# systemd-analyze checks the unit (verify, security score) in tests/test_systemd_unit.py;
# it comes with the systemd package. Nothing is started: the tests need only the tool.
systemd-analyze:
	@command -v systemd-analyze >/dev/null 2>&1 || \
	  ( echo "installing systemd for systemd-analyze (apt-get)"; $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq systemd >/dev/null )

demo: install mosquitto
	$(BIN)/edge-agent demo

# Tests marked slow (retraining a model from models/) are left out of `make test`: run them with `make test-slow`.
test: install-test mosquitto systemd-analyze
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: install-test
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
