"""What the status bar says, from what the daemons report: pure functions.

The bar's power field comes from vmclient-powerd's ``Power`` properties
(docs/dbus-api.md): ``PowerSource`` (1 AC, 2 battery), ``BatteryPresent``,
``BatteryPercent``, ``LidState`` (3 closed), ``State`` (3 paused, 5 saving).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

AC, BATTERY = 1, 2
_PHASES = {2: "pausing the VMs", 3: "VMs paused", 4: "resuming the VMs", 5: "saving the VMs"}


def power_text(untrusted_props: Mapping[str, Any]) -> str:
    """"On AC, battery 80%", "On battery, 45%", "On AC"; "" while powerd is not there."""
    if not untrusted_props:
        return ""
    source = untrusted_props.get("PowerSource")
    present = bool(untrusted_props.get("BatteryPresent"))
    try:
        percent = float(untrusted_props.get("BatteryPercent", 0.0))
    except (TypeError, ValueError):
        percent = 0.0
    if source == BATTERY:
        text = f"On battery, {percent:.0f}%" if present else "On battery"
    elif source == AC:
        text = f"On AC, battery {percent:.0f}%" if present else "On AC"
    else:
        text = ""
    phase = _PHASES.get(untrusted_props.get("State", 0))
    return f"{text} \u00b7 {phase}" if text and phase else (phase or text)
