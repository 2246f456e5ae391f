# vmclient developer entry points.  `make test` on a fresh Debian 12 machine,
# as root, installs everything the suite needs and runs it.

VENV ?= $(CURDIR)/.venv
PYTEST_ARGS ?=

.PHONY: test setup daemons lint unit integration bench clean

test: setup daemons
	scripts/clean-test-domains
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; scripts/clean-test-domains; exit $$rc

setup:
	VMCLIENT_VENV=$(VENV) scripts/setup-host

daemons:
	scripts/start-daemons

lint: setup
	$(VENV)/bin/ruff check python-services tests bench

unit: setup
	$(VENV)/bin/python -m pytest tests/unit

integration: setup daemons
	$(VENV)/bin/python -m pytest tests/integration

bench: setup daemons
	$(VENV)/bin/python bench/power.py --vms 8 --rounds 10

clean:
	rm -rf $(VENV) .pytest_cache
