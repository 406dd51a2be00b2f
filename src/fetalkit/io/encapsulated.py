"""Metadata out of encapsulated JPEG and JPEG 2000 frames, without re-encoding.

A compressed DICOM frame can carry text beside the image: JPEG COM segments
(0xFFFE) and APPn segments (0xFFE0-0xFFEF: Exif, ICC, vendor blocks, JFIF
thumbnails, which are small pictures of the very pixels that may show burned-in
text); JPEG 2000 COM marker segments (0xFF64) in the codestream and, in JP2
files, XML / UUID / IPR boxes.  ``strip_pixel_data`` parses the marker segments
(or boxes) of every frame and copies back only what decoding needs, byte for
byte: SOI, SOFn, DHT, DAC, DQT, DRI, DNL, SOS and the entropy-coded data for
JPEG (and JPEG-LS's SOF55 / LSE); SIZ, COD, QCD, ... and the tile data for
JPEG 2000.  The frames still decode to the same pixels.

Two application segments are kept, trimmed to their fixed fields:

* APP14 "Adobe" (12 bytes): its transform flag tells a decoder whether a
  3-component frame is RGB or YCbCr, so dropping it could swap colours;
* APP0 "JFIF" without its thumbnail (14 bytes: version, density): libjpeg reads
  its presence as "the components are YCbCr"; the fields hold no PHI, the
  thumbnail is set to 0 x 0 because it is a picture of the image.

A frame that cannot be parsed, or holds a marker this module does not know,
raises ``ValueError``: it is never copied half-understood.

Example
-------
>>> new, removed = strip_pixel_data(ds.PixelData, ds.file_meta.TransferSyntaxUID, 1)  # doctest: +SKIP
"""

from __future__ import annotations

from pydicom.encaps import encapsulate, generate_fragmented_frames
from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

__all__ = ["strip_pixel_data", "strip_jpeg", "strip_jpeg2000", "JPEG_FAMILY", "JPEG2000_FAMILY"]

JPEG_FAMILY = frozenset(str(u) for u in JPEGTransferSyntaxes + JPEGLSTransferSyntaxes)
JPEG2000_FAMILY = frozenset(str(u) for u in JPEG2000TransferSyntaxes)  # HTJ2K included

# --------------------------------------------------------------------------- JPEG (ITU T.81, T.87)

_SOI, _EOI, _SOS, _COM, _APP0, _APP14 = 0xD8, 0xD9, 0xDA, 0xFE, 0xE0, 0xEE
# Marker segments needed to decode: SOF0-15 (not DHT C4, JPG C8, DAC CC), DHT, DAC, DQT, DNL, DRI, DHP, EXP,
# and JPEG-LS's SOF55 and LSE.
_JPEG_NEEDED = frozenset({*range(0xC0, 0xD0), 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xF7, 0xF8}) - {0xC8}


def strip_jpeg(frame: bytes) -> tuple[bytes, int]:
    """One JPEG / JPEG-LS frame without COM and APPn segments (Adobe APP14, JFIF APP0 trimmed, see above).

    Returns the new frame and how many segments were removed or trimmed; data
    after EOI (other than the zero byte that pads a fragment) counts as one.
    """
    if frame[:2] != b"\xff\xd8":
        raise ValueError("a JPEG frame must start with SOI (FF D8)")
    out, pos, removed = [frame[:2]], 2, 0
    while True:
        pos = _next_marker(frame, pos)
        marker = frame[pos + 1]
        if marker == _EOI:
            out.append(b"\xff\xd9")
            removed += any(frame[pos + 2:])  # bytes hidden after the image
            break
        segment = _segment(frame, pos)
        kept = _kept_jpeg_segment(marker, segment)
        out.append(kept)
        removed += kept != segment
        pos += len(segment)
        if marker == _SOS:
            end = _entropy_end(frame, pos)
            out.append(frame[pos:end])
            if end >= len(frame):  # no EOI: the scan runs to the end of the frame, as some encoders write it
                break
            pos = end
    return b"".join(out), removed


def _next_marker(data: bytes, pos: int) -> int:
    """Position of the marker at ``pos`` after fill bytes (FF FF ...)."""
    if pos + 1 >= len(data) or data[pos] != 0xFF:
        raise ValueError(f"expected a marker at byte {pos}; the frame is damaged")
    while pos + 2 < len(data) and data[pos + 1] == 0xFF:
        pos += 1
    return pos


def _segment(data: bytes, pos: int) -> bytes:
    length = int.from_bytes(data[pos + 2:pos + 4], "big")
    if length < 2 or pos + 2 + length > len(data):
        raise ValueError(f"marker segment FF{data[pos + 1]:02X} at byte {pos} runs past the frame")
    return data[pos:pos + 2 + length]


