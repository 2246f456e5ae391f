"""Remote management on the laptop and for IT: enrolment, signed orders, lease, kill pill.

Pure parts: :mod:`.state` (trusted time, lease).  Adapters: :mod:`.keys` (device
keys on disk), :mod:`.enrol`, :mod:`.agent` (the order loop), :mod:`.wipe`
(the kill pill with its journal); :mod:`.admin` is the IT side.
"""
