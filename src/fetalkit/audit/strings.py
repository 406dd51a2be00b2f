"""Identifying strings of the original, searched in the bytes of the output file.

Every string value of the original's identifying attributes, at any nesting
level, becomes a set of byte patterns (case-insensitive):

* names (PN) and other text: the words in order with any run of ``^``, spaces,
  commas, dots, ``_``, ``-`` or ``/`` between them; names also in the other order
  (given family) and each name part of 4+ letters on its own, as a word;
* dates (DA, the date of a DT): ``20150520``, ``2015-05-20``, ``2015.05.20``,
  ``2015/05/20``, ``20.05.2015``, ``20/05/2015``, ``20-05-2015``, ``05/20/2015``,
  ``05-20-2015``, ``05.20.2015``, ``20.05.15``, ``20.5.2015``, ``5/20/2015``;
* times (TM, the time of a DT): ``14:35:12``, ``143512``, ``2:35:12 PM``;
* instance UIDs the profile remaps (action U), as stored.

Identifying attributes: those the profile table acts on (other than UIDs and
numbers), every person name, every private element holding text, Text Value and
any ``...Comments`` / ``...Description`` attribute.  Values with fewer than 3
letters or digits are not searched (they match anything), nor placeholders such
as ``ANONYMIZED``.

Where the output is searched, so that a match means a leak and not chance:

* DICOM: the preamble, the file meta and every byte of the dataset outside the
  pixel data (all patterns); inside encapsulated pixel data, the JPEG comment
  (COM) and application (APPn) segments and the JPEG 2000 comments (COM) of every
  fragment (all patterns); native pixel bytes are not searched (grey levels
  spell digits by chance; the pixel audit reads the pixels);
* images: the metadata Pillow reads (PNG text chunks, EXIF, TIFF tags, JPEG
  comments) with all patterns, and the whole file with patterns of 8+ characters;
* videos and anything else: the whole file with patterns of 8+ characters
  (container tags are not parsed).

Reports name the attribute and the form found, never the value.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from pydicom.dataset import Dataset

from fetalkit.audit.profile import required_action, walk

__all__ = ["Needle", "StringHit", "identifying_needles", "image_metadata_needles", "search_output",
           "output_regions", "embedded_segments"]

MIN_ALNUM = 3
WHOLE_FILE_MIN_CHARS = 8     # compressed bytes spell a shorter pattern by chance
_TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC", "DA", "TM", "DT", "AE", "AS", "CS", "UR"}
_PLACEHOLDERS = {"ANONYMIZED", "ANONYMOUS", "ANON", "UNKNOWN", "NONE", "N/A", "YES", "NO", "REMOVED", "MODIFIED"}
_SEP = rb"[\s^,._/\-]{0,3}"
_ALNUM_RE = re.compile(r"[0-9A-Za-z]")


@dataclass(frozen=True)
class Needle:
    """One byte pattern of one identifying value: the attribute it came from and its form."""

    attribute: str
    form: str
    pattern: re.Pattern
    chars: int          # length of the shortest text the pattern matches (for the whole-file rule)


@dataclass(frozen=True)
class StringHit:
    """An identifying value found in the output: which attribute, where, in which form (never the value)."""

    attribute: str
    where: str
    form: str

    def as_dict(self) -> dict:
        return {"attribute": self.attribute, "where": self.where, "form": self.form}


# --------------------------------------------------------------------------- needles


def _identifying(elem, name: str) -> bool:
    if elem.VR not in _TEXT_VRS and not (elem.tag.is_private and elem.VR in ("UN", "OB")):
        return False
    if elem.tag.is_private or elem.VR == "PN" or elem.keyword == "TextValue":
        return True
    if elem.keyword.endswith(("Comments", "Comment", "Description")):
        return True
    code = required_action(int(elem.tag))
    return code is not None and code not in ("U",)


def _text_values(elem) -> list[str]:
    value = elem.value
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("latin-1")
        printable = sum(32 <= ord(c) < 127 for c in text)
        return [text.strip("\x00 ")] if text and printable >= 0.9 * len(text) else []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return [str(value)]


def _words_pattern(words: list[str]) -> bytes:
    return _SEP.join(re.escape(w.encode("utf-8", "replace")) for w in words)


def _needle(attribute: str, form: str, pattern: bytes, chars: int, number: bool = False) -> Needle:
    """A case-insensitive pattern that matches a whole word only (never inside a longer word or
    number; a number not inside a decimal either)."""
    edge = rb"0-9A-Za-z." if number else rb"0-9A-Za-z"
    pattern = rb"(?<![" + edge + rb"])" + pattern + rb"(?![" + edge + rb"])"
    return Needle(attribute, form, re.compile(pattern, re.IGNORECASE), chars)


def _text_needles(attribute: str, text: str, person: bool) -> list[Needle]:
    words = [w for w in re.split(r"[\^\s,=]+", text.strip()) if w]
    if sum(len(_ALNUM_RE.findall(w)) for w in words) < MIN_ALNUM or text.strip().upper() in _PLACEHOLDERS:
        return []
    chars = sum(len(w) for w in words)
    number = all(w.replace(".", "").isdigit() for w in words)
    needles = [_needle(attribute, "as stored" if len(words) < 2 else "words in order", _words_pattern(words), chars,
                       number)]
    if person and len(words) >= 2:
        needles.append(_needle(attribute, "name parts reversed", _words_pattern(words[::-1]), chars))
        for w in words:
            if len(w) >= 4 and w.isalpha() and w.upper() not in _PLACEHOLDERS:
                needles.append(_needle(attribute, "one name part", re.escape(w.encode("utf-8", "replace")),
                                       len(w)))
    return needles


def _date_forms(da: str) -> list[tuple[str, str]]:
    """(form name, text) for a DICOM date YYYYMMDD."""
    m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", da.strip())
    if not m:
        return []
    y, mo, d = m.groups()
    forms = [("YYYYMMDD", f"{y}{mo}{d}"), ("YYYY-MM-DD", f"{y}-{mo}-{d}"), ("YYYY.MM.DD", f"{y}.{mo}.{d}"),
             ("YYYY/MM/DD", f"{y}/{mo}/{d}"), ("DD.MM.YYYY", f"{d}.{mo}.{y}"), ("DD/MM/YYYY", f"{d}/{mo}/{y}"),
             ("DD-MM-YYYY", f"{d}-{mo}-{y}"), ("MM/DD/YYYY", f"{mo}/{d}/{y}"), ("MM-DD-YYYY", f"{mo}-{d}-{y}"),
             ("MM.DD.YYYY", f"{mo}.{d}.{y}"), ("DD.MM.YY", f"{d}.{mo}.{y[2:]}")]
    if d.startswith("0") or mo.startswith("0"):
        forms += [("D.M.YYYY", f"{int(d)}.{int(mo)}.{y}"), ("M/D/YYYY", f"{int(mo)}/{int(d)}/{y}")]
    return forms


def _time_forms(tm: str) -> list[tuple[str, str]]:
    """(form name, text) for a DICOM time HHMMSS[.ffffff] (HH:MM:SS forms only: HH:MM alone is too common)."""
    m = re.fullmatch(r"(\d{2}):?(\d{2}):?(\d{2})(?:\.\d*)?", tm.strip())
    if not m:
        return []
    h, mi, s = m.groups()
    hour12 = int(h) % 12 or 12
    half = "AM" if int(h) < 12 else "PM"
    return [("HH:MM:SS", f"{h}:{mi}:{s}"), ("HHMMSS", f"{h}{mi}{s}"),
            ("H:MM:SS AM/PM", f"{hour12}:{mi}:{s} {half}")]


def _literal_needles(attribute: str, forms: list[tuple[str, str]]) -> list[Needle]:
    needles = []
    for form, text in forms:
        pattern = re.escape(text.encode())
        if form == "H:MM:SS AM/PM":
            pattern = pattern.replace(rb"\ ", rb"\s?")
        needles.append(_needle(attribute, form, pattern, len(text.replace(" ", "")), number=True))
    return needles


def _value_needles(name: str, vr: str, text: str) -> list[Needle]:
    text = text.strip().strip("\x00").strip()
    if not text:
        return []
    if vr == "DA":
        return _literal_needles(name, _date_forms(text))
    if vr == "TM":
        return _literal_needles(name, _time_forms(text))
    if vr == "DT":
        m = re.fullmatch(r"(\d{8})(\d{2,6}(?:\.\d*)?)?(?:[+-]\d{4})?", text)
        if m:
            needles = _literal_needles(name, _date_forms(m.group(1)))
            if m.group(2) and len(m.group(2).split(".")[0]) == 6:
                needles += _literal_needles(name, _time_forms(m.group(2)))
            return needles
    return _text_needles(name, text, person=vr == "PN")


def identifying_needles(original: Dataset) -> list[Needle]:
    """Byte patterns of every identifying value of ``original`` (file meta and dataset, all levels)."""
    needles: list[Needle] = []
    for ds in (getattr(original, "file_meta", None), original):
        if ds is None:
            continue
        for _, name, elem in walk(ds):
            if elem.VR == "SQ":
                continue
            if elem.VR == "UI" and required_action(int(elem.tag)) in ("U", "X/Z/U*"):
                for uid in _text_values(elem):
                    uid = uid.strip().rstrip("\x00")
                    if uid and not uid.startswith("1.2.840.10008."):  # well-known UIDs identify nobody
                        needles.append(_needle(name, "original UID", re.escape(uid.encode()), len(uid), number=True))
                continue
            if not _identifying(elem, name):
                continue
            for text in _text_values(elem):
                needles += _value_needles(name, elem.VR, text)
    return needles


def image_metadata_text(path: Path) -> dict[str, str]:
    """Text metadata of an image file Pillow can read (PNG text chunks, EXIF, TIFF tags, JPEG comment)."""
    from PIL import ExifTags, Image, TiffTags
    found: dict[str, str] = {}
    try:
        with Image.open(path) as im:
            for key, value in im.info.items():
                if isinstance(value, str) and key not in ("dpi", "gamma"):
                    found[f"{im.format} {key}"] = value
                elif key == "comment" and isinstance(value, bytes):
                    found[f"{im.format} comment"] = value.decode("latin-1")
            for tag, value in im.getexif().items():
                if isinstance(value, (str, bytes)):
                    label = ExifTags.TAGS.get(tag) or TiffTags.lookup(tag).name or str(tag)
                    found[f"EXIF {label}"] = value if isinstance(value, str) else value.decode("latin-1")
            for tag, value in getattr(im, "tag_v2", {}).items():
                if isinstance(value, str):
                    found[f"TIFF {TiffTags.lookup(tag).name}"] = value
    except Exception:  # noqa: BLE001 - not an image Pillow reads: nothing to list
        return {}
    return found


def image_metadata_needles(path: Path) -> list[Needle]:
    """Byte patterns of the text metadata of an original image (its EXIF / TIFF / PNG text)."""
    needles = []
    for name, text in image_metadata_text(path).items():
        if name.endswith(("Software", "Make", "Model")) or name.endswith(("XResolution", "YResolution")):
            continue  # the scanner's or writer's name identifies nobody
        needles += _text_needles(name, text, person=False)
    return needles


# --------------------------------------------------------------------------- where to look


def embedded_segments(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(label, payload) of the comment and application segments of one JPEG or JPEG 2000 frame.

    JPEG: APP0-APP15 and COM (FFFE) before the first scan; JPEG 2000 codestream: COM
    (FF64) in the main header.  A JP2 file wrapper is searched for its codestream.
    """
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 4 <= len(data) and data[i] == 0xFF:
            marker = data[i + 1]
            if marker == 0xFF:
                i += 1
                continue
            if marker in (0x01,) or 0xD0 <= marker <= 0xD8:
                i += 2
                continue
            if marker == 0xDA:  # start of scan: entropy-coded data follows
                return
            length = int.from_bytes(data[i + 2:i + 4], "big")
            payload = data[i + 4:i + 2 + length]
            if 0xE0 <= marker <= 0xEF:
                yield f"JPEG APP{marker - 0xE0}", payload
            elif marker == 0xFE:
                yield "JPEG COM", payload
            i += 2 + length
        return
    start = data.find(b"\xff\x4f\xff\x51")
    if start < 0:
        return
    i = start + 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in (0x90, 0x93, 0xD9):  # start of tile: the main header ends
            return
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0x64:
            yield "JPEG 2000 COM", data[i + 6:i + 2 + length]  # after the 2-byte registration value
        i += 2 + length