def _kept_jpeg_segment(marker: int, segment: bytes) -> bytes:
    """The segment as written to the output: unchanged, trimmed, or b'' (removed)."""
    payload = segment[4:]
    if marker == _APP14 and payload[:5] == b"Adobe" and len(payload) >= 12:
        return b"\xff\xee\x00\x0e" + payload[:12]  # version, flags0, flags1, colour transform
    if marker == _APP0 and payload[:5] == b"JFIF\x00" and len(payload) >= 14:
        return b"\xff\xe0\x00\x10" + payload[:12] + b"\x00\x00"  # no thumbnail
    if marker == _COM or 0xE0 <= marker <= 0xEF:
        return b""
    if marker in _JPEG_NEEDED or marker == _SOS:
        return segment
    raise ValueError(f"unknown JPEG marker FF{marker:02X}; it is not copied unread")


def _entropy_end(data: bytes, pos: int) -> int:
    """End of the entropy-coded data that starts at ``pos``: the next marker that is not RSTn.

    FF 00 (JPEG) and FF 00-7F (JPEG-LS bit stuffing) are data; FF D0-D7 are restart markers
    inside the scan; FF FF is a fill byte before a marker.
    """
    while True:
        i = data.find(b"\xff", pos)
        if i < 0 or i + 1 >= len(data):
            return len(data)
        b = data[i + 1]
        if b < 0xC0 or 0xD0 <= b <= 0xD7:
            pos = i + 2
        elif b == 0xFF:
            pos = i + 1
        else:
            return i


# --------------------------------------------------------------------------- JPEG 2000 (ITU T.800, T.814)

_SOC, _SOT, _SOD, _EOC, _J2K_COM, _TLM = b"\xff\x4f", 0x90, 0x93, b"\xff\xd9", 0x64, 0x55
# Main and tile-part header segments: CAP, SIZ, COD, COC, TLM, PRF, PLM, PLT, CPF, QCD, QCC, RGN, POC,
# PPM, PPT, CRG and the Part 2 extensions (DCO ... ATK).
_J2K_NEEDED = frozenset({0x50, 0x51, 0x52, 0x53, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5C, 0x5D, 0x5E, 0x5F, 0x60, 0x61,
                         0x63, *range(0x70, 0x7A)})
# JP2 boxes decoders need; 'xml ', 'uuid', 'uinf', 'jp2i' (IPR) and anything unknown are dropped.
_JP2_BOXES = frozenset({b"jP  ", b"ftyp", b"jp2h", b"jp2c"})
_JP2H_BOXES = frozenset({b"ihdr", b"bpcc", b"colr", b"pclr", b"cmap", b"cdef", b"res "})


def strip_jpeg2000(frame: bytes) -> tuple[bytes, int]:
    """One JPEG 2000 frame (a raw codestream, or a JP2 file) without COM segments and metadata boxes."""
    if frame[4:8] == b"jP  ":
        return _strip_jp2(frame)
    if frame[:2] != _SOC:
        raise ValueError("a JPEG 2000 frame must start with SOC (FF 4F) or a JP2 signature box")
    return _strip_codestream(frame)


def _strip_codestream(cs: bytes) -> tuple[bytes, int]:
    main, pos, removed = _j2k_header(cs, 2, stop=_SOT)
    tiles, tiles_changed = [], False
    while pos < len(cs) and cs[pos:pos + 2] != _EOC:
        tile, pos, n = _tile_part(cs, pos)
        tiles.append(tile)
        removed, tiles_changed = removed + n, tiles_changed or n > 0
    if tiles_changed:  # tile-part lengths changed: an index of them (TLM, optional) would now be wrong
        kept = [s for s in main if s[1] != _TLM]
        removed, main = removed + len(main) - len(kept), kept
    trailer = _EOC if cs[pos:pos + 2] == _EOC else b""
    removed += any(cs[pos + len(trailer):])
    return _SOC + b"".join(main) + b"".join(tiles) + trailer, removed


def _j2k_header(cs: bytes, pos: int, stop: int) -> tuple[list[bytes], int, int]:
    """Marker segments from ``pos`` up to the ``stop`` marker (SOT or SOD), COM dropped."""
    segments, removed = [], 0
    while True:
        if pos + 2 > len(cs) or cs[pos] != 0xFF:
            raise ValueError(f"expected a JPEG 2000 marker at byte {pos}; the codestream is damaged")
        marker = cs[pos + 1]
        if marker == stop or (stop == _SOT and cs[pos:pos + 2] == _EOC):
            return segments, pos, removed
        segment = _segment(cs, pos)
        if marker == _J2K_COM:
            removed += 1
        elif marker in _J2K_NEEDED:
            segments.append(segment)
        else:
            raise ValueError(f"unknown JPEG 2000 marker FF{marker:02X}; it is not copied unread")
        pos += len(segment)


