"""One-off blocking calls on a connection of their own (no event loop): the CPU probe."""

from __future__ import annotations

import contextlib
import time

import libvirt

from ..errors import HypervisorUnavailable


def _open_blocking(uri: str) -> libvirt.virConnect:
    """A connection of its own for a one-off blocking call (no event loop)."""
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise HypervisorUnavailable(uri, exc.get_error_message()) from exc


def try_transient(uri: str, xml: str, settle: float = 1.0) -> str | None:
    """Start ``xml`` as a transient domain and destroy it again (blocking).

    None if QEMU started and was still running ``settle`` seconds later; else
    why not, in libvirt's or QEMU's words.  The domain is auto-destroyed with
    the connection, so nothing outlives the call.  Raises
    :class:`~vmclient.errors.HypervisorUnavailable` when libvirtd does not answer.
    """
    conn = _open_blocking(uri)
    try:
        try:
            dom = conn.createXML(xml, libvirt.VIR_DOMAIN_START_AUTODESTROY)
        except libvirt.libvirtError as exc:
            return str(exc.get_error_message())
        try:
            time.sleep(settle)
            try:
                state, reason = dom.state()
            except libvirt.libvirtError as exc:  # gone: QEMU exited
                return f"QEMU exited within {settle:g} s ({exc.get_error_message()})"
            if state != libvirt.VIR_DOMAIN_RUNNING:
                return f"QEMU did not keep running (state {state}, reason {reason})"
            return None
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
    finally:
        conn.close()


def versions(uri: str) -> tuple[int, int]:
    """libvirt's and the hypervisor's (QEMU's) version numbers, as libvirt reports them."""
    conn = _open_blocking(uri)
    try:
        return conn.getLibVersion(), conn.getVersion()
    finally:
        conn.close()