_KNOWN_SEGMENTS = (b"JFIF\x00", b"JFXX\x00", b"Adobe", b"ICC_PROFILE\x00")


def segment_known_safe(label: str, payload: bytes) -> bool:
    """JFIF / Adobe / ICC application segments carry no text about anyone; comments may."""
    return label.startswith("JPEG APP") and payload.startswith(_KNOWN_SEGMENTS)


def _pixel_span(path: Path, ds: Dataset) -> Optional[tuple[int, int]]:
    """Byte range of the top-level pixel data value in the file (to the end for undefined length)."""
    raw = ds.get_item(0x7FE00010) if "PixelData" in ds else None
    tell = getattr(raw, "value_tell", None)
    if tell is None:
        return None
    length = raw.length
    end = path.stat().st_size if length in (None, 0xFFFFFFFF) else tell + length
    return int(tell), int(end)


def output_regions(path: Path, is_dicom: bool) -> list[tuple[str, bytes, bool]]:
    """(where, bytes, every pattern counts) of an output file: the parts a string can hide in."""
    from fetalkit.io.dicom import open_dataset
    data = path.read_bytes()
    # a fresh parse: the pixel data's file offset is known only while its element is still raw
    ds = open_dataset(path) if is_dicom else None
    if ds is None:
        regions = [(f"{label}", text.encode("utf-8", "replace"), True)
                   for label, text in image_metadata_text(path).items()]
        return regions + [("file bytes", data, False)]
    preamble_len = 128 if data[128:132] == b"DICM" else 0
    span = _pixel_span(path, ds)
    body_end = span[0] if span else len(data)
    regions = [("preamble", data[:preamble_len], True)] if preamble_len else []
    header = data[preamble_len:body_end] + (data[span[1]:] if span else b"")
    ts = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if ts == "1.2.840.10008.1.2.1.99":  # Deflated: the dataset is zlib-compressed after the meta
        meta_end = data.find(b"\x02\x00\x10\x00", preamble_len)
        try:
            header += zlib.decompressobj(-15).decompress(data[meta_end + 8 + int.from_bytes(
                data[meta_end + 6:meta_end + 8], "little"):])
        except zlib.error:
            pass
    regions.append(("header", header, True))
    for label, payload in pixel_segments(ds):
        regions.append((f"pixel data {label}", payload, True))
    return regions


