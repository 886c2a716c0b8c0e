#!/usr/bin/env python3
"""Extracts the ELF kernel (vmlinux) from a Debian bzImage (vmlinuz).

Used by guest/build-image.sh. QEMU boots an uncompressed ELF vmlinux through PVH (its
`-kernel` loader finds the PVH entry note), which is about twice as fast under TCG as
booting the bzImage. The compressed payload is located by the bzImage's setup header
(payload_offset and payload_length, x86 boot protocol >= 2.08): Debian's 6.1 kernels compress
it with XZ (decompressed with the standard library's lzma), the 6.12 kernels with zstd
(decompressed by the `zstd` program, package zstd). The kernel build appends the
uncompressed size (4 bytes) to the compressed stream: dropped before decompressing.

Usage: extract-vmlinux.py VMLINUZ OUT
"""

import lzma
import os
import struct
import subprocess
import sys

XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ELF_MAGIC = b"\x7fELF"


def payload(data: bytes) -> bytes:
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise ValueError("not a bzImage (no HdrS setup header)")
    version = struct.unpack_from("<H", data, 0x206)[0]
    if version < 0x208:
        raise ValueError(f"boot protocol {version:#x} has no payload fields (needs >= 2.08)")
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if length < 8 or start + length > len(data):
        raise ValueError("the setup header's payload lies outside the file")
    return data[start:start + length]


def extract(data: bytes) -> bytes:
    body = payload(data)
    if body.startswith(XZ_MAGIC):
        # A decompressor object stops at the end of the stream and ignores the size after it.
        out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(body)
    elif body.startswith(ZSTD_MAGIC):
        try:
            run = subprocess.run(["zstd", "-dcq"], input=body[:-4], capture_output=True,
                                 check=False)
        except FileNotFoundError as e:
            raise ValueError("the payload is zstd: install zstd") from e
        if run.returncode != 0:
            raise ValueError("zstd -d failed: " + run.stderr.decode(errors="replace").strip())
        out = run.stdout
    else:
        raise ValueError(f"payload compressed with an unknown format (magic {body[:6].hex()})")
    if not out.startswith(ELF_MAGIC):
        raise ValueError("the decompressed payload is not an ELF image")
    return out


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: extract-vmlinux.py VMLINUZ OUT", file=sys.stderr)
        return 2
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        data = f.read()
    try:
        elf = extract(data)
    except ValueError as e:
        print(f"extract-vmlinux: {src}: {e}", file=sys.stderr)
        return 1
    # Write beside the target and rename, so an interrupted run never leaves a truncated
    # vmlinux that a later run would take for a cached one.
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(elf)
    os.replace(tmp, dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
