"""What the nbdkit plugin (:mod:`.nbdplugin`) opens: the chunk source a spec file names.

The repository, the device's credentials and the VM's data key are found as provd
finds them, from provd's configuration file (the spec's ``config``): the plugin
holds no secret of its own and receives none.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..host.keys import DeviceKeys, VMKeys
from . import config as pconfig
from .receiver import open_datacenter
from .streamcore import StreamSpec
from .streamsource import ChunkSource


def open_source(spec_path: Path) -> ChunkSource:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="vmclient-stream: %(levelname)s %(message)s")
    spec = StreamSpec.parse(spec_path.read_bytes(), str(spec_path))
    ids_path = spec_path.parent / spec.ids
    ids = spec.check_ids(ids_path.read_bytes(), str(ids_path))
    cfg = pconfig.load(spec.config)
    device = DeviceKeys(cfg.device_dir)
    keys = VMKeys(cfg.state_dir, device).load(spec.vm)
    remote, _receiver = open_datacenter(cfg, device)
    source = ChunkSource(remote, spec.store, keys, ids, spec.size, spec.chunk_size,
                         timeout=spec.timeout)
    source.open()
    return source
