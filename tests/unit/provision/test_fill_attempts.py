"""A streamed restore's fill task that fails on an error nobody foresaw (not one of ours,
which its loop takes as a race and looks again) is tried again, not left dead.

Before, such an error ended provd's fill task with it, silently (the task is kept, its
exception never read): the VM ran on its network-backed disks until provd restarted.
The end-to-end case (provd out of file descriptors mid-fill) is in
tests/integration/test_stream_restore.py."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import pytest

from vmclient.host.keys import DeviceKeys
from vmclient.provision.config import ProvisionConfig
from vmclient.provision.fill import PROBE_MOST, next_delay
from vmclient.provision.installer import Provisioner
from vmclient.provision.stream import STREAM_DIR, Streams
from vmclient.virt.libvirt import Hypervisor


def test_the_waits_between_attempts_double_from_one_poll_up_to_the_link_probes_most() -> None:
    delays, d = [], 0.0
    for _ in range(8):
        d = next_delay(d, 0.5)
        delays.append(d)
    assert delays == [0.5, 1.0, 2.0, 4.0, PROBE_MOST, PROBE_MOST, PROBE_MOST, PROBE_MOST]


def test_a_fill_failing_on_an_unforeseen_error_is_tried_again_and_a_cancel_still_ends_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``stream/vda.json`` is a directory (where the disk's stream description should be):
    each attempt fails with IsADirectoryError.  The fill task lives on, trying again with
    backoff, the error logged once with its traceback; provd's stop (a cancel) ends it."""
    cfg = dataclasses.replace(ProvisionConfig(), images_dir=tmp_path / "images",
                              state_dir=tmp_path / "state", device_dir=tmp_path / "device",
                              manage_dir=tmp_path / "manage")
    # (the fill fails before it asks libvirt anything: the hypervisor is never connected)
    prov = Provisioner(cfg, Hypervisor(cfg.libvirt_uri),
                       DeviceKeys.load_or_create(cfg.device_dir))
    (prov.vm_dir("office") / STREAM_DIR / "vda.json").mkdir(parents=True)
    caplog.set_level(logging.DEBUG, logger="vmclient.provision")

    async def fill_then_stop() -> asyncio.Task[None]:
        streams = Streams(prov, tmp_path / "provision.toml", read_timeout=30.0, poll=0.01)
        streams.follow("office")
        task = streams.fills["office"]
        await asyncio.sleep(0.5)  # attempts after 0.01, 0.02, 0.04, 0.08, 0.16 s: 6 or so
        assert not task.done(), task.exception()
        await streams.close()
        return task

    task = asyncio.run(fill_then_stop())
    assert task.cancelled()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, caplog.text
    assert errors[0].getMessage().startswith(
        "VM office: the fill of its disks failed (IsADirectoryError: ")
    assert errors[0].exc_info and errors[0].exc_info[0] is IsADirectoryError
    again = [r for r in caplog.records if "the fill failed again" in r.getMessage()]
    assert len(again) >= 3 and all(r.levelno == logging.DEBUG for r in again), caplog.text
