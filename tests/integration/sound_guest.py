"""A guest that plays a sine and records its microphone: a boot sector driving an AC97.

QEMU's AC97 (Intel 82801AA) has its registers in I/O space, so 16-bit real-mode
code reaches them: the sector reads the PCM the test wrote after it on the disk
(BIOS int 13h, 42h) to 0x10000, finds the AC97 on PCI bus 0 (config ports
CF8/CFC), enables its I/O ports and bus mastering, unmutes the mixer (master, PCM
out, record gain: QEMU's codec resets them muted; QEMU takes the record gain's
maximum for full volume, its 0 for silence), and runs both of the bus
master's DMA engines over 32-entry buffer descriptor lists:

- PCM out: every entry is the whole PCM (:data:`FRAMES` stereo frames, 16-bit,
  48 kHz, QEMU's AC97 rate), so the guest plays it in a loop for ever;
- PCM in (the microphone): every entry is the buffer at :data:`RECORDED`
  (as long), which therefore always holds the last 0.1 s the guest heard.

On each timer interrupt it moves each engine's last valid entry to one behind the
current one, so neither ever runs out.  The test reads what the guest recorded
with ``virDomainMemoryPeek``.  Assembled with binutils' ``as`` and ``ld`` (gcc's).

The domain gets the card with SPICE as its only audio backend, as provisioning
gives its VMs theirs (``domainxml.py``: an ich9 HDA, whose registers are memory
mapped above 1 MiB, out of a real-mode boot sector's reach).
"""

from __future__ import annotations

import functools
import math
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from testlib import need

RATE = 48000
FRAMES = 4800  # 0.1 s: a whole number of periods of any multiple of 10 Hz
AMPLITUDE = 12000
RECORDED = 0x20000  # where the guest's microphone buffer is (physical address)
RECORDED_BYTES = FRAMES * 4
UNHEARD = 0x1234  # what that buffer holds before the guest records anything

SOUND_XML = """<sound model='ac97'><audio id='1'/></sound>
    <audio id='1' type='spice'/>"""

_ASM = f"""
.code16
.globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7c00, %sp
    sti
    mov $dap, %si            # the PCM (sectors 1..) to 0x1000:0
    mov $0x42, %ah
    int $0x13
    mov $0x{RECORDED >> 4:x}, %ax         # the microphone's buffer: {UNHEARD:#x} until it records
    mov %ax, %es
    xor %di, %di
    mov ${UNHEARD:#x}, %ax
    mov ${FRAMES * 2}, %cx
    rep stosw
    mov $0x80000000, %ebx    # the AC97 on bus 0 (8086:2415)
find:
    mov %ebx, %eax
    mov $0xcf8, %dx
    out %eax, %dx
    mov $0xcfc, %dx
    in %dx, %eax
    cmp $0x24158086, %eax
    je found
    add $0x800, %ebx
    cmp $0x80010000, %ebx
    jb find
stop:
    hlt
    jmp stop
found:
    lea 4(%ebx), %eax        # command: I/O space, bus master
    mov $0xcf8, %dx
    out %eax, %dx
    mov $0xcfc, %dx
    mov $5, %ax
    out %ax, %dx
    lea 0x10(%ebx), %eax     # BAR0: the mixer's ports
    mov $0xcf8, %dx
    out %eax, %dx
    mov $0xcfc, %dx
    in %dx, %eax
    and $0xfffe, %ax
    mov %ax, %si
    lea 0x14(%ebx), %eax     # BAR1: the bus master's ports
    mov $0xcf8, %dx
    out %eax, %dx
    mov $0xcfc, %dx
    in %dx, %eax
    and $0xfffe, %ax
    mov %ax, %di
    xor %ax, %ax             # master, PCM out: no attenuation, not muted
    lea 0x02(%si), %dx
    out %ax, %dx
    lea 0x18(%si), %dx
    out %ax, %dx
    mov $0x0f0f, %ax         # record gain: the most, not muted (QEMU: full volume)
    lea 0x1c(%si), %dx
    out %ax, %dx
    mov $0x8000, %bx         # 32 descriptors at 0x8000 (out), 32 at 0x8100 (in)
    mov $32, %cx
bdl:
    movl $0x10000, (%bx)
    movl $0x{RECORDED:x}, 0x100(%bx)
    movl length, %eax
    mov %eax, 4(%bx)
    mov %eax, 0x104(%bx)
    add $8, %bx
    loop bdl
    lea 0x10(%di), %dx       # PCM out: the list, its last valid entry, run
    mov $0x8000, %eax
    out %eax, %dx
    lea 0x15(%di), %dx
    mov $31, %al
    out %al, %dx
    lea 0x1b(%di), %dx
    mov $1, %al
    out %al, %dx
    mov %di, %dx             # PCM in: the same
    mov $0x8100, %eax
    out %eax, %dx
    lea 0x05(%di), %dx
    mov $31, %al
    out %al, %dx
    lea 0x0b(%di), %dx
    mov $1, %al
    out %al, %dx
run:                         # each engine's last valid entry: one behind its current one
    hlt
    lea 0x14(%di), %dx
    call behind
    lea 0x04(%di), %dx
    call behind
    jmp run
behind:
    in %dx, %al
    dec %al
    and $31, %al
    inc %dx
    out %al, %dx
    ret
    .balign 4
length:
    .long {FRAMES * 2}       # 16-bit samples in a buffer
dap:
    .byte 0x10, 0
    .word {(FRAMES * 4 + 511) // 512}
    .word 0, 0x1000
    .quad 1
    .org 510
    .byte 0x55, 0xaa
"""


