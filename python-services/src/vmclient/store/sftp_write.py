"""A leaner send path under paramiko for SFTP writes: the data is copied once, to encrypt it.

paramiko 4.0 copies an upload's bytes about ten times on their way out: the
SFTP request is built in a ``Message`` (a ``BytesIO``) and prefixed with its
length, ``SFTPClient._write_all`` slices off what the channel took
(``out[n:]``, a copy of the rest, for every 32 KiB SSH packet of a 255 KiB
request), ``Channel.send`` builds another ``Message`` for each
``CHANNEL_DATA``, and ``Packetizer.send_message`` pads by concatenation,
slices the packet to encrypt it and prefixes the ciphertext with its length.
Every step is Python per 32 KiB packet, holding the GIL.

Here an SFTP ``WRITE`` is sent as its small header (``struct``) and a
``memoryview`` of the data.  Each ``CHANNEL_DATA`` packet's plaintext
(padding length, message header, the data, padding) is assembled in one
buffer reused for every packet, encrypted with the transport's AES-GCM
engine, and the packets of a request are written with one ``sendmsg`` (the
length field and the ciphertext as separate buffers: no concatenation).  The
padding is zeros: under AES-GCM it is encrypted and authenticated like the
rest, its content carries nothing (RFC 5647; paramiko writes random bytes).

What of paramiko is used, and why (all checked when a connection's writer is
made; anything else means paramiko's own path, :func:`writer` returns None):

- ``Channel``: ``lock``, ``closed``, ``remote_chanid``, ``out_window_size``
  and ``_wait_for_send_window`` (the window and packet-size accounting of
  ``Channel._send``, with its blocking and timeout), under ``lock`` as there;
- ``Transport``: ``clear_to_send``, ``clear_to_send_lock``,
  ``clear_to_send_timeout`` and ``active``: a packet is sent only when no key
  exchange is under way, exactly as ``Transport._send_user_message`` does;
- ``Packetizer``: its write lock and outbound state (name-mangled
  ``_Packetizer__*``: the engine, the AEAD flag, IV, sequence number, the
  sent byte and packet counters, the block size, no compression, no EtM,
  no packet dump), read under the write lock for every batch (a re-key
  replaces them), updated as ``send_message`` does, including asking for a
  re-key after ``REKEY_BYTES``/``REKEY_PACKETS`` (``_trigger_rekey``); the
  IV's invocation counter is advanced as ``_inc_iv_counter`` does;
- ``SFTPClient``: ``_lock``, ``request_number`` and ``_expecting`` to number
  requests and route their answers, ``_read_response`` to read them (as
  ``_async_request`` and ``SFTPFile._write`` do), ``_convert_status`` to
  turn an error status into the exception paramiko raises.

The writes are pipelined (``WRITE_IN_FLIGHT`` requests deep); every
acknowledgement is read and a failed write raises (what paramiko raises for
the status, e.g. ``PermissionError``, or ``OSError`` for a generic failure).
That holds on paramiko's send path too (:class:`Writer` without a
:class:`ChannelWriter`: another cipher, or ``lean`` off), where
``SFTPFile.write`` would drop the answers.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import paramiko
from paramiko.common import cMSG_CHANNEL_DATA
from paramiko.sftp import CMD_STATUS, CMD_WRITE, int64

_WRITE_HEAD = struct.Struct(">IBII")  # SFTP packet length, type, request id, handle length
_WRITE_TAIL = struct.Struct(">QI")  # offset, data length
_DATA_HEAD = struct.Struct(">IBBII")  # SSH packet length, padding length, CHANNEL_DATA,
# recipient channel, data length
_LEN = struct.Struct(">I")
_BLOCK = 16  # AES block: what the padding rounds to
WRITE_IN_FLIGHT = 64  # unacknowledged write requests per connection (64 x 255 KiB)
WRITE_GROUP = 4  # write requests handed to the channel writer at once (< WRITE_IN_FLIGHT:
# the oldest request waited for has always been sent)
KiB = 1 << 10
BATCH = 1 << 20  # bytes of packets encrypted and written at once
_CHANNEL_DATA = cMSG_CHANNEL_DATA[0]
_ZEROS = memoryview(bytes(64))
_P = "_Packetizer__"  # paramiko's name-mangled Packetizer attributes
_STATE = ("write_lock", "block_engine_out", "aead_out", "etm_out", "compress_engine_out",
          "dump_packets", "block_size_out", "iv_out", "sequence_number_out", "sent_bytes",
          "sent_packets", "need_rekey", "closed")


class Unsupported(Exception):
    """The lean path does not apply (not AES-GCM, compression, a changed paramiko)."""


class ChannelWriter:
    """Sends bytes as ``CHANNEL_DATA`` of one channel, AES-GCM encrypted, few copies."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self.transport = channel.get_transport()
        self.packetizer = self.transport.packetizer
        self.sock = self.transport.sock
        if not isinstance(self.sock, socket.socket):
            raise Unsupported("not a plain socket under the transport")
        for name in ("lock", "closed", "eof_sent", "remote_chanid", "out_window_size",
                     "out_max_packet_size", "_wait_for_send_window"):
            _need(channel, name)
        for name in ("clear_to_send", "clear_to_send_lock", "clear_to_send_timeout", "active"):
            _need(self.transport, name)
        for name in ("_trigger_rekey", "_initial_kex_done", "REKEY_BYTES",
                     "REKEY_PACKETS", *(_P + s for s in _STATE)):
            _need(self.packetizer, name)
        self._check_cipher()
        self.plain = bytearray()  # the packets' plaintext, reused

    def _check_cipher(self) -> None:
        pk = self.packetizer
        if (not getattr(pk, _P + "aead_out") or getattr(pk, _P + "etm_out")
                or getattr(pk, _P + "compress_engine_out") is not None
                or getattr(pk, _P + "dump_packets")
                or getattr(pk, _P + "block_size_out") != _BLOCK
                or not hasattr(getattr(pk, _P + "block_engine_out"), "encrypt")):
            raise Unsupported("the outbound cipher is not AES-GCM (or compression is on)")

    def send(self, pieces: list[bytes | memoryview]) -> None:
        """Send the concatenation of ``pieces``; raises if the channel or connection ends.

        The window is taken as ``Channel._wait_for_send_window`` takes it, but all
        that is open at once (paramiko takes one packet's worth per call); the
        packets are assembled in a buffer reused from call to call and written
        ``BATCH`` bytes at a time, and before waiting for the window to open.
        """
        src = deque(p if isinstance(p, memoryview) else memoryview(p) for p in pieces if len(p))
        left = sum(map(len, src))
        chan = self.channel
        maxdata = chan.out_max_packet_size - 64  # as Channel._wait_for_send_window
        if len(self.plain) < BATCH + 64 * KiB:
            self.plain = bytearray(BATCH + 64 * KiB)  # (64 KiB: the packets' framing)
        plain = memoryview(self.plain)
        packets: list[tuple[int, int]] = []  # (start, end) of each packet in ``plain``
        used = 0
        try:
            while left:
                with chan.lock:
                    if chan.closed:
                        raise OSError("Socket is closed")  # what Channel.send raises
                    window = chan.out_window_size
                    if chan.eof_sent:
                        n = 0
                    elif (not window and packets) or used >= BATCH:
                        n = -1  # send what is allocated first
                    elif not window:
                        n = chan._wait_for_send_window(min(left, maxdata))  # waits
                    else:
                        n = min(left, window, BATCH - used)
                        chan.out_window_size = window - n
                if n == -1:
                    self._write(plain, packets)
                    packets, used = [], 0
                    continue
                if not n:
                    raise EOFError("the SFTP channel was closed")
                left -= n
                while n:
                    k = min(n, maxdata)
                    n -= k
                    start, used = used, self._assemble(plain, used, k, src)
                    packets.append((start, used))
            if packets:
                self._write(plain, packets)
        finally:
            plain.release()

    def _assemble(self, plain: memoryview, at: int, n: int, src: deque[memoryview]) -> int:
        """Lay out at ``at`` a CHANNEL_DATA packet of the next ``n`` bytes of ``src``
        (length field, padding length, message, zero padding); where it ends."""
        length, pad = _sizes(n)
        _DATA_HEAD.pack_into(plain, at, length, pad, _CHANNEL_DATA, self.channel.remote_chanid,
                             n)
        pos = at + _DATA_HEAD.size
        while n:
            p = src[0]
            if len(p) <= n:
                src.popleft()
            else:
                src[0] = p[n:]
                p = p[:n]
            plain[pos:pos + len(p)] = p
            pos += len(p)
            n -= len(p)
        plain[pos:pos + pad] = _ZEROS[:pad]
        return pos + pad

    def _write(self, plain: memoryview, packets: list[tuple[int, int]]) -> None:
        """Encrypt and write the assembled ``packets`` as one key-exchange-free unit."""
        t = self.transport
        began = time.time()
        while True:  # as Transport._send_user_message: wait for any key exchange to end
            t.clear_to_send.wait(0.1)
            if not t.active:
                raise EOFError("the SSH connection ended")
            t.clear_to_send_lock.acquire()
            if t.clear_to_send.is_set():
                break
            t.clear_to_send_lock.release()
            if time.time() > began + t.clear_to_send_timeout:
                raise paramiko.SSHException("Key-exchange timed out waiting for key negotiation")
        try:
            pk = self.packetizer
            with getattr(pk, _P + "write_lock"):
                try:
                    self._check_cipher()  # (a re-key could in principle choose another one)
                except Unsupported as exc:  # the connection is dropped and opened again
                    raise paramiko.SSHException(str(exc)) from exc
                out = self._seal(plain, packets)
                total = sum(map(len, out))
                self._sendmsg(out, total)
                sent_bytes = getattr(pk, _P + "sent_bytes") + total
                sent_packets = getattr(pk, _P + "sent_packets") + len(packets)
                setattr(pk, _P + "sent_bytes", sent_bytes)
                setattr(pk, _P + "sent_packets", sent_packets)
                if ((sent_packets >= pk.REKEY_PACKETS or sent_bytes >= pk.REKEY_BYTES)
                        and not getattr(pk, _P + "need_rekey")):
                    pk._trigger_rekey()  # (the transport's thread starts the key exchange)
        finally:
            t.clear_to_send_lock.release()

    def _seal(self, plain: memoryview, packets: list[tuple[int, int]]
              ) -> list[bytes | memoryview]:
        """Each packet's length field and its ciphertext with tag, as
        ``Packetizer.send_message`` makes them; the IV's invocation counter and the
        sequence number advanced (as ``Packetizer._inc_iv_counter`` does, RFC 5647)."""
        pk = self.packetizer
        encrypt = getattr(pk, _P + "block_engine_out").encrypt
        iv = getattr(pk, _P + "iv_out")
        fixed, counter = iv[:4], int.from_bytes(iv[4:], "big")
        seq = getattr(pk, _P + "sequence_number_out")
        out: list[bytes | memoryview] = []
        for start, end in packets:
            head = plain[start:start + 4]
            out.append(head)
            out.append(encrypt(fixed + counter.to_bytes(8, "big"), plain[start + 4:end], head))
            counter += 1
        seq = (seq + len(packets)) & 0xFFFFFFFF
        if seq < len(packets) and not pk._initial_kex_done:
            raise paramiko.SSHException("Sequence number rolled over during initial kex!")
        setattr(pk, _P + "iv_out", fixed + counter.to_bytes(8, "big"))
        setattr(pk, _P + "sequence_number_out", seq)
        return out

    def _sendmsg(self, out: Sequence[bytes | memoryview], total: int) -> None:
        """Write all of ``out`` (``total`` bytes), as ``Packetizer.write_all`` does (its
        socket has a short timeout, so a full send buffer is waited out unless the
        packetizer closed)."""
        parts = deque(out)
        while parts:
            try:
                n = self.sock.sendmsg(parts)
            except (TimeoutError, BlockingIOError, InterruptedError):
                if getattr(self.packetizer, _P + "closed"):
                    raise EOFError("the SSH connection was closed") from None
                continue
            if n <= 0:
                raise EOFError("the SSH connection was closed")
            if n == total:
                return
            total -= n
            while n:
                first = len(parts[0])
                if first <= n:
                    parts.popleft()
                    n -= first
                else:
                    parts[0] = memoryview(parts[0])[n:]
                    n = 0


