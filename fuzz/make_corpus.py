#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/ (the generated files are
committed; run this again after changing an input format). The formats are those the targets'
header comments describe; each seed is named after what it reaches. fuzz_json_rpc's seeds are
hand-written and not touched here.

    fuzz/make_corpus.py            regenerate every target's seeds
    fuzz/make_corpus.py pci uart   only these targets (names without fuzz_)
"""
import json
import os
import struct
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    directory = os.path.join(ROOT, target)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


class Memory:
    """A guest storage image built at fixed addresses; bytes() trims trailing zeros (the targets
    read missing bytes as zeros)."""

    def __init__(self):
        self.data = bytearray()

    def put(self, addr, blob):
        if len(self.data) < addr + len(blob):
            self.data.extend(b"\0" * (addr + len(blob) - len(self.data)))
        self.data[addr:addr + len(blob)] = blob

    def bytes(self):
        return bytes(self.data).rstrip(b"\0")


# --- virtio ---------------------------------------------------------------------------------

NEXT, WRITE = 1, 2
BLK_IN, BLK_OUT, BLK_FLUSH, BLK_GET_ID = 0, 1, 4, 8


def desc(addr, length, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def blk_header(kind, sector=0):
    return struct.pack("<IIQ", kind, 0, sector)


def virtqueue_seeds():
    """fuzz_virtqueue: a 16-entry queue (desc 0x0, avail 0x100, used 0x140) whose avail ring holds
    a READ, a WRITE, a FLUSH, a GET_ID and an unsupported request for virtio-blk."""
    setup = struct.pack("<HBB4xQQQ", 16, 0, 0, 0x0, 0x100, 0x140)
    m = Memory()
    chains = [  # (header type, sector, [(addr, len, writable)] data, status addr)
        (BLK_IN, 0, [(0x400, 512, True)], 0x300),
        (BLK_OUT, 2, [(0x600, 512, False)], 0x301),
        (BLK_FLUSH, 0, [], 0x302),
        (BLK_GET_ID, 0, [(0x800, 20, True)], 0x303),
        (99, 0, [], 0x304),
    ]
    index, heads = 0, []
    for n, (kind, sector, data, status) in enumerate(chains):
        header = 0x200 + 16 * n
        m.put(header, blk_header(kind, sector))
        heads.append(index)
        parts = [(header, 16, False)] + data + [(status, 1, True)]
        for i, (addr, length, writable) in enumerate(parts):
            last = i == len(parts) - 1
            m.put(16 * index, desc(addr, length, (0 if last else NEXT) | (WRITE if writable else 0),
                                   0 if last else index + 1))
            index += 1
    m.put(0x600, bytes(range(256)) * 2)  # what WRITE stores
    m.put(0x100, struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads))
    write("virtqueue", "read_write_flush_getid", setup + m.bytes())

    # One descriptor looping on itself: a driver error.
    m = Memory()
    m.put(0x0, desc(0x200, 16, NEXT, 0))
    m.put(0x100, struct.pack("<HHH", 0, 1, 0))
    write("virtqueue", "loop", setup + m.bytes())
    # Rings placed by the fuzzer's low bits (place_in_range), an index far ahead.
    write("virtqueue", "far_ahead", struct.pack("<HBB4xQQQ", 8, 7, 0, 0x10000, 0x10100, 0x10140) +
          b"\0" * 0x100 + struct.pack("<HH", 0, 0x4000))


def chain(descriptors):
    """fuzz_support.hpp's take_chain: u8 count - 1, then u16 address, u16 length, u8 flags."""
    out = struct.pack("<B", len(descriptors) - 1)
    for addr, length, writable in descriptors:
        out += struct.pack("<HHB", addr, length, 1 if writable else 0)
    return out