def _tile_part(cs: bytes, pos: int) -> tuple[bytes, int, int]:
    """One tile-part (SOT ... data) with COM dropped from its header and Psot corrected."""
    sot = _segment(cs, pos)
    if sot[1] != _SOT or len(sot) != 12:
        raise ValueError(f"expected a tile-part (SOT) at byte {pos}; the codestream is damaged")
    psot = int.from_bytes(sot[6:10], "big")
    if psot:
        end = pos + psot
    else:  # the last tile-part runs to EOC; FF D9 cannot occur inside its (bit-stuffed) data
        found = cs.find(_EOC, pos + 12)
        end = found if found >= 0 else len(cs)
    if end > len(cs) or end < pos + 14:
        raise ValueError(f"tile-part at byte {pos} runs past the codestream")
    header, data_pos, removed = _j2k_header(cs, pos + 12, stop=_SOD)
    body = cs[data_pos:end]
    new_psot = 12 + sum(map(len, header)) + len(body) if psot else 0
    return sot[:6] + new_psot.to_bytes(4, "big") + sot[10:] + b"".join(header) + body, end, removed


def _strip_jp2(data: bytes) -> tuple[bytes, int]:
    out, removed = [], 0
    for kind, box in _boxes(data):
        if kind not in _JP2_BOXES:
            removed += 1
        elif kind == b"jp2h":
            sub = [(k, b) for k, b in _boxes(box[8:])]
            kept = [b for k, b in sub if k in _JP2H_BOXES]
            removed += len(sub) - len(kept)
            out.append(_box(b"jp2h", b"".join(kept)))
        elif kind == b"jp2c":
            codestream, n = _strip_codestream(box[8:])
            removed += n
            out.append(_box(b"jp2c", codestream))
        else:
            out.append(box)
    return b"".join(out), removed


def _boxes(data: bytes):
    """(type, whole box with an 8-byte header) for each box; zero padding at the end is skipped."""
    pos = 0
    while pos < len(data):
        if not any(data[pos:]):
            return
        if len(data) - pos < 8:
            raise ValueError(f"JP2 box at byte {pos} is cut short")
        length, kind, header = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8], 8
        if length == 1:
            length, header = int.from_bytes(data[pos + 8:pos + 16], "big"), 16
        elif length == 0:
            length = len(data) - pos
        if length < header or pos + length > len(data):
            raise ValueError(f"JP2 box {kind!r} at byte {pos} runs past the frame")
        yield kind, _box(kind, data[pos + header:pos + length])
        pos += length


def _box(kind: bytes, payload: bytes) -> bytes:
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


# --------------------------------------------------------------------------- DICOM pixel data


def strip_pixel_data(pixel_data: bytes, transfer_syntax: str, number_of_frames: int,
                     extended_offsets: tuple[bytes, bytes] | None = None) -> tuple[bytes, int] | None:
    """Encapsulated Pixel Data with metadata removed from every frame, re-wrapped one fragment per frame.

    Parameters
    ----------
    pixel_data : bytes
        The encapsulated value of (7FE0,0010).
    transfer_syntax : str
        Its transfer syntax UID.
    number_of_frames : int
        Number of Frames (1 for a single image), used to group fragments into frames.
    extended_offsets : (bytes, bytes), optional
        Extended Offset Table and its Lengths, when the file has them.

    Returns
    -------
    (bytes, int) or None
        The new Pixel Data (with a Basic Offset Table) and the number of segments or
        boxes removed; None for a transfer syntax that is not JPEG, JPEG-LS or JPEG 2000.

    Raises
    ------
    ValueError
        A frame cannot be parsed or holds an unknown marker.
    """
    ts = str(transfer_syntax)
    strip = strip_jpeg if ts in JPEG_FAMILY else strip_jpeg2000 if ts in JPEG2000_FAMILY else None
    if strip is None:
        return None
    frames, removed = [], 0
    for i, fragments in enumerate(generate_fragmented_frames(pixel_data, number_of_frames=number_of_frames,
                                                             extended_offsets=extended_offsets)):
        try:
            frame, n = strip(b"".join(fragments))  # a segment may straddle two fragments
        except ValueError as e:
            raise ValueError(f"frame {i + 1}: {e}") from None
        frames.append(frame)
        removed += n
    if len(frames) != number_of_frames:
        raise ValueError(f"{len(frames)} frames found in the pixel data, the header says {number_of_frames}")
    return encapsulate(frames, has_bot=True), removed
