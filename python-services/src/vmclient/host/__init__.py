"""The laptop itself, below every service: device keys, atomic files, the lease, the start gate.

:mod:`.files` (atomic writes, fsync, shredding), :mod:`.keys` (the device key
store and each VM's wrapped data key), :mod:`.lease` (trusted time and the
lease, ``manage/state.json``), :mod:`.assigned` (what IT assigned and re-keyed),
:mod:`.inventory` (which domains are vmclient VMs) and :mod:`.gate` (the one
key-gated start path).  Everything here imports only the floors below it
(``docs/architecture.md``).
"""
