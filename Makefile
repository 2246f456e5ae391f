# vmclient developer entry points.  `make test` on a fresh Debian 12 machine,
# as root, installs everything the suite needs and runs it.

VENV ?= $(CURDIR)/.venv
PYTEST_ARGS ?=
# Two pytest-xdist workers, each running a group of tests in order (tests/conftest.py):
# the booted hosts of the system tier (VMCLIENT_SYSTEM_TESTS=1, as CI runs it) beside the
# rest, or without them the unit and layer tests beside the integration tests, which
# mostly wait on daemons and guests.  PARALLEL= runs everything in one process.
PARALLEL ?= -n 2 --dist loadgroup

.PHONY: test setup daemons lint unit integration fuzz bench clean

test: setup daemons
	scripts/clean-test-domains
	$(VENV)/bin/python -m pytest $(PARALLEL) $(PYTEST_ARGS); rc=$$?; scripts/clean-test-domains; exit $$rc

setup:
	VMCLIENT_VENV=$(VENV) scripts/setup-host

daemons:
	VMCLIENT_VENV=$(VENV) scripts/start-daemons

lint: setup
	$(VENV)/bin/ruff check python-services tests bench

unit: setup
	$(VENV)/bin/python -m pytest tests/unit

integration: setup daemons
	$(VENV)/bin/python -m pytest tests/integration

# the parsers' long fuzz run (python-services/docs/testing.md); `make test` runs a short one
FUZZ_EXAMPLES ?= 20000
fuzz: setup
	VMCLIENT_FUZZ=long VMCLIENT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) nice -n 19 \
	  $(VENV)/bin/python -m pytest tests/unit/fuzz --timeout=0 --hypothesis-show-statistics

bench: setup daemons
	$(VENV)/bin/python bench/power.py --vms 8 --rounds 10
	$(VENV)/bin/python bench/provision.py
	$(VENV)/bin/python bench/install.py --mib 256 --change 2
	$(VENV)/bin/python bench/sync.py
	$(VENV)/bin/python bench/host_update.py --mib 128 --change 5
	$(VENV)/bin/python bench/restore.py

clean:
	rm -rf $(VENV) .pytest_cache

# --- a whole vmclient host under QEMU (tests/system/README.md) -------------
# `make run` boots it with two demo VMs and tells how to reach it;
# IMAGE=<.../vmclient-image-<machine>.qemuboot.conf> boots a Yocto image instead
# (SSH_KEY=<key root accepts>, or an empty root password as debug images have).
IMAGE ?=
SSH_KEY ?=

.PHONY: run stop system-image system-test

run: setup
	$(VENV)/bin/python scripts/run-host start $(if $(IMAGE),--image $(IMAGE)) $(if $(SSH_KEY),--ssh-key $(SSH_KEY))

stop:
	$(VENV)/bin/python scripts/run-host stop

system-image: setup
	tests/system/image/build --venv $(VENV)

system-test: setup
	$(VENV)/bin/python -m pytest tests/system --system $(PYTEST_ARGS)
