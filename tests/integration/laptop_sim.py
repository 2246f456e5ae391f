"""A simulated laptop: a umockdev testbed in a process of its own.

Run under umockdev's preload library (the fixture does), so that uevents and
the lid's ioctls are served as for a real device.  Prints the testbed root,
then takes one JSON command a line on stdin and answers "ok" a line:
``["lid", true]``, ``["ac", false]``, ``["battery", 3, "Critical"]``.
"""

from __future__ import annotations

import json
import sys

from fixtures_udev import Laptop


def main() -> None:
    opts = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    laptop = Laptop(**opts)
    print(laptop.tb.get_root_dir(), flush=True)
    for line in sys.stdin:
        cmd, *args = json.loads(line)
        if cmd == "lid":
            laptop.set_lid(*args)
        elif cmd == "ac":
            laptop.set_ac(*args)
        elif cmd == "battery":
            laptop.set_battery(*args)
        elif cmd == "remove_lid":
            laptop.remove_lid()
        elif cmd == "add_lid":
            laptop.add_lid(announce=True)
        print("ok", flush=True)


if __name__ == "__main__":
    main()