def virtio_blk_seeds():
    m = Memory()
    requests = [
        (BLK_IN, 1, [(0x1000, 1024, True)]),
        (BLK_OUT, 4, [(0x2000, 512, False)]),
        (BLK_FLUSH, 0, []),
        (BLK_GET_ID, 0, [(0x3000, 20, True)]),
    ]
    chains = b""
    for n, (kind, sector, data) in enumerate(requests):
        m.put(0x100 + 16 * n, blk_header(kind, sector))
        chains += chain([(0x100 + 16 * n, 16, False)] + data + [(0x200 + n, 1, True)])
    m.put(0x2000, bytes(range(256)) * 2)
    image = m.bytes()
    # flags, config offset, config size, chain count - 1
    write("virtio_blk", "read_write_flush_getid", struct.pack("<BBBB", 0, 0, 8, 3) + chains + image)
    write("virtio_blk", "read_only_disk", struct.pack("<BBBB", 1, 12, 4, 3) + chains + image)
    # Header and data of a WRITE in one readable descriptor.
    m = Memory()
    m.put(0x100, blk_header(BLK_OUT, 0) + bytes(512))
    m.put(0x100 + 16, b"\x11" * 512)
    one = chain([(0x100, 16 + 512, False), (0x800, 1, True)])
    write("virtio_blk", "any_layout", struct.pack("<BBBB", 0, 20, 4, 0) + one + m.bytes())
    # A sector past the end of the 64 KiB disk.
    m = Memory()
    m.put(0x100, blk_header(BLK_IN, 127))
    past = chain([(0x100, 16, False), (0x400, 1024, True), (0x300, 1, True)])
    write("virtio_blk", "past_the_end", struct.pack("<BBBB", 0, 0, 0, 0) + past + m.bytes())


def virtio_rng_seeds():
    two = chain([(0x0, 64, True), (0x100, 4096, True)])
    readable = chain([(0x0, 16, False), (0x1000, 32, True)])
    write("virtio_rng", "two_chains", struct.pack("<BBB", 0, 4, 1) + two + readable)
    write("virtio_rng", "limit", struct.pack("<BBB", 0, 0, 0) + chain([(0x0, 0xffff, True)] * 2))


MEM_PLUG, MEM_UNPLUG, MEM_UNPLUG_ALL, MEM_STATE = 0, 1, 2, 3


def mem_op(kind, type_=0, nb_blocks=0, block=0, raw=0):
    return struct.pack("<BBHIQ", kind, type_, nb_blocks, block, raw)


