"""A guest that plays a sine and records its microphone: a boot sector driving an HD audio card.

The domain has the card provisioning gives its VMs (``domainxml.py``: an ich9 HDA
controller, to which libvirt adds QEMU's ``hda-duplex`` codec), with SPICE as its
only audio backend.  The sector reads the PCM the test wrote after it on the disk
(BIOS int 13h, 42h) to 0x10000 and fills the microphone's buffer at
:data:`RECORDED` with :data:`UNHEARD`; then, with interrupts off for good, it
enters unreal mode (``%fs`` reaches all 4 GiB: the controller's registers are
memory mapped above 1 MiB), finds the controller on PCI bus 0 by its class (0403,
config ports CF8/CFC), enables its memory space and bus mastering, takes it out
of reset and sends the codec its verbs through the immediate command registers:

- the DAC (node 2) takes stream 1, the ADC (node 4) stream 2, both 48 kHz 16-bit
  stereo at full gain;

and runs two stream descriptors, each over two buffer descriptors that cover one
buffer, which the controller loops over for ever without the guest's help:

- output stream 4: the PCM (:data:`FRAMES` stereo frames: 0.1 s), played in a loop;
- input stream 0 (the microphone): :data:`RECORDED` (as long), which therefore
  always holds the last 0.1 s the guest heard.

The test reads what the guest recorded with ``virDomainMemoryPeek``.  Assembled
with binutils' ``as`` and ``ld`` (gcc's).
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

RATE = 48000  # the rate the guest asks its codec for
FRAMES = 4800  # 0.1 s: a whole number of periods of any multiple of 10 Hz
AMPLITUDE = 12000
RECORDED = 0x20000  # where the guest's microphone buffer is (physical address)
RECORDED_BYTES = FRAMES * 4
UNHEARD = 0x1234  # what that buffer holds before the guest records anything

# As provd's domains have it (domainxml.py).
SOUND_XML = """<sound model='ich9'><audio id='1'/></sound>
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
    cli                      # unreal mode, no BIOS from here on
    lgdt gdtr
    mov %cr0, %eax
    or $1, %al
    mov %eax, %cr0
    mov $8, %bx
    mov %bx, %fs
    and $0xfe, %al
    mov %eax, %cr0
    mov $0x80000000, %ebx    # the HD audio controller on bus 0 (class 0403)
find:
    lea 8(%ebx), %eax
    mov $0xcf8, %dx
    out %eax, %dx
    mov $0xcfc, %dx
    in %dx, %eax
    shr $16, %eax
    cmp $0x0403, %ax
    je found
    add $0x800, %ebx
    cmp $0x80010000, %ebx
    jb find
stop:
    hlt
    jmp stop
found:
    lea 4(%ebx), %eax        # command: memory space, bus master
    mov $0xcf8, %dx
    out %eax, %dx
    mov $0xcfc, %dx
    mov $6, %ax
    out %ax, %dx
    lea 0x10(%ebx), %eax     # BAR0: the registers
    mov $0xcf8, %dx
    out %eax, %dx
    mov $0xcfc, %dx
    in %dx, %eax
    and $0xfffffff0, %eax
    mov %eax, %ebx
    movl $1, %fs:0x08(%ebx)  # GCTL: out of reset
    mov $verbs, %si
verb:
    lodsl
    test %eax, %eax
    jz streams
    mov %eax, %fs:0x60(%ebx)  # ICW: the verb
    movw $1, %fs:0x68(%ebx)   # ICS: busy (QEMU answers at once)
    jmp verb
streams:
    mov $0x8000, %di         # 2 descriptors at 0x8000 (out), 2 at 0x8100 (in)
    mov $2, %cx
bdl:
    movl $0x10000, (%di)
    movl $0, 4(%di)
    movl ${FRAMES * 4}, 8(%di)
    movl $0, 12(%di)
    movl $0x{RECORDED:x}, 0x100(%di)
    movl $0, 0x104(%di)
    movl ${FRAMES * 4}, 0x108(%di)
    movl $0, 0x10c(%di)
    add $16, %di
    loop bdl
    movl $0x8000, %fs:0x118(%ebx)   # output stream 4: list, length, last entry, format
    movl $0, %fs:0x11c(%ebx)
    movl ${FRAMES * 8}, %fs:0x108(%ebx)
    movw $1, %fs:0x10c(%ebx)
    movw $0x11, %fs:0x112(%ebx)
    movl $0x100002, %fs:0x100(%ebx) # stream 1, run
    movl $0x8100, %fs:0x98(%ebx)    # input stream 0: the same
    movl $0, %fs:0x9c(%ebx)
    movl ${FRAMES * 8}, %fs:0x88(%ebx)
    movw $1, %fs:0x8c(%ebx)
    movw $0x11, %fs:0x92(%ebx)
    movl $0x200002, %fs:0x80(%ebx)  # stream 2, run
    jmp stop
    .balign 4
verbs:                       # codec 0: node << 20 | verb << 16 (or << 8) | payload
    .long 0x00270610         # DAC: stream 1, channel 0
    .long 0x00220011         #   format: 48 kHz, 16 bits, 2 channels
    .long 0x0023f04a         #   amplifier: both sides, full gain, not muted
    .long 0x00470620         # ADC: stream 2, the same
    .long 0x00420011
    .long 0x0043f04a
    .long 0
gdt:
    .quad 0
    .quad 0x00cf92000000ffff # data: base 0, limit 4 GiB
gdtr:
    .word 15
    .long gdt
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
    with tempfile.TemporaryDirectory(prefix="vmclient-hda-") as tmp:
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
    """How much of ``freq_hz`` is in ``samples`` (Goertzel, normalised: a sine of peak
    A at that frequency gives A/2, one at another frequency ~0)."""
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
