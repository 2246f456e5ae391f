"""``vmclientctl`` as a user meets it before any daemon answers: confirmation, a missing bus,
``--config``, ``--debug``, and reads that leave no state behind (no bus, no libvirt needed).

With a daemon: tests/integration/test_provision_cli.py and test_cli_bus.py."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from testlib import PYTHONPATH, vmclientctl

NO_BUS = "unix:path=/nonexistent/vmclient-test/system_bus_socket"


def ctl(*args: str, stdin: int | None = subprocess.DEVNULL, **env: str
        ) -> subprocess.CompletedProcess[str]:
    return vmclientctl(*args, env={"DBUS_SYSTEM_BUS_ADDRESS": NO_BUS, **env}, stdin=stdin)


def on_terminal(answer: str, *args: str) -> tuple[int, str]:
    """Run vmclientctl with a terminal on stdin and stderr; type ``answer`` at its question."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "DBUS_SYSTEM_BUS_ADDRESS": NO_BUS}
    proc = subprocess.Popen([sys.executable, "-m", "vmclient.cli.main", *args], env=env,
                            stdin=slave, stderr=slave, stdout=subprocess.DEVNULL)
    os.close(slave)
    seen, deadline = b"", time.monotonic() + 60
    try:
        while b"[y/N]" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, f"not asked: {seen!r}"
            if select.select([master], [], [], 1)[0]:
                seen += os.read(master, 4096)
        os.write(master, answer.encode() + b"\n")
        rc = proc.wait(timeout=60)
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return rc, seen.decode(errors="replace")


def test_remove_without_a_terminal_needs_yes() -> None:
    r = ctl("vm", "remove", "office")
    assert r.returncode == 64, r.stderr
    assert "'office'" in r.stderr and "--yes" in r.stderr and "disks deleted" in r.stderr
    assert "system bus" not in r.stderr  # refused before asking the daemon anything
    r = ctl("vm", "remove", "--yes", "office")
    assert r.returncode == 69 and "system bus" in r.stderr, r.stderr  # went on to the daemon


def test_remove_asks_on_a_terminal() -> None:
    rc, out = on_terminal("n", "vm", "remove", "office")
    assert rc == 1 and "nothing was changed" in out, out
    rc, out = on_terminal("y", "vm", "remove", "office")
    assert rc == 69 and "system bus" in out, out  # confirmed: on to the daemon


def test_no_system_bus_names_the_socket_and_what_to_run() -> None:
    r = ctl("power", "status")
    assert r.returncode == 69, r.stderr
    assert NO_BUS in r.stderr and "systemctl status dbus" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = ctl("sync", "status", DBUS_SYSTEM_BUS_ADDRESS="nonsense")
    assert r.returncode == 69 and "DBUS_SYSTEM_BUS_ADDRESS" in r.stderr, r.stderr


def test_a_config_file_that_is_not_there_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "provison.toml"  # a typo
    r = ctl("vm", "--local", "--config", str(missing), "list")
    assert r.returncode == 78, r.stderr
    assert str(missing) in r.stderr and "file not found" in r.stderr, r.stderr
    r = ctl("vm", "--config", str(missing), "list")  # provd reads its own: not silently ignored
    assert r.returncode == 64 and "only with --local" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_status_reads_without_writing(tmp_path: Path) -> None:
    state, device = tmp_path / "manage", tmp_path / "device"
    r = ctl("status", "--state-dir", str(state), "--device-dir", str(device))
    assert r.returncode == 0 and "not enrolled" in r.stdout, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_debug_logs_and_shows_the_traceback() -> None:
    r = ctl("--debug", "power", "status")
    assert r.returncode == 69
    assert "DEBUG" in r.stderr and f"connecting to the system bus at {NO_BUS}" in r.stderr
    assert "Traceback (most recent call last)" in r.stderr, r.stderr
    r = ctl("power", "status")
    assert r.returncode == 69
    assert "DEBUG" not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_ctrl_c_says_that_provd_goes_on_with_the_work() -> None:
    """By hand: Ctrl-C of ``vm restore VM --stream`` ended the command silently (exit 130)
    while vmclient-provd went on and the VM came up running; the user could not know."""
    import io

    from vmclient.cli.progress import ProgressPrinter

    out = io.StringIO()
    printer = ProgressPrinter(out)
    printer.show("mem", "download", 10, 100, 1.0, 5.0)
    printer.interrupted()
    assert out.getvalue().splitlines()[-1] == (
        "vmclientctl: interrupted: vmclient-provd goes on with the work (download of mem); "
        "`vmclientctl vm list` shows the VM once it is done")


def test_vm_list_shows_every_vm_whose_disks_provd_fills_each_with_its_own_share() -> None:
    """Two streamed restores fill at once: each VM shows its own share (provd's ``Fills``),
    in the text and in ``--json``; a VM not filling shows none, nor does a long operation
    in the progress properties make any VM "streaming"."""
    import json

    from vmclient.cli.vm import render_list, with_fill

    rows = [{"name": "office", "kind": "business", "state": "running", "image": "o",
             "image_version": 3},
            {"name": "hr", "kind": "business", "state": "paused", "image": "h",
             "image_version": 1},
            {"name": "home", "kind": "private", "state": "shutoff", "image": "p",
             "image_version": 0}]
    props = {"Phase": 3, "CurrentVM": "crm", "BytesDone": 5, "BytesTotal": 10,
             "Fills": {"office": [1 << 20, 8 << 20], "hr": [3 << 20, 4 << 20]}}
    listed = with_fill(rows, props)
    lines = render_list(listed).splitlines()
    assert lines[1].split() == ["office", "business", "running,", "streaming", "12.5%", "o",
                                "v3"]
    assert lines[2].split() == ["hr", "business", "paused,", "streaming", "75.0%", "h", "v1"]
    assert "streaming" not in lines[3]
    assert [v.get("fill") for v in json.loads(json.dumps(listed))] == [12.5, 75.0, None]
    # provd fills nothing (or is older and has no Fills): nobody is shown streaming
    for none in ({**props, "Fills": {}}, {"Phase": 7, "CurrentVM": "office"}, {}):
        assert "streaming" not in render_list(with_fill(rows, none))
    assert with_fill(rows, {"Fills": {"office": [0, 0]}})[0]["fill"] == 0.0