def virtio_mem_seeds():
    def seed(shift, blocks, ops):
        return struct.pack("<BBB", shift, blocks - 1, len(ops)) + b"".join(ops)

    plug_unplug = [
        mem_op(3, 0, 0, 8),                     # requested size: 8 blocks
        mem_op(0, MEM_PLUG, 4, 0),              # ACK
        mem_op(0, MEM_STATE, 4, 0),             # ACK, plugged
        mem_op(0, MEM_PLUG, 4, 4),              # ACK
        mem_op(0, MEM_PLUG, 1, 8),              # NACK: beyond the requested size
        mem_op(0, MEM_UNPLUG, 2, 2),            # ACK
        mem_op(0, MEM_STATE, 4, 0),             # ACK, mixed
        mem_op(0, MEM_PLUG, 2, 2),              # ACK again
        mem_op(0, MEM_UNPLUG_ALL),              # ACK
        mem_op(7, 0x20, 8),                     # read usable_region_size
    ]
    write("virtio_mem", "plug_unplug", seed(0, 64, plug_unplug))
    write("virtio_mem", "plug_unplug_2m", seed(9, 16, plug_unplug))
    hypervisor = [
        mem_op(3, 0, 0, 16),
        mem_op(1, 0b01001000, 8, 0),            # PLUG split over descriptors: ACK
        mem_op(4, 0, 0, 4),                     # usable below a plugged block: refused
        mem_op(6, 1),                           # before_plug refuses from now on
        mem_op(0, MEM_PLUG, 4, 8),              # BUSY
        mem_op(6, 0),
        mem_op(0, MEM_PLUG, 4, 8),              # ACK
        mem_op(5, 0),                           # device reset keeps the blocks
        mem_op(0, MEM_STATE, 12, 0),
        mem_op(5, 1),                           # system reset unplugs them
        mem_op(3, 1, 0, 2),                     # requested size not a multiple: refused
        mem_op(0, MEM_PLUG, 1, 0, 0x1234),      # misaligned raw address: ERROR
        mem_op(0, 4, 9),                        # unknown type 9
    ]
    write("virtio_mem", "hypervisor_side", seed(0, 32, hypervisor))
    # A chain from the storage image: request at 0x0 (readable), response at 0x40 (writable).
    m = Memory()
    m.put(0x0, struct.pack("<H6xQH6x", MEM_STATE, 0x10000, 1))
    raw = (0 | (12 << 10)) | (((0x40 // 32) | (5 << 10) | 0x8000) << 16)  # 24 readable, 10 writable
    write("virtio_mem", "raw_chain", seed(0, 8, [mem_op(2, 1, 0, 0, raw)]) + m.bytes())


# --- PCI ------------------------------------------------------------------------------------

MMIO_BASE, STRIDE = 0xE0000000, 0x100000
P1, P2, P4 = 0, 1, 2           # port sizes
M1, M2, M4, M8 = 0, 1, 2, 3    # MMIO sizes
MSIX_CAP = 0x40 + 3 * 16 + 20


def pci_op(kind, size=0, slot=0, port=0, offset=0, value=0):
    return struct.pack("<BBBBIQ", kind, size, slot, port, offset, value)


def cfg_read(slot, offset, size=P4):
    return pci_op(3, size, slot, 0, offset)


def cfg_write(slot, offset, value, size=P4):
    return pci_op(2, size, slot, 0, offset, value)


def mmio_read(slot, offset, size):
    return pci_op(5, size, slot, 0, offset)


def mmio_write(slot, offset, value, size):
    return pci_op(4, size, slot, 0, offset, value)


def guest(addr, value):
    return pci_op(6, 0, 0, 0, addr, value)


def linux_probe(slot, features_lo, device_cfg_reads):
    """What Linux's virtio-pci driver does to one device, up to a notify and a reset."""
    ops = [cfg_read(slot, 0x00), cfg_read(slot, 0x08), cfg_read(slot, 0x2c), cfg_read(slot, 0x34)]
    ops += [cfg_read(slot, at) for at in range(0x40, MSIX_CAP + 12, 4)]
    bar = MMIO_BASE + slot * STRIDE
    ops += [cfg_write(slot, 0x10, 0xFFFFFFFF), cfg_read(slot, 0x10), cfg_write(slot, 0x10, bar),
            cfg_write(slot, 0x04, 0x0006, P2)]
    ops += [cfg_write(slot, MSIX_CAP + 2, 0xC000, P2)]  # MSI-X on, function masked
    for v in range(2):
        entry = 0x4000 + 16 * v
        ops += [mmio_write(slot, entry, 0xFEE00000, M4), mmio_write(slot, entry + 4, 0, M4),
                mmio_write(slot, entry + 8, 0x4020 + v, M4), mmio_write(slot, entry + 12, 0, M4)]
    ops += [cfg_write(slot, MSIX_CAP + 2, 0x8000, P2), mmio_read(slot, 0x4000, M8)]
    ops += [mmio_write(slot, 0x14, 0, M1), mmio_write(slot, 0x14, 1, M1),
            mmio_write(slot, 0x14, 3, M1)]
    ops += [mmio_write(slot, 0x00, 0, M4), mmio_read(slot, 0x04, M4),
            mmio_write(slot, 0x00, 1, M4), mmio_read(slot, 0x04, M4),
            mmio_write(slot, 0x08, 0, M4), mmio_write(slot, 0x0C, features_lo, M4),
            mmio_write(slot, 0x08, 1, M4), mmio_write(slot, 0x0C, 1, M4),
            mmio_write(slot, 0x14, 0x0B, M1), mmio_read(slot, 0x14, M1),
            mmio_write(slot, 0x10, 0, M2), mmio_read(slot, 0x10, M2), mmio_read(slot, 0x12, M2),
            mmio_write(slot, 0x16, 0, M2), mmio_read(slot, 0x18, M2),
            mmio_write(slot, 0x18, 16, M2), mmio_write(slot, 0x1A, 1, M2),
            mmio_read(slot, 0x1A, M2), mmio_read(slot, 0x1E, M2),
            mmio_write(slot, 0x20, 0x0, M8), mmio_write(slot, 0x28, 0x100, M8),
            mmio_write(slot, 0x30, 0x140, M4), mmio_write(slot, 0x34, 0, M4),
            mmio_write(slot, 0x1C, 1, M2)]
    ops += [mmio_read(slot, 0x2000 + at, size) for at, size in device_cfg_reads]
    ops += [mmio_write(slot, 0x14, 0x0F, M1), mmio_read(slot, 0x14, M1),
            mmio_write(slot, 0x3000, 0, M2),           # notify queue 0
            pci_op(7),                                 # the MVSTOR drain
            mmio_read(slot, 0x1000, M1), mmio_read(slot, 0x5000, M8),
            mmio_write(slot, 0x4000 + 16 + 12, 1, M4),  # mask vector 1
            mmio_write(slot, 0x4000 + 16 + 12, 0, M4),
            mmio_write(slot, 0x14, 0, M1), mmio_read(slot, 0x14, M1)]
    return ops


def pci_seeds():
    # A FLUSH request for virtio-blk in guest storage: desc 0 -> header, desc 1 -> status.
    flush = [guest(0x00, 0x200), guest(0x08, 16 | (NEXT << 32) | (1 << 48)),
             guest(0x10, 0x300), guest(0x18, 1 | (WRITE << 32)),
             guest(0x200, BLK_FLUSH), guest(0x100, 1 << 16)]
    write("pci", "virtio_blk_linux_probe",
          b"".join(flush + linux_probe(1, 1 << 9, [(0, M8), (12, M4), (20, M4)])))
    write("pci", "virtio_rng_linux_probe", b"".join(linux_probe(2, 0, [(0, M4)])))
    write("pci", "virtio_mem_linux_probe",
          b"".join(linux_probe(3, 2, [(at, M8) for at in range(0, 56, 8)])))
    # Mechanism #1 at the port level, the host bridge, an empty slot, odd accesses.
    ports = [pci_op(0, P4, 0, 0, 0, 0x80000000), pci_op(1, P4, 0, 4), pci_op(1, P1, 0, 6),
             pci_op(0, P4, 0, 0, 0, 0x80000800), pci_op(1, P2, 0, 6), pci_op(1, P4, 0, 0),
             pci_op(0, P1, 0, 1, 0, 0x06), pci_op(1, P4, 0, 5),
             cfg_read(9, 0), cfg_read(0, 0x08), cfg_write(0, 0x04, 7, P2), cfg_read(1, 0xFC),
             pci_op(0, P4, 0, 0, 0, 0x80010000), pci_op(1, P4, 0, 4)]
    write("pci", "config_ports", b"".join(ports))
    # BAR0 moved into slot 8's window, used there, then memory decoding off.
    moved = [cfg_write(1, 0x10, MMIO_BASE + 8 * STRIDE), mmio_read(8, 0x12, M2),
             mmio_read(1, 0x12, M2), cfg_write(1, 0x04, 0, P2), mmio_read(8, 0x12, M2),
             cfg_write(1, 0x04, 2, P2), mmio_write(8, 0x4000, 0xFEE00000, M8),
             mmio_read(8, 0x4003, M4), mmio_read(8, 0x7FF8, M8), mmio_read(8, 0x8000, M1)]
    write("pci", "bar_moved", b"".join(moved))


# --- port devices ---------------------------------------------------------------------------

SKEY_SET_RANGE, SKEY_SET_EACH, SKEY_GET_EACH = 1, 2, 3


def skey_request(op, first, count, key=0, buffer=0):
    return struct.pack("<IiQQQQ", op, 0, first, count, key, buffer)


def storage_key_seeds():
    m = Memory()
    requests = [
        (0x100, skey_request(SKEY_SET_RANGE, 0x0, 4, 0x30)),
        (0x140, skey_request(SKEY_SET_EACH, 0x4000, 4, 0, 0x200)),
        (0x180, skey_request(SKEY_GET_EACH, 0x0, 16, 0, 0x300)),
        (0x1C0, skey_request(SKEY_SET_RANGE, 0x0, 1, 0x31)),   # bit 0: BAD_KEY
        (0x240, skey_request(SKEY_SET_RANGE, 0x1000, 16)),     # past the end: BAD_RANGE
        (0x280, skey_request(9, 0, 1)),                        # BAD_OP
        (0x2C0, skey_request(SKEY_GET_EACH, 0x0, 4, 0, 0xFFFE)),  # BAD_BUFFER
    ]
    for addr, blob in requests:
        m.put(addr, blob)
    m.put(0x200, bytes([0x10, 0x20, 0x32, 0xF8]))
    ops = [struct.pack("<BBI", 4, 0, addr) for addr, _ in requests]
    ops += [struct.pack("<BBI", 5, 0, 0), struct.pack("<BBI", 2, 0, 0x100),
            struct.pack("<BBI", 4, 1, 0x100), struct.pack("<BBI", 4, 0, 0x10000)]
    write("storage_key_port", "set_get_and_errors", struct.pack("<B", len(ops)) + b"".join(ops) +
          m.bytes())


def uart_seeds():
    def w(offset, value, size=0):
        return struct.pack("<BBBB", 0, offset, size, value)

    def r(offset, size=0):
        return struct.pack("<BBBB", 1, offset, size, 0)

    def rx(count):
        return struct.pack("<BBBB", 2, 0, 0, count)

    linux = [w(3, 0x80), w(0, 1), w(1, 0), w(3, 0x03), r(3), w(2, 0xC7), r(2),
             w(7, 0xA5), r(7), w(4, 0x10), r(6), w(4, 0x1F), r(6), w(0, 0x41), r(5), r(0),
             w(4, 0x0B), w(1, 0x0F), r(2)] + [w(0, c) for c in b"hello\n"] + \
        [rx(5), r(2), r(5), r(0), r(0), rx(20), r(5), r(2), w(2, 0x00), rx(3), r(5), r(0, 2),
         w(1, 0x00), w(1, 0x02), r(2), r(2), w(0, 0x42, 2)]
    write("uart", "linux_8250_probe", b"".join(linux))


def legacy_seeds():
    def op(kind, selector, size, value):
        return struct.pack("<BBBB", kind, selector, size, value)

    ops = [op(1, 6, 0, 0), op(0, 6, 0, 0xFE),                          # i8042 status, reset
           op(1, 2, 0, 0), op(0, 2, 0, 0x00), op(0, 5, 1, 0), op(1, 0, 2, 0),  # data, straddling
           op(3, 3, 0, 0), op(2, 3, 0, 0xFF),                          # sleep status
           op(2, 2, 0, 0x14), op(2, 2, 0, 0x34),                       # SLP_TYP 5 without / with SLP_EN
           op(2, 4, 0, 0x02), op(2, 4, 0, 0x01),                       # reset register
           op(2, 5, 2, 0x01), op(3, 1, 1, 0)]                          # outside the range
    write("legacy_ports", "reset_and_power_off", b"".join(ops))


# --- loaders --------------------------------------------------------------------------------

def elf(entry, segments):
    """An ELF64 x86-64 ET_EXEC file: segments are (p_type, paddr, vaddr, data, memsz)."""
    phoff = 64
    offset = phoff + 56 * len(segments)
    headers, payload = b"", b""
    for p_type, paddr, vaddr, data, memsz in segments:
        headers += struct.pack("<IIQQQQQQ", p_type, 5, offset + len(payload), vaddr, paddr,
                               len(data), memsz, 0x1000)
        payload += data
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, entry, phoff, 0, 0, 64, 56,
                         len(segments), 64, 0, 0)
    return header + headers + payload


PT_LOAD, PT_NOTE = 1, 4


def firmware_seeds():
    code = b"\xf4" * 16  # hlt
    write("firmware_loader", "one_segment", elf(0x100000, [(PT_LOAD, 0x100000, 0x100000, code,
                                                             0x1000)]))
    write("firmware_loader", "two_segments_and_note",
          elf(0x100010, [(PT_NOTE, 0, 0, b"note", 4), (PT_LOAD, 0x100000, 0x100000, code, 0x2000),
                         (PT_LOAD, 0x140000, 0x140000, b"data", 0x40000)]))
    write("firmware_loader", "entry_outside", elf(0x200000, [(PT_LOAD, 0x100000, 0x100000, code,
                                                               0x1000)]))


def setup_header(version=0x020F, loadflags=1, xloadflags=3, relocatable=1, pref=0x1000000,
                 init_size=0x400000, setup_sects=1):
    """A bzImage's first sectors: the setup header at 0x1f1 (jump 0xeb 0x6a: it ends at 0x26c)."""
    image = bytearray(512 * (setup_sects + 1))
    struct.pack_into("<B", image, 0x1F1, setup_sects)
    struct.pack_into("<H", image, 0x1FE, 0xAA55)
    struct.pack_into("<BB", image, 0x200, 0xEB, 0x6A)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, version)
    struct.pack_into("<B", image, 0x211, loadflags)
    struct.pack_into("<I", image, 0x22C, 0x7FFFFFFF)       # initrd_addr_max
    struct.pack_into("<I", image, 0x230, 0x200000)         # kernel_alignment
    struct.pack_into("<BB", image, 0x234, relocatable, 21)
    struct.pack_into("<H", image, 0x236, xloadflags)
    struct.pack_into("<I", image, 0x238, 2047)             # cmdline_size
    struct.pack_into("<Q", image, 0x258, pref)
    struct.pack_into("<I", image, 0x260, init_size)
    return bytes(image)


def linux_seeds():
    def seed(kernel, cmdline=b"", initrd=None):
        flags = 1 if initrd is not None else 0
        initrd = initrd or b""
        return struct.pack("<BBHI", flags, 1, len(cmdline), len(initrd)) + cmdline + initrd + kernel

    payload = b"\x90" * 512
    write("linux_loader", "bzimage_initrd",
          seed(setup_header() + payload, b"console=ttyS0 quiet", b"initrd!" * 64))
    write("linux_loader", "bzimage_fixed", seed(setup_header(relocatable=0) + payload, b"ro"))
    write("linux_loader", "bzimage_old_protocol", seed(setup_header(version=0x020B) + payload))
    vmlinux = elf(0x1000000, [(PT_LOAD, 0x1000000, 0xFFFFFFFF81000000, b"\x90" * 64, 0x200000),
                              (PT_LOAD, 0x1200000, 0xFFFFFFFF81200000, b"data", 0x1000)])
    write("linux_loader", "vmlinux", seed(vmlinux, b"console=ttyS0 root=/dev/vda"))
    virtual_entry = elf(0xFFFFFFFF81000010,
                        [(PT_LOAD, 0x1000000, 0xFFFFFFFF81000000, b"\x90" * 64, 0x1000)])
    write("linux_loader", "vmlinux_virtual_entry", seed(virtual_entry, b"", b"x" * 4096))


# --- the configuration file and the control socket -------------------------------------------

def config_seeds():
    fig3a = {"main_storage_mib": 509, "lpars": [
        {"name": "LPAR1", "origin_mib": 0, "size_mib": 128, "max_size_mib": 256},
        {"name": "LPAR2", "origin_mib": 128, "size_mib": 256, "vcpus": 2}]}
    write("config", "fig3a", json.dumps(fig3a, indent=2))
    linux = {"main_storage_mib": 1024, "lpars": [
        {"name": "linux-1", "size_mib": 256, "vcpus": 2, "kernel": "/boot/vmlinuz",
         "initrd": "initrd.img", "cmdline": "console=ttyS0",
         "disks": ["a.img", {"path": "b.img", "read_only": True, "latency_ms": 5}],
         "rng": False, "max_size_mib": 512},
        {"name": "FW.2", "origin_mib": 512, "size_mib": 64, "firmware": "fw.elf",
         "rewrite_pages_per_sec": 1000, "working_set_mib": 32, "round_limit": 10,
         "active": False}]}
    write("config", "linux_and_firmware", json.dumps(linux))
    write("config", "overlap", json.dumps({"main_storage_mib": 256, "lpars": [
        {"name": "A", "origin_mib": 0, "size_mib": 128},
        {"name": "B", "origin_mib": 64, "size_mib": 128}]}))
    write("config", "unknown_key", '{"main_storage_mib": 64, "lpars": [], "extra": 1}')


def control_framing_seeds():
    lines = [
        '{"jsonrpc":"2.0","id":1,"method":"system.ping"}',
        '{"jsonrpc":"2.0","id":2,"method":"lpar.list","params":{}}',
        '{"jsonrpc":"2.0","id":3,"method":"lpar.console","params":{"lpar":"LPAR2","bytes":64}}',
        '{"jsonrpc":"2.0","method":"system.ping"}',
        '',
        '{"jsonrpc":"2.0","id":4,"method":"events.subscribe"}',
        '{"jsonrpc":"2.0","id":5,"method":"storage.mvstor","params":{"lpar":"LPAR2","origin_mib":192}}',
        '{"jsonrpc":"2.0","id":6,"method":"events.unsubscribe"}',
        'not json',
        '{"jsonrpc":"2.0","id":7,"method":"lpar.define","params":{"name":"LPAR3","size_mib":100}}',
    ]
    write("control_framing", "session", b"\x07" + "\n".join(lines).encode() + b"\r\n" +
          b'{"jsonrpc":"2.0","id":8,"method":"system.config"}')
    write("control_framing", "one_byte_chunks", b"\x00" + (lines[0] + "\n" + lines[1] + "\n").encode())
    write("control_framing", "line_too_long",
          b"\x03" + (lines[0] + "\n").encode() + b"[" * 4200 + b"\n" + lines[1].encode() + b"\n")


# --- the HTTP listener ------------------------------------------------------------------------

HTTP_TOKEN = "00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210"  # fuzz_http.cpp's
HTTP_LOOPBACK = 0x01  # flags bit 0: the listener is bound to loopback (Host checked)


def http_request(method, target, headers=(), body=b"", version="1.1", length=True):
    """One request as a client sends it; Content-Length from the body unless told otherwise."""
    lines = [f"{method} {target} HTTP/{version}"] + [f"{name}: {value}" for name, value in headers]
    if body and length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def http_call(method, params, id_=1, token=HTTP_TOKEN, extra=()):
    """POST /api/call with a JSON-RPC request, as the SVP frame's page sends it."""
    body = json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params}).encode()
    headers = [("Host", "127.0.0.1:9180"), ("Content-Type", "application/json")]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    return http_request("POST", "/api/call", headers + list(extra), body)


