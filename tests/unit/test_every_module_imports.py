"""Every module of ``vmclient`` imports.  mypy cannot say so: the project's mypy runs with
``ignore_missing_imports`` (libvirt, gi, pyudev, evdev have no stubs), which also hides a
``from .keys import …`` whose module was moved away."""

from __future__ import annotations

import importlib
import pkgutil

import vmclient


def test_every_module_of_vmclient_imports() -> None:
    broken = {}
    for mod in pkgutil.walk_packages(vmclient.__path__, "vmclient."):
        try:
            importlib.import_module(mod.name)
        except Exception as exc:
            broken[mod.name] = repr(exc)
    assert not broken, broken
