# make demo: run the bundled demo end to end.   make test: install what the tests need and run them.
# make test-fast: the edit loop, without the slow tests and the TensorFlow ones.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast test-retrain test-slow test-wheels install install-test mosquitto rabbitmq-server rabbitmq-check systemd-analyze chromium clean

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

# Wheels the deploy and package tests build wheelhouses and venvs from, so those tests never
# reach the network: fetched here, at install time, like every other dependency, by the
# project's own deploy/wheelhouse.sh. native/: this machine's device requirements plus setuptools
# and wheel (to build edge-agent's own wheel offline); aarch64/: a Pi's (CPython 3.11).
TEST_WHEELS := $(VENV)/test-wheels
$(TEST_WHEELS)/.complete: pyproject.toml deploy/wheelhouse.sh deploy/wheelhouse.py | $(VENV)/.installed-test
	rm -rf $(TEST_WHEELS) $(TEST_WHEELS).tmp
	deploy/wheelhouse.sh --python $(BIN)/python --machine "$$(uname -m)" --out $(TEST_WHEELS).tmp/native \
	  --python-version "$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" >/dev/null
	deploy/wheelhouse.sh --python $(BIN)/python --machine aarch64 --python-version 3.11 --out $(TEST_WHEELS).tmp/aarch64 >/dev/null
	$(BIN)/pip download --quiet --dest $(TEST_WHEELS).tmp/native/wheels 'setuptools>=68' wheel
	mkdir -p $(TEST_WHEELS)
	@# only the dependencies: edge-agent's own wheel is built from the tree under test
	for kind in native aarch64; do \
	  rm -f $(TEST_WHEELS).tmp/$$kind/wheels/edge_agent-*.whl $(TEST_WHEELS).tmp/$$kind/wheels/SHA256SUMS \
	    $(TEST_WHEELS).tmp/$$kind/wheels/manifest.txt; \
	  mv $(TEST_WHEELS).tmp/$$kind/wheels $(TEST_WHEELS)/$$kind; \
	done
	rm -rf $(TEST_WHEELS).tmp
	touch $@
test-wheels: $(TEST_WHEELS)/.complete

# mosquitto is the broker the demo and the tests start; install it when it is missing.
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
	  ( echo "installing mosquitto (apt-get)"; $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mosquitto >/dev/null )
	@# the distribution's service is not needed: the demo and tests start their own
	@-$(SUDO) systemctl disable --now mosquitto >/dev/null 2>&1 || true

# rabbitmq-server (Debian's, 3.10): for tests/test_rabbitmq.py and `make rabbitmq-check`, which
# start their own node on free ports with everything in a temporary folder. The service the package
# starts is not needed: it is disabled right after installing, never when it was there before.
rabbitmq-server:
	@[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || \
	  ( echo "installing rabbitmq-server (apt-get)"; $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq rabbitmq-server >/dev/null && \
	    { $(SUDO) systemctl disable --now rabbitmq-server >/dev/null 2>&1 || true; } )

# The RabbitMQ compatibility check alone, each step's time printed (about 25 s; `make test` runs it
# too, as tests/test_rabbitmq.py): the agent, fleet list, a signed group push and a rollback
# through a throwaway RabbitMQ node with the MQTT plugin.
rabbitmq-check: install-test rabbitmq-server
	$(BIN)/python tests/rabbitmq_check.py

# systemd-analyze checks the unit (verify, security score) in tests/test_systemd_unit.py;
# it comes with the systemd package. Nothing is started: the tests need only the tool.
systemd-analyze:
	@command -v systemd-analyze >/dev/null 2>&1 || \
	  ( echo "installing systemd for systemd-analyze (apt-get)"; $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq systemd >/dev/null )

# chromium: the headless browser tests/test_views_agent.py loads the status page with (Debian's package).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  ( echo "installing chromium for the status page test (apt-get)"; $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null )

demo: install mosquitto
	$(BIN)/edge-agent demo

# The whole suite, as CI runs it (.ci/run), but for the tests marked retrain (minutes of
# retraining a model from models/ to check it reproduces the committed files byte for byte):
# `make test-retrain` runs those. -ra (pyproject.toml) lists every skip with its reason.
test: install-test test-wheels mosquitto rabbitmq-server systemd-analyze chromium
	$(BIN)/python -m pytest -q -m "not retrain"

test-retrain: install-test
	$(BIN)/python -m pytest -q -m retrain
test-slow: test-retrain  # its first name

# The edit loop: every test but the slow ones (@pytest.mark.slow) and those that import
# TensorFlow (@pytest.mark.tensorflow). Run one file or test with
# .venv/bin/python -m pytest -q tests/test_x.py::test_name
test-fast: install-test mosquitto systemd-analyze chromium
	$(BIN)/python -m pytest -q -m "not slow and not tensorflow"

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