def http_seeds():
    """fuzz_http: u8 flags (bit 0 loopback-only; bits 1-3 an ErrorKind to throw, bits 4-7 which
    requests), u8 split seed (0: one read), then what the client sends."""
    def seed(name, stream, flags=HTTP_LOOPBACK, split=0):
        write("http", name, bytes([flags, split]) + stream)

    local = [("Host", "127.0.0.1:9180")]
    seed("get_frame", http_request("GET", "/", local + [("Accept", "text/html")]) +
         http_request("GET", "/frame.js", local) + http_request("GET", "/frame.css", local) +
         http_request("GET", "/index.html", local))
    seed("metrics", http_request("GET", "/metrics", [("Host", "localhost:9180"),
                                                      ("Accept", "text/plain")]))
    seed("api_lpars_stats", http_request("GET", "/api/lpars?x=1", [("Host", "[::1]:9180")]) +
         http_request("GET", "/api/stats", local))
    seed("events", http_request("GET", "/events", local + [("Accept", "text/event-stream")]))
    # Every operation the page offers, with the token, one after the other (keep-alive).
    operations = [("storage.mvstor", {"lpar": "LPAR2", "origin_mib": 192}),
                  ("storage.expand", {"lpar": "LPAR2", "mib": 64}),
                  ("storage.shrink", {"lpar": "LPAR2", "mib": 2}),
                  ("storage.exchange", {"a": "LPAR1", "b": "LPAR2"}),
                  ("lpar.stop", {"lpar": "LPAR1"}),
                  ("lpar.start", {"lpar": "LPAR1"})]
    calls = b"".join(http_call(m, p, i + 1) for i, (m, p) in enumerate(operations))
    seed("call_with_token", calls, split=7)
    # The same, each first Api call throwing Busy (kind 4): JSON-RPC errors in a 200.
    seed("call_api_throws", calls, flags=HTTP_LOOPBACK | (4 << 1) | 0xF0)
    # Refused calls: no token, another token, another scheme, a method the page does not offer,
    # a notification, not JSON.
    seed("call_refused",
         http_call("storage.mvstor", {"lpar": "LPAR2", "origin_mib": 192}, token=None) +
         http_call("storage.mvstor", {"lpar": "LPAR2", "origin_mib": 192}, token="0" * 64) +
         http_call("lpar.stop", {"lpar": "LPAR1"}, token=None,
                   extra=[("Authorization", "Basic dXNlcjpwYXNz")]) +
         http_call("lpar.define", {"name": "LPAR3", "size_mib": 64}) +
         http_request("POST", "/api/call", local + [("Authorization", f"Bearer {HTTP_TOKEN}")],
                      b'{"jsonrpc":"2.0","method":"lpar.stop","params":{"lpar":"LPAR1"}}') +
         http_request("POST", "/api/call", local + [("Authorization", f"Bearer {HTTP_TOKEN}")],
                      b"not json"), split=3)
    seed("wrong_method", http_request("DELETE", "/metrics", local) +
         http_request("POST", "/", local, b"x=1") + http_request("GET", "/api/call", local) +
         http_request("PUT", "/api/call", local, b"{}") + http_request("POST", "/events", local) +
         http_request("HEAD", "/api/lpars", local) + http_request("GET", "/no/such/page", local))
    # Pipelined in 1-64 byte reads; the Connection: close ends it, what follows is never read.
    seed("pipelined", http_request("GET", "/api/lpars", local) +
         http_request("GET", "/metrics", local) +
         http_request("GET", "/", local + [("Connection", "close")]) +
         http_request("GET", "/api/stats", local), split=0x5A)
    body = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "storage.expand",
                       "params": {"lpar": "LPAR2", "mib": 2}}).encode()
    chunked = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + 20]), body[i:i + 20])
                       for i in range(0, len(body), 20)) + b"0\r\nX-Trailer: 1\r\n\r\n"
    seed("chunked_call", http_request("POST", "/api/call", local + [
        ("Authorization", f"Bearer {HTTP_TOKEN}"), ("Transfer-Encoding", "chunked")],
        chunked, length=False), split=11)
    # Over the limits: 431 for the headers, 413 for a body (declared; then chunked: the second
    # chunk's size takes it over 16 KiB).
    seed("header_too_long", http_request("GET", "/", local + [("X-Long", "a" * 9000)]), split=0x33)
    seed("body_too_long", http_request("POST", "/api/call", local + [("Content-Length", "20000")],
                                       b"{" * 64, length=False))
    big = b"2000\r\n%s\r\n2001\r\n%s" % (b"[" * 0x2000, b"[" * 64)
    seed("chunked_body_too_long", http_request("POST", "/api/call", local + [
        ("Transfer-Encoding", "chunked")], big, length=False), split=0x21)
    # The Host check of a loopback listener (421, which closes), on a route and on the event
    # stream; the same on a listener bound elsewhere (no check).
    bad_host = http_request("GET", "/api/lpars", [("Host", "evil.example:9180")])
    seed("bad_host", bad_host)
    seed("bad_host_events", http_request("GET", "/events", [("Host", "192.168.1.1")]))
    seed("bad_host_not_loopback", bad_host + http_request("GET", "/events", [("Host", "[::2]")]),
         flags=0)
    seed("http10", http_request("GET", "/metrics", [], version="1.0") +
         http_request("GET", "/metrics", [("Connection", "keep-alive")], version="1.0"), flags=0)
    seed("http10_keep_alive", http_request("GET", "/api/stats", [("Connection", "keep-alive")],
                                           version="1.0") +
         http_request("GET", "/", [], version="1.0"), flags=0)
    # An HTTP/1.0 request without Host on a loopback listener: 421.
    seed("http10_no_host", http_request("GET", "/api/lpars", [], version="1.0"))
    # Not HTTP at all (a TLS ClientHello), and a request cut off in its headers.
    seed("tls_hello", bytes.fromhex("16030100a5010000a10303") + bytes(32))
    seed("cut_off", b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAcc", split=5)


TARGETS = {
    "virtqueue": virtqueue_seeds, "virtio_blk": virtio_blk_seeds, "virtio_rng": virtio_rng_seeds,
    "virtio_mem": virtio_mem_seeds, "pci": pci_seeds, "storage_key_port": storage_key_seeds,
    "uart": uart_seeds, "legacy_ports": legacy_seeds, "firmware_loader": firmware_seeds,
    "linux_loader": linux_seeds, "config": config_seeds, "control_framing": control_framing_seeds,
    "http": http_seeds,
}

if __name__ == "__main__":
    names = sys.argv[1:] or list(TARGETS)
    for name in names:
        if name not in TARGETS:
            sys.exit(f"make_corpus.py: no target {name} (known: {', '.join(TARGETS)})")
        TARGETS[name]()