def pixel_segments(ds: Dataset) -> list[tuple[str, bytes]]:
    """The comment and application segments of every encapsulated frame of ``ds`` (empty when native)."""
    ts = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if "PixelData" not in ds or ts is None or not getattr(ts, "is_encapsulated", False):
        return []
    from pydicom.encaps import generate_fragments
    segments = []
    try:
        for fragment in generate_fragments(ds.PixelData):
            segments += list(embedded_segments(bytes(fragment)))
    except Exception:  # noqa: BLE001 - a damaged stream: the pixel audit says what it can
        pass
    return segments


def search_output(needles: list[Needle], regions: list[tuple[str, bytes, bool]],
                  ocr_text: str = "") -> list[StringHit]:
    """Every (attribute, where, form) an identifying pattern is found at; one hit per attribute and place."""
    hits: dict[tuple[str, str], StringHit] = {}
    if ocr_text:
        regions = regions + [("pixels (OCR)", ocr_text.encode("utf-8", "replace"), True)]
    for where, data, all_patterns in regions:
        if not data:
            continue
        for n in needles:
            if (n.attribute, where) in hits or (not all_patterns and n.chars < WHOLE_FILE_MIN_CHARS):
                continue
            if n.pattern.search(data):
                hits[(n.attribute, where)] = StringHit(n.attribute, where, n.form)
    return list(hits.values())
