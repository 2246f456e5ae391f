"""scripts/check-layer: `bitbake -p` and yocto-check-layer against checkouts
of the pinned layers.  Runs when VMCLIENT_LAYERS_DIR points at such a
directory (what `kas checkout kas.yml` produces); skips otherwise."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .layerutil import REPO

pytestmark = pytest.mark.layer

SCRIPT = REPO / "scripts" / "check-layer"
LAYERS_DIR = os.environ.get("VMCLIENT_LAYERS_DIR", "")


def test_check_layer_refuses_a_directory_without_the_pinned_layers(tmp_path):
    proc = subprocess.run([str(SCRIPT), "--parse-only", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "bitbake is missing" in proc.stderr


@pytest.mark.timeout(3 * 3600)
@pytest.mark.skipif(not LAYERS_DIR, reason="VMCLIENT_LAYERS_DIR is not set: bitbake -p and "
                    "yocto-check-layer were NOT run (point it at a `kas checkout kas.yml` directory)")
def test_layer_parses_and_passes_yocto_check_layer():
    layers = Path(LAYERS_DIR)
    assert (layers / "openembedded-core").is_dir(), f"VMCLIENT_LAYERS_DIR={layers} holds no openembedded-core"
    # The script picks its own build directory: when run as root it hands
    # over to an unprivileged user, who cannot enter pytest's tmp_path.
    proc = subprocess.run([str(SCRIPT), str(layers)],
                          capture_output=True, text=True, timeout=3 * 3600, check=False)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
    assert proc.returncode == 0, f"scripts/check-layer failed (exit {proc.returncode}):\n{tail}"