@functools.cache
def boot_sector() -> bytes:
    for tool in ("as", "ld"):
        need(shutil.which(tool) is not None, f"binutils' {tool} is not installed")
    with tempfile.TemporaryDirectory(prefix="vmclient-ac97-") as tmp:
        d = Path(tmp)
        (d / "g.s").write_text(_ASM)
        subprocess.run(["as", "-o", d / "g.o", d / "g.s"], check=True, capture_output=True)
        subprocess.run(["ld", "-Ttext=0x7c00", "-e", "_start", "--oformat", "binary",
                        "-o", d / "g.bin", d / "g.o"], check=True, capture_output=True)
        sector = (d / "g.bin").read_bytes()
    assert len(sector) == 512 and sector.endswith(b"\x55\xaa")
    return sector


def sine(freq_hz: int) -> bytes:
    """:data:`FRAMES` stereo frames of a sine (a whole number of periods: it loops)."""
    assert freq_hz % 10 == 0
    return b"".join(struct.pack("<hh", v, v) for v in (
        round(AMPLITUDE * math.sin(2 * math.pi * freq_hz * i / RATE)) for i in range(FRAMES)))


def disk(freq_hz: int) -> bytes:
    """A 1 MiB disk: the boot sector, then the sine it plays."""
    pcm = sine(freq_hz)
    return boot_sector() + pcm + bytes((1 << 20) - 512 - len(pcm))


def level(samples: list[int] | tuple[int, ...], freq_hz: float, rate: int = RATE) -> float:
    """The amplitude of ``freq_hz`` in ``samples`` (Goertzel; a full-scale sine of
    amplitude A gives A/2)."""
    if not samples:
        return 0.0
    k = 2 * math.cos(2 * math.pi * freq_hz / rate)
    a = b = 0.0
    for v in samples:
        a, b = v + k * a - b, a
    return math.sqrt(max(a * a + b * b - k * a * b, 0.0)) / len(samples)


def left(pcm: bytes) -> tuple[int, ...]:
    """The left channel of interleaved stereo S16LE."""
    return struct.unpack(f"<{len(pcm) // 2}h", pcm[:len(pcm) // 4 * 4])[::2]
