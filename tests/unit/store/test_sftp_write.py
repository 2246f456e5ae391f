"""The lean CHANNEL_DATA sender, against a paramiko server transport over a socket pair."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import paramiko
import pytest

from vmclient.store.sftp import CIPHER
from vmclient.store.sftp_write import ChannelWriter, Unsupported, _sizes

KiB = 1 << 10


class _Server(paramiko.ServerInterface):  # type: ignore[misc]
    def get_allowed_auths(self, username: str) -> str:
        return "none"

    def check_auth_none(self, username: str) -> int:
        return int(paramiko.AUTH_SUCCESSFUL)

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return int(paramiko.OPEN_SUCCEEDED)


class _Pair:
    """A client channel and the server's end of it (a small window: the sender waits)."""

    def __init__(self, cipher: str) -> None:
        ours, theirs = socket.socketpair()
        self.server = paramiko.Transport(theirs, default_window_size=64 * KiB)
        self.server.add_server_key(paramiko.ECDSAKey.generate())
        self.server.start_server(threading.Event(), _Server())
        self.client = paramiko.Transport(ours)
        self.client.get_security_options().ciphers = (cipher,)
        self.client.start_client(timeout=10)
        self.client.auth_none("test")
        self.channel = self.client.open_session()
        self.channel.settimeout(10)
        served = self.server.accept(10)
        assert served is not None
        self.served: paramiko.Channel = served

    def receive(self, n: int, into: list[bytes]) -> threading.Thread:
        def read() -> None:
            got = 0
            while got < n:
                data = self.served.recv(min(n - got, 50 * KiB))
                if not data:
                    return
                into.append(data)
                got += len(data)

        thread = threading.Thread(target=read)
        thread.start()
        return thread

    def close(self) -> None:
        self.client.close()
        self.server.close()


@pytest.fixture
def pair() -> Iterator[_Pair]:
    p = _Pair(CIPHER)
    yield p
    p.close()


def test_packet_sizes_are_padded_as_paramiko_pads_aead_packets() -> None:
    for n in (0, 1, 7, 32704, 255 * KiB):
        length, pad = _sizes(n)
        assert 4 <= pad < 4 + 16 and length % 16 == 0 and length == 1 + 9 + n + pad


def test_pieces_arrive_whole_and_in_order_through_a_small_window(pair: _Pair) -> None:
    pieces = [os.urandom(n) for n in (13, 255 * KiB, 1, 100 * KiB, 3 * 32704, 5)]
    whole = b"".join(pieces)
    got: list[bytes] = []
    thread = pair.receive(3 * len(whole), got)
    writer = ChannelWriter(pair.channel)
    for _ in range(3):
        writer.send([memoryview(p) for p in pieces])
    thread.join(10)
    assert b"".join(got) == whole * 3


def test_sending_goes_on_across_key_exchanges(pair: _Pair) -> None:
    pair.client.packetizer.REKEY_BYTES = 256 * KiB
    exchange = pair.client.H
    data = os.urandom(2 << 20)
    got: list[bytes] = []
    thread = pair.receive(len(data), got)
    writer = ChannelWriter(pair.channel)
    for off in range(0, len(data), 255 * KiB):
        writer.send([data[off:off + 255 * KiB]])
    thread.join(10)
    assert b"".join(got) == data
    assert exchange != pair.client.H


def test_a_closed_channel_raises(pair: _Pair) -> None:
    writer = ChannelWriter(pair.channel)
    pair.channel.close()
    with pytest.raises(OSError, match="closed"):
        writer.send([b"late"])


def test_another_cipher_is_not_for_the_lean_path() -> None:
    p = _Pair("aes256-ctr")
    try:
        with pytest.raises(Unsupported):
            ChannelWriter(p.channel)
    finally:
        p.close()


def test_a_full_send_buffer_is_waited_out_and_partial_sends_continue(pair: _Pair) -> None:
    writer = ChannelWriter(pair.channel)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        ours.settimeout(0.01)  # as the transport's socket: short timeouts, then again
        writer.sock = ours
        parts = [os.urandom(300 * KiB), memoryview(os.urandom(200 * KiB)), b"end"]
        got: list[bytes] = []

        def slowly() -> None:
            while sum(map(len, got)) < 500 * KiB + 3:
                time.sleep(0.002)
                got.append(theirs.recv(64 * KiB))

        thread = threading.Thread(target=slowly)
        thread.start()
        writer._sendmsg(parts, 500 * KiB + 3)
        thread.join(10)
    assert b"".join(got) == b"".join(parts)
