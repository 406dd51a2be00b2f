"""Hostile inputs for tests and benchmarks: files an archive holds by accident, built in memory.

>>> len(bomb_png(30000, 30000)) < 200_000   # declares 900 million pixels
True
"""

from __future__ import annotations

import struct
import zlib


def bomb_png(width: int = 30000, height: int = 30000, bit_depth: int = 1) -> bytes:
    """A valid PNG of zeros that declares ``width`` x ``height`` pixels, built without holding its pixels.

    1-bit grey by default, so 30000 x 30000 is about 110 KB; decoders that trust the
    header allocate the whole frame (900 MB at 8 bit) before reading a row.
    """
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    z, row = zlib.compressobj(9), bytes((width * bit_depth + 7) // 8 + 1)  # filter byte + packed samples
    idat = b"".join(z.compress(row * min(1000, height - y)) for y in range(0, height, 1000)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def drop_frame_timing(path) -> None:
    """Remove every cine timing attribute of a DICOM file in place (as some scanners export cine)."""
    import pydicom
    ds = pydicom.dcmread(path)
    for keyword in ("FrameTime", "FrameTimeVector", "CineRate", "RecommendedDisplayFrameRate", "FrameIncrementPointer"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(path)
