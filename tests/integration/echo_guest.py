"""Guests that paint a known picture and echo keystrokes: a 512-byte boot sector.

The firmware (SeaBIOS) loads the sector at 0:7C00 and jumps to it.  It hides
the cursor (nothing blinks between two screenshots), fills the 80x25 text
screen with ``letter`` in white on 25 bands of the 8 VGA background colours,
band ``r`` in colour ``(r + seed) & 7`` (two guests with different seeds look
different in every band), then reads keys through the BIOS (int 16h) and writes
each one, black on light grey, from the start of row :data:`ECHO_ROW` on.

The BIOS has no character for the Windows (Super) keys, so int 16h never returns
them.  To show that one arrived, the sector hooks int 15h, function 4Fh, which
SeaBIOS's keyboard interrupt calls with every byte the keyboard sends (the
keyboard intercept, before the BIOS decodes it), and for each make code of a
Windows key (E0 5B, E0 5C in scancode set 1) writes a yellow block from the
start of row :data:`SUPER_ROW` on; then it goes on to the BIOS's own handler.

The domains get SPICE with ``<listen type='none'/>`` and a virtio video device,
as provisioning's ``domain_xml()`` gives them, and vmclient's VM metadata
(``<vmc:vm kind=…/>``) so that vmclient-provd counts them as its own.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
from fixtures_virt import IMAGES, URI, open_libvirt, scaled
from pixels import Image

COLS, ROWS = 80, 25
ECHO_ROW = 12
ECHO_ATTR = 0x70  # black on light grey
SUPER_ROW = 20  # a yellow block for each Windows key pressed
SUPER_CELL = 0x0EDB  # a full block (0xDB) in yellow (attribute 0x0E)
YELLOW = (0xFF, 0xFF, 0x55)  # the VGA palette's colour 14: no band has it
# The VGA palette's 8 background colours (attribute bits 4-6).
PALETTE = [(0, 0, 0), (0, 0, 0xAA), (0, 0xAA, 0), (0, 0xAA, 0xAA),
           (0xAA, 0, 0), (0xAA, 0, 0xAA), (0xAA, 0x55, 0), (0xAA, 0xAA, 0xAA)]
VM_NS = "https://vmclient.org/xmlns/vm/1"


def _rel8(offset: int) -> int:
    assert -128 <= offset < 128
    return offset & 0xFF


def _assemble(items: list[bytes | tuple[int, str] | str]) -> bytes:
    """Bytes, labels (str) and short jumps ``(opcode, label)``, in order."""
    at, pos = {}, 0
    for item in items:
        if isinstance(item, str):
            at[item] = pos
        else:
            pos += 2 if isinstance(item, tuple) else len(item)
    out = b""
    for item in items:
        if isinstance(item, tuple):
            out += bytes([item[0], _rel8(at[item[1]] - (len(out) + 2))])
        elif isinstance(item, bytes):
            out += item
    return out


def _word(value: int) -> bytes:
    return bytes([value & 0xFF, value >> 8])


def _super_hook(base: int) -> tuple[bytes, bytes]:
    """The int 15h handler assembled at offset ``base`` of the sector (its data after
    it), and the code that installs it.  Its addresses are 0:7C00 + offset (CS is 0 in
    the handler: its vector's segment; DS is 0 where it is installed)."""
    size = 70  # the handler's length (checked below), then: old vector, E0 seen, cell
    old, e0, cell = (0x7C00 + base + size + o for o in (0, 4, 5))
    handler = _assemble([
        b"\x80\xFC\x4F", (0x75, "chain"),            # cmp ah, 4Fh ; jne chain
        b"\x3C\xE0", (0x75, "not_e0"),                # cmp al, E0h ; jne not_e0
        b"\x2E\xC6\x06" + _word(e0) + b"\x01",        # mov byte [cs:e0], 1
        (0xEB, "chain"),                              # jmp chain
        "not_e0",
        b"\x2E\x80\x3E" + _word(e0) + b"\x00",        # cmp byte [cs:e0], 0
        b"\x2E\xC6\x06" + _word(e0) + b"\x00",        # mov byte [cs:e0], 0 (flags kept)
        (0x74, "chain"),                              # je chain: no E0 before it
        b"\x3C\x5B", (0x74, "mark"),                  # cmp al, 5Bh ; je mark (left)
        b"\x3C\x5C", (0x75, "chain"),                 # cmp al, 5Ch ; jne chain (right)
        "mark",
        b"\x06\x57\x50",                              # push es ; push di ; push ax
        b"\xB8\x00\xB8\x8E\xC0",                      # mov ax, 0xb800 ; mov es, ax
        b"\x2E\x8B\x3E" + _word(cell),                # mov di, [cs:cell]
        b"\xB8" + _word(SUPER_CELL),                  # mov ax, yellow block
        b"\xFC\xAB",                                  # cld ; stosw
        b"\x2E\x89\x3E" + _word(cell),                # mov [cs:cell], di
        b"\x58\x5F\x07",                              # pop ax ; pop di ; pop es
        "chain",
        b"\x2E\xFF\x2E" + _word(old),                 # jmp far [cs:old]
    ])
    assert len(handler) == size, len(handler)
    data = bytes(5) + _word(SUPER_ROW * COLS * 2)
    install = bytes([
        0xFA,                                         # cli
        0xA1, 0x54, 0x00, 0xA3, *_word(old),          # mov ax, [15h*4] ; mov [old], ax
        0xA1, 0x56, 0x00, 0xA3, *_word(old + 2),      # mov ax, [15h*4+2] ; mov [old+2], ax
        0xC7, 0x06, 0x54, 0x00, *_word(0x7C00 + base),  # mov word [15h*4], handler
        0xC7, 0x06, 0x56, 0x00, 0x00, 0x00,           # mov word [15h*4+2], 0
        0xFB,                                         # sti
    ])
    return handler + data, install


def boot_sector(seed: int, letter: str, animate: bool = False) -> bytes:
    """The sector: 16-bit real-mode code, then zeros, then the 55 AA signature.

    ``animate``: instead of echoing keys, change the first cell every 10 ms for
    ever (the display benchmark's moving picture)."""
    setup = bytes([
        0xFA,                    # cli
        0x31, 0xC0,              # xor ax, ax
        0x8E, 0xD8,              # mov ds, ax
        0x8E, 0xD0,              # mov ss, ax
        0xBC, 0x00, 0x7C,        # mov sp, 0x7c00
        0xFB,                    # sti
        0xB4, 0x01,              # mov ah, 1          ; set cursor shape:
        0xB9, 0x00, 0x20,        # mov cx, 0x2000     ;   hidden
        0xCD, 0x10,              # int 10h
        0xB8, 0x00, 0xB8,        # mov ax, 0xb800     ; text memory
        0x8E, 0xC0,              # mov es, ax
        0x31, 0xFF,              # xor di, di
        0xB3, seed & 0xFF,       # mov bl, seed       ; colour of band 0
        0xBA, ROWS, 0x00,        # mov dx, 25
    ])
    band = bytes([
        0x88, 0xDC,              # mov ah, bl
        0x80, 0xE4, 0x07,        # and ah, 7
        0xC0, 0xE4, 0x04,        # shl ah, 4          ; background
        0x80, 0xCC, 0x0F,        # or ah, 0x0f        ; white letter
        0xB0, ord(letter),       # mov al, letter
        0xB9, COLS, 0x00,        # mov cx, 80
        0xF3, 0xAB,              # rep stosw
        0xFE, 0xC3,              # inc bl
        0x4A,                    # dec dx
    ])
    band += bytes([0x75, _rel8(-(len(band) + 2))])          # jnz band
    echo_start = ECHO_ROW * COLS * 2
    start_di = bytes([0xBF, echo_start & 0xFF, echo_start >> 8])  # mov di, row 12
    keys = bytes([
        0x31, 0xC0,              # xor ax, ax
        0xCD, 0x16,              # int 16h            ; al = the key's character
        0xB4, ECHO_ATTR,         # mov ah, attr
        0xAB,                    # stosw
        0x81, 0xFF, 0xA0, 0x0F,  # cmp di, 4000       ; past the screen:
        0x72, 0x03,              # jb +3
        *start_di,               #   back to row 12
    ])
    keys += bytes([0xEB, _rel8(-(len(keys) + 2))])          # jmp keys
    anim = bytes([
        0x26, 0xFE, 0x06, 0x00, 0x00,  # inc byte [es:0]    ; the first cell's letter
        0xB4, 0x86,              # mov ah, 86h        ; wait CX:DX microseconds
        0x31, 0xC9,              # xor cx, cx
        0xBA, 0x10, 0x27,        # mov dx, 10000
        0xCD, 0x15,              # int 15h
    ])
    anim += bytes([0xEB, _rel8(-(len(anim) + 2))])          # jmp anim
    if animate:
        code = setup + band + anim
    else:
        install_size = len(_super_hook(0)[1])
        base = len(setup + band + start_di + keys) + install_size
        hook, install = _super_hook(base)
        code = setup + band + install + start_di + keys + hook
    assert len(code) <= 510
    return code + bytes(510 - len(code)) + b"\x55\xaa"


# TCG, not KVM: the paravirtual KVM of these test machines emulates the firmware's
# 16-bit code, and SeaBIOS then takes 10-20 s to reach the boot sector (TCG: < 1 s).
DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>16</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <graphics type='spice'><listen type='none'/></graphics>
    <video><model type='virtio'/></video>
    <memballoon model='none'/>
    {devices}
  </devices>
  {metadata}
</domain>
"""


def band_colour(seed: int, row: int) -> tuple[int, int, int]:
    return PALETTE[(row + seed) & 7]


class EchoGuests:
    """Uniquely named echo guests on the real libvirtd, all removed afterwards."""

    def __init__(self, conn: libvirt.virConnect, prefix: str) -> None:
        self.conn, self.prefix = conn, prefix
        self.names: list[str] = []
        self.seeds: dict[str, int] = {}

    def create(self, suffix: str, kind: str, seed: int, letter: str,
               start: bool = True, animate: bool = False, image: bytes | None = None,
               devices: str = "") -> str:
        """A guest; ``kind`` "" makes it a domain that is not vmclient's (no metadata).
        ``image``: its disk instead of the echo sector's (sound_guest.py's player, which
        paints nothing); ``devices``: more of the domain's devices (XML)."""
        assert band_colour(seed, ECHO_ROW) != PALETTE[7], "the echo must stand out"
        name = f"{self.prefix}-{suffix}"
        IMAGES.mkdir(parents=True, exist_ok=True)
        disk = IMAGES / f"{name}.img"
        disk.write_bytes(image if image is not None
                         else boot_sector(seed, letter, animate) + bytes((1 << 20) - 512))
        dom = self.conn.defineXML(DOMAIN_XML.format(
            name=name, uuid=uuid.uuid4(), disk=disk, devices=devices,
            metadata=f"<metadata><vmc:vm xmlns:vmc='{VM_NS}' kind='{kind}'/></metadata>"
            if kind else ""))
        self.names.append(name)
        self.seeds[name] = seed
        if start:
            dom.create()
        return name

    @contextlib.contextmanager
    def starting(self, suffix: str, kind: str, seed: int, letter: str) -> Iterator[str]:
        """A guest held in its start: libvirt has launched QEMU, which waits for the NBD
        handshake of a second disk that this test's socket never answers.  libvirt
        reports it paused, reason starting-up, for as long as the block lasts; on
        exit the socket closes, the start fails and the domain is shut off."""
        sock_path = IMAGES / f"{self.prefix}-{suffix}.nbd"
        server = socket.socket(socket.AF_UNIX)
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        server.bind(str(sock_path))
        os.chmod(sock_path, 0o666)  # QEMU's user connects
        server.listen(4)
        held: list[socket.socket] = []

        def hold() -> None:
            with contextlib.suppress(OSError):  # shut down on exit
                while True:
                    held.append(server.accept()[0])

        accepting = threading.Thread(target=hold, daemon=True)
        accepting.start()
        name = self.create(suffix, kind, seed, letter, start=False, devices=f"""
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='nbd'><host transport='unix' socket='{sock_path}'/></source>
      <target dev='vdb' bus='virtio'/>
    </disk>""")
        failed: list[str] = []

        def start() -> None:
            with contextlib.suppress(libvirt.libvirtError):
                open_libvirt().lookupByName(name).create()
                failed.append("it started")

        starter = threading.Thread(target=start, daemon=True)
        starter.start()
        try:
            deadline = time.monotonic() + scaled(30)
            while not held:  # QEMU waits for the handshake (libvirt: starting-up before)
                assert time.monotonic() < deadline, "QEMU did not open the held disk"
                time.sleep(0.05)
            starting = [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP]
            assert self.conn.lookupByName(name).state(0) == starting
            yield name
            assert self.conn.lookupByName(name).state(0) == starting
        finally:
            server.shutdown(socket.SHUT_RDWR)  # wakes the accept
            accepting.join()
            server.close()
            for conn in held:
                conn.close()
            starter.join(scaled(60))
            sock_path.unlink()
        assert not starter.is_alive() and not failed, "the held start did not fail"

    def screenshot(self, name: str) -> Image:
        """What QEMU shows (virDomainScreenshot), decoded."""
        dom = self.conn.lookupByName(name)
        stream = self.conn.newStream(0)
        try:
            dom.screenshot(stream, 0, 0)
            chunks = []
            while True:
                chunk = stream.recv(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
            stream.finish()
        except libvirt.libvirtError:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise
        return Image.decode(b"".join(chunks))

    def painted(self, name: str) -> bool:
        """The guest has painted its bands (the boot sector runs)."""
        img = self.screenshot(name)
        if (img.width, img.height) != (720, 400):  # 80x25 cells of 9x16 pixels
            return False
        seed = self.seeds[name]
        return all(img.near(img.at(4 * 9 + 1, r * 16 + 1), band_colour(seed, r), 8)
                   for r in (0, 5, 24))

    def wait_painted(self, name: str, timeout: float = 30) -> Image:
        deadline = time.monotonic() + scaled(timeout)
        while not self.painted(name):
            if time.monotonic() > deadline:
                shot = Path(tempfile.gettempdir()) / f"{name}.png"
                self.screenshot(name).save(shot)
                raise AssertionError(f"guest {name} did not paint its bands within "
                                     f"{scaled(timeout):.0f} s (its screen: {shot})")
            time.sleep(0.2)
        return self.screenshot(name)

    def echoed(self, name: str) -> int:
        """How many keys the guest has echoed (grey cells from the start of row 12)."""
        img = self.screenshot(name)
        n = 0
        while n < COLS and img.near(img.at(n * 9 + 8, ECHO_ROW * 16 + 1), PALETTE[7], 8):
            n += 1
        return n

    def supers(self, name: str) -> int:
        """How many Windows key presses the guest has seen (yellow blocks on row 20)."""
        img = self.screenshot(name)
        n = 0
        while n < COLS and img.near(img.at(n * 9 + 4, SUPER_ROW * 16 + 8), YELLOW, 8):
            n += 1
        return n

    def cleanup(self) -> None:
        # A fresh connection: ours is dead if libvirtd restarted meanwhile (another test
        # may restart it), and the domains must go all the same.
        try:
            conn = libvirt.open(URI)
        except libvirt.libvirtError:
            conn = self.conn
        try:
            for name in self.names:
                with contextlib.suppress(libvirt.libvirtError):
                    dom = conn.lookupByName(name)
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
                    # a test that had powerd save the VM leaves a managed save image,
                    # which a plain undefine refuses (and the domain stayed defined)
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                      | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                                      | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
                with contextlib.suppress(FileNotFoundError):
                    (IMAGES / f"{name}.img").unlink()
            left = [n for n in self.names if n in conn.listDefinedDomains()]
            assert not left, f"test domains still defined after the test: {left}"
        finally:
            if conn is not self.conn:
                conn.close()


@contextlib.contextmanager
def echo_guests(prefix: str) -> Iterator[EchoGuests]:
    conn = open_libvirt()
    g = EchoGuests(conn, prefix)
    try:
        yield g
    finally:
        g.cleanup()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
