"""Remote management on the laptop and for IT: enrolment, signed orders, lease, kill pill.

The lease, the device keys and the start gate it relies on live below it, in
:mod:`vmclient.host`.  Here: :mod:`.enrol`, :mod:`.agent` (the order loop),
:mod:`.wipe` (the kill pill with its journal), :mod:`.rekey`; :mod:`.admin` is
the IT side.
"""
