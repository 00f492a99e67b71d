# make demo: run the bundled demo end to end.   make test: install what the tests need and run them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install mosquitto clean

$(BIN)/edge-agent: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/edge-agent

# mosquitto is the broker the demo and the tests start; install it when it is missing.
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
	  ( echo "installing mosquitto (apt-get)"; $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mosquitto >/dev/null )
	@# the distribution's service is not needed: the demo and tests start their own
	@-$(SUDO) systemctl disable --now mosquitto >/dev/null 2>&1 || true

demo: install mosquitto
	$(BIN)/edge-agent demo

test: install mosquitto
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
