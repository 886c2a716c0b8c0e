#!/usr/bin/env python3
"""Extracts the ELF kernel (vmlinux) from a Debian bzImage (vmlinuz).

Used by guest/build-image.sh. QEMU boots an uncompressed ELF vmlinux through PVH (its
`-kernel` loader finds the PVH entry note), which is about twice as fast under TCG as
booting the bzImage. Debian's bzImage payload is XZ-compressed: we look for every XZ
stream magic in the file and keep the first one that decompresses to an ELF image.

Usage: extract-vmlinux.py VMLINUZ OUT
Only the standard library is used (lzma), so any python3 >= 3.3 runs it.
"""

import lzma
import os
import sys

XZ_MAGIC = b"\xfd7zXZ\x00"
ELF_MAGIC = b"\x7fELF"


def extract(data: bytes) -> bytes:
    start = data.find(XZ_MAGIC)
    while start >= 0:
        try:
            # A decompressor object stops at the end of the stream and ignores what follows
            # (the bzImage has trailing data after the payload).
            out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
            if out.startswith(ELF_MAGIC):
                return out
        except lzma.LZMAError:
            pass
        start = data.find(XZ_MAGIC, start + 1)
    raise ValueError("no XZ-compressed ELF payload found (is this an XZ bzImage?)")


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