def _sizes(n: int) -> tuple[int, int]:
    """(packet length field, padding) of a CHANNEL_DATA packet carrying ``n`` bytes."""
    payload = 9 + n  # message type, recipient channel, string length, the data
    pad = 3 + _BLOCK - ((payload + 4) % _BLOCK)  # as Packetizer._build_packet for AEAD
    return 1 + payload + pad, pad


def _need(obj: object, name: str) -> None:
    if not hasattr(obj, name):
        raise Unsupported(f"paramiko's {type(obj).__name__} has no {name}")


class _Acks:
    """The answers to pipelined writes (paramiko calls ``_async_response``)."""

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self.sftp = sftp
        self.done: set[int] = set()
        self.error: BaseException | None = None

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        self.done.add(num)
        if self.error is not None:
            return
        if t != CMD_STATUS:
            self.error = OSError(f"unexpected SFTP answer {t} to a write")
            return
        try:
            self.sftp._convert_status(msg)  # raises for an error status
        except (OSError, EOFError) as exc:
            self.error = exc if isinstance(exc, OSError) else OSError(f"write failed: {exc}")


class Writer:
    """Pipelined SFTP writes of one client whose every acknowledgement is checked.

    The requests go through a :class:`ChannelWriter` if there is one, else through
    paramiko's ``_async_request``.  (``SFTPFile.write`` pipelined registers its
    requests for no one: paramiko 4.0 reads their answers and drops them, so a
    write the server failed, e.g. a full disk, went unnoticed.)
    """

    def __init__(self, sftp: paramiko.SFTPClient, request_size: int,
                 channel: ChannelWriter | None) -> None:
        for name in ("_lock", "request_number", "_expecting", "_read_response",
                     "_convert_status", "_async_request"):
            _need(sftp, name)
        self.sftp = sftp
        self.channel = channel
        self.request_size = request_size

    def write(self, handle: bytes, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset`` of the open file ``handle``; returns when every
        request is acknowledged, raises the first failure."""
        sftp: Any = self.sftp
        acks = _Acks(sftp)
        view = memoryview(data).cast("B")
        window: deque[int] = deque()
        group: list[bytes | memoryview] = []
        for pos in range(0, len(view), self.request_size):
            piece = view[pos:pos + self.request_size]
            if self.channel is None:
                num = sftp._async_request(acks, CMD_WRITE, handle, int64(offset + pos),
                                          piece.tobytes())
            else:
                with sftp._lock:
                    num = sftp.request_number
                    sftp._expecting[num] = acks
                    sftp.request_number += 1
                group.append(_WRITE_HEAD.pack(_WRITE_HEAD.size - 4 + len(handle)
                                              + _WRITE_TAIL.size + len(piece), CMD_WRITE, num,
                                              len(handle))
                             + handle + _WRITE_TAIL.pack(offset + pos, len(piece)))
                group.append(piece)
                if len(group) >= 2 * WRITE_GROUP or pos + self.request_size >= len(view):
                    self.channel.send(group)
                    group = []
            window.append(num)
            while len(window) > WRITE_IN_FLIGHT or (window and window[0] in acks.done):
                self._wait(acks, window.popleft())
        while window:
            self._wait(acks, window.popleft())

    def _wait(self, acks: _Acks, num: int) -> None:
        while num not in acks.done and acks.error is None:
            self.sftp._read_response()
        acks.done.discard(num)
        if acks.error is not None:
            raise acks.error


def writer(sftp: paramiko.SFTPClient, request_size: int, *, lean: bool = True
           ) -> Writer | None:
    """The writer for ``sftp``'s connection: through a :class:`ChannelWriter` if ``lean``
    and it applies, else through paramiko's send path; None if even that does not apply
    (a paramiko without the hooks named above: then ``SFTPFile.write``)."""
    channel = sftp.get_channel()
    lean_channel = None
    if lean and channel is not None:
        with contextlib.suppress(Unsupported):
            lean_channel = ChannelWriter(channel)
    try:
        return Writer(sftp, request_size, lean_channel)
    except Unsupported:
        return None
