"""PSFHS reader (Chen et al., Scientific Data 2024): intrapartum transperineal ultrasound
with pubic symphysis (PS) and fetal head (FH) segmentations.

Layout (as kept in ``shared/data``)::

    psfhs/image/NNNNN.png   256 x 256 uint8 grayscale
    psfhs/label/NNNNN.png   256 x 256 uint8: 0 background, 1 PS, 2 FH
    psfhs/mha_as_distributed/image_mha/NNNNN.mha, label_mha/NNNNN.mha   (20 pairs)

As published, the files are MetaImage (``.mha``): an ASCII header ending with
``ElementDataFile = LOCAL``, then the raw pixels.  Images are ``NDims = 3``,
``DimSize = 256 256 3``, MET_UCHAR: three PLANES of 256 x 256 stored one after
the other (x fastest, then y, then plane), all three identical and equal to the
PNG; labels are ``NDims = 2``.  Spacing is ``1 1 1`` (no mm calibration).
:func:`read_mha` is a small MetaImage reader (uncompressed or zlib-compressed,
local or detached data, common element types) so that no SimpleITK is needed.

Splits: ids are consecutive frame numbers, and neighbouring ids are often frames
of one acquisition (see :func:`psfhs_groups`), so split by id block, not by image.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Sequence

import numpy as np

from fetalkit.errors import DataError, InputError
from fetalkit.io.images import atomic_write_bytes, read_gray

PS_LABEL = 1
FH_LABEL = 2
CLASS_NAMES = ("background", "pubic_symphysis", "fetal_head")

# Byte-identical images published twice with slightly different labels (data README).
DUPLICATE_PAIRS = (("04316", "04398"), ("04319", "04323"), ("04403", "04404"),
                   ("04943", "05000"), ("04959", "05012"), ("05085", "05086"))

DEFAULT_BLOCK_SIZE = 50

_MET_TYPES = {
    "MET_CHAR": np.int8, "MET_UCHAR": np.uint8, "MET_SHORT": np.int16, "MET_USHORT": np.uint16,
    "MET_INT": np.int32, "MET_UINT": np.uint32, "MET_LONG": np.int32, "MET_ULONG": np.uint32,
    "MET_LONG_LONG": np.int64, "MET_ULONG_LONG": np.uint64, "MET_FLOAT": np.float32, "MET_DOUBLE": np.float64,
}
_MAX_HEADER_BYTES = 1 << 16
_TRUE = {"true", "1", "yes"}


# --------------------------------------------------------------------------- MetaImage

def _parse_value(text: str):
    """Header value as int / float / list of numbers where it is numeric, else the string."""
    parts = text.split()
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            return text
    return nums[0] if len(nums) == 1 else nums


def _split_header(raw: bytes, path: Path) -> tuple[dict[str, str], int]:
    """Header fields (raw strings) and the byte offset just after the ``ElementDataFile`` line."""
    fields: dict[str, str] = {}
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0 or end > _MAX_HEADER_BYTES:
            raise InputError(f"{path}: not a MetaImage file (no 'ElementDataFile = ...' header line)")
        try:
            line = raw[pos:end].decode("ascii").strip()
        except UnicodeDecodeError:
            raise InputError(f"{path}: not a MetaImage file (binary data before the header ends)") from None
        pos = end + 1
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise InputError(f"{path}: not a MetaImage file (header line {line[:40]!r} is not 'Key = Value')")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            return fields, pos


def _int_field(fields: dict[str, str], key: str, default: int, path: Path) -> int:
    try:
        return int(fields.get(key) or default)
    except ValueError:
        raise InputError(f"{path}: MetaImage field {key} = {fields[key]!r} is not an integer") from None


def _element_dtype(fields: dict[str, str], path: Path) -> np.dtype:
    name = fields.get("ElementType", "")
    if name not in _MET_TYPES:
        raise InputError(f"{path}: unsupported ElementType {name or '(missing)'!r}; "
                         f"supported: {', '.join(sorted(_MET_TYPES))}")
    msb = (fields.get("BinaryDataByteOrderMSB") or fields.get("ElementByteOrderMSB") or "False").lower()
    return np.dtype(_MET_TYPES[name]).newbyteorder(">" if msb in _TRUE else "<")


def _payload(raw: bytes, offset: int, fields: dict[str, str], path: Path, n_bytes: int) -> bytes:
    """The pixel bytes (still compressed when CompressedData is True)."""
    compressed = fields.get("CompressedData", "False").lower() in _TRUE
    target = fields["ElementDataFile"]
    if target == "LOCAL":
        data = raw[offset:]
    elif target.upper() == "LIST" or "%" in target or len(target.split()) > 1:
        raise InputError(f"{path}: multi-file ElementDataFile {target!r} is not supported; "
                         "convert the image to a single .mha file")
    else:
        data_path = path.parent / target  # detached data is relative to the header
        if not data_path.is_file():
            raise InputError(f"{path}: data file {data_path} named by ElementDataFile not found")
        data = data_path.read_bytes()
        header_size = _int_field(fields, "HeaderSize", 0, path)
        if header_size == -1 and not compressed:  # -1: the data is at the end of the file
            data = data[len(data) - n_bytes:] if len(data) >= n_bytes else data
        elif header_size > 0:
            data = data[header_size:]
    if compressed and "CompressedDataSize" in fields:
        data = data[:_int_field(fields, "CompressedDataSize", 0, path)]
    return data


def _decompress(data: bytes, n_bytes: int, path: Path) -> bytes:
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # accepts a zlib or a gzip header
    try:
        out = inflater.decompress(data, n_bytes + 1)
    except zlib.error as exc:
        raise InputError(f"{path}: corrupt compressed pixel data ({exc}); re-export the file") from None
    if len(out) < n_bytes:
        raise InputError(f"{path}: truncated compressed pixel data ({len(out)} of {n_bytes} bytes); "
                         "the file is incomplete, copy it again")
    return out[:n_bytes]


def read_mha(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a MetaImage file (``.mha`` with local data, or ``.mhd`` with a detached raw file).

    Parameters
    ----------
    path : the header file.

    Returns
    -------
    (array, header).  ``array`` is in numpy index order, the reverse of
    ``DimSize``: a 2-D image is H x W, a 3-D one D x H x W (PSFHS images: 3 x H x W,
    three identical planes), with a trailing channel axis when
    ``ElementNumberOfChannels`` > 1.  Rows are image rows (y down), as stored;
    ``TransformMatrix`` is reported but not applied.  ``header`` holds every
    header field (numbers parsed) plus ``spacing``: a tuple in DimSize order
    (x, y[, z]) from ElementSpacing (or ElementSize; default 1).

    Raises InputError naming the file for a non-MetaImage file, an unsupported
    element type or layout, and truncated or corrupt data.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    raw = p.read_bytes()
    fields, offset = _split_header(raw, p)
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
    except (KeyError, ValueError):
        raise InputError(f"{p}: MetaImage header has no valid 'DimSize'") from None
    if not dims or any(d < 1 for d in dims):
        raise InputError(f"{p}: invalid DimSize {fields['DimSize']!r}")
    if fields.get("BinaryData", "True").lower() not in _TRUE:
        raise InputError(f"{p}: ASCII MetaImage data is not supported; save the image with BinaryData = True")
    dtype = _element_dtype(fields, p)
    channels = _int_field(fields, "ElementNumberOfChannels", 1, p)
    if channels < 1:
        raise InputError(f"{p}: invalid ElementNumberOfChannels {channels}")
    n_bytes = int(np.prod(dims)) * channels * dtype.itemsize
    data = _payload(raw, offset, fields, p, n_bytes)
    if fields.get("CompressedData", "False").lower() in _TRUE:
        data = _decompress(data, n_bytes, p)
    elif len(data) < n_bytes:
        raise InputError(f"{p}: truncated pixel data ({len(data)} of {n_bytes} bytes); "
                         "the file is incomplete, copy it again")
    shape = tuple(reversed(dims)) + ((channels,) if channels > 1 else ())
    array = np.frombuffer(data, dtype=dtype, count=n_bytes // dtype.itemsize).reshape(shape)
    array = array.astype(dtype.newbyteorder("="), copy=True)  # native order, writable
    header = {k: _parse_value(v) for k, v in fields.items()}
    spacing = fields.get("ElementSpacing") or fields.get("ElementSize")
    header["spacing"] = tuple(float(v) for v in spacing.split()) if spacing else (1.0,) * len(dims)
    return array, header


def write_mha(path: str | os.PathLike, array: np.ndarray, compressed: bool = False,
              spacing: Sequence[float] | None = None, channels_last: bool = False) -> Path:
    """Write an array as a single-file MetaImage (``.mha``), atomically.

    Parameters
    ----------
    path : output file.
    array : 2-D (H x W) or 3-D (D x H x W) array of a type in ``_MET_TYPES``; with
        ``channels_last`` the last axis is stored as ``ElementNumberOfChannels``.
    compressed : zlib-compress the pixels (``CompressedData = True``).
    spacing : pixel spacing in DimSize order (x, y[, z]); default all 1.

    Returns
    -------
    The path written.  ``read_mha`` reads it back exactly.
    """
    p = Path(path)
    arr = np.asarray(array)
    names = {np.dtype(t): n for n, t in _MET_TYPES.items() if n not in ("MET_LONG", "MET_ULONG")}
    if arr.dtype.newbyteorder("=") not in names:
        raise InputError(f"{p}: cannot write pixel type {arr.dtype} as MetaImage")
    spatial = arr.shape[:-1] if channels_last else arr.shape
    if len(spatial) < 1:
        raise InputError(f"{p}: need at least one spatial axis, got shape {arr.shape}")
    dims = list(reversed(spatial))
    spacing = [1.0] * len(dims) if spacing is None else [float(s) for s in spacing]
    if len(spacing) != len(dims):
        raise InputError(f"{p}: spacing has {len(spacing)} values for {len(dims)} dimensions")
    data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    if compressed:
        data = zlib.compress(data)
    lines = ["ObjectType = Image", f"NDims = {len(dims)}", "BinaryData = True",
             "BinaryDataByteOrderMSB = False", f"CompressedData = {compressed}"]
    if compressed:
        lines.append(f"CompressedDataSize = {len(data)}")
    lines += [f"ElementSpacing = {' '.join(f'{s:g}' for s in spacing)}",
              f"DimSize = {' '.join(str(d) for d in dims)}"]
    if channels_last:
        lines.append(f"ElementNumberOfChannels = {arr.shape[-1]}")
    lines += [f"ElementType = {names[arr.dtype.newbyteorder('=')]}", "ElementDataFile = LOCAL"]
    return atomic_write_bytes(p, ("\n".join(lines) + "\n").encode("ascii"), data)


def _to_gray_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    """Collapse identical planes (D x H x W) to one H x W plane and check it fits uint8."""
    arr = array
    if arr.ndim == 3:  # D x H x W planes (channels already moved first by the caller)
        if not all(np.array_equal(arr[0], plane) for plane in arr[1:]):
            raise InputError(f"{path}: {arr.shape[0]} planes that differ; expected a grayscale image "
                             "(one plane or identical planes)")
        arr = arr[0]
    if arr.ndim != 2:
        raise InputError(f"{path}: expected a 2-D image, got array shape {array.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.integer) and arr.size and arr.min() >= 0 and arr.max() <= 255:
        return arr.astype(np.uint8)
    raise InputError(f"{path}: pixel type {arr.dtype} with values outside 0..255; convert it to 8-bit")


def read_psfhs_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PSFHS image or label (``.png`` or ``.mha``) as H x W uint8.

    Three identical planes (the published ``.mha`` images) become one plane;
    label values are returned unchanged (no scaling).
    """
    p = Path(path)
    if p.suffix.lower() in (".mha", ".mhd"):
        array, header = read_mha(p)
        if int(header.get("ElementNumberOfChannels", 1)) > 1:
            array = np.moveaxis(array, -1, 0)  # channels as planes
            if array.ndim > 3:
                raise InputError(f"{p}: expected a 2-D image with channels, got array shape {array.shape}")
        return _to_gray_uint8(array, p)
    return read_gray(p)


# --------------------------------------------------------------------------- dataset

@dataclass(frozen=True)
class PsfhsItem:
    """Paths of one PSFHS image and its label map (pixels are read on demand)."""

    image_id: str
    image_path: Path
    label_path: Path

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(image H x W uint8, label H x W uint8 in {0, 1, 2}); DataError for a bad label."""
        image = read_psfhs_image(self.image_path)
        label = read_psfhs_image(self.label_path)
        if label.shape != image.shape:
            raise DataError(f"{self.label_path}: label shape {label.shape} differs from image "
                            f"shape {image.shape} ({self.image_path})")
        bad = np.setdiff1d(np.unique(label), np.arange(len(CLASS_NAMES)))
        if bad.size:
            raise DataError(f"{self.label_path}: label values {bad.tolist()} outside {{0, 1, 2}} "
                            "(0 background, 1 pubic symphysis, 2 fetal head); fix or remove the label")
        return image, label


def _layout(root: Path) -> tuple[Path, Path]:
    for image_dir, label_dir in (("image", "label"), ("image_mha", "label_mha")):
        if (root / image_dir).is_dir() and (root / label_dir).is_dir():
            return root / image_dir, root / label_dir
    raise DataError(f"{root}: expected PSFHS folders image/ + label/ (PNG) or image_mha/ + label_mha/ (.mha)")


def list_psfhs(root: str | os.PathLike) -> list[PsfhsItem]:
    """List the image / label pairs of a PSFHS folder, sorted by id.

    ``root`` holds ``image/`` and ``label/`` (PNG, preferred when both layouts are
    present) or ``image_mha/`` and ``label_mha/``.  Raises DataError when the
    layout is wrong, no image is found or an image has no label.
    """
    root = Path(root)
    image_dir, label_dir = _layout(root)
    images = sorted(q for q in image_dir.iterdir() if q.is_file() and q.suffix.lower() in (".png", ".mha"))
    if not images:
        raise DataError(f"{image_dir}: no .png or .mha images")
    items, missing = [], []
    for image_path in images:
        label_path = label_dir / image_path.name
        if label_path.is_file():
            items.append(PsfhsItem(image_path.stem, image_path, label_path))
        else:
            missing.append(label_path.name)
    if missing:
        raise DataError(f"{label_dir}: {len(missing)} image(s) have no label, e.g. {missing[:3]}; "
                        "add the labels or remove those images")
    return items


def _id_number(image_id: Hashable) -> int:
    try:
        return int(str(image_id))
    except ValueError:
        raise DataError(f"{image_id!r}: not a PSFHS image id (expected digits such as 04316)") from None


def psfhs_groups(image_ids: Sequence[Hashable], block_size: int = DEFAULT_BLOCK_SIZE,
                 duplicate_pairs: Sequence[tuple[str, str]] = DUPLICATE_PAIRS) -> list[str]:
    """Split-group key of each PSFHS id: blocks of ``block_size`` consecutive ids, merged
    so that each listed duplicate pair shares a group.

    Why blocks of 50: ids are frame numbers in acquisition order.  On the 1168 dev
    images the id sequence has 18 runs (10 to 210 ids) separated by gaps of exactly
    10 or 20 ids (held-out blocks aligned to multiples of 10), too few and too uneven
    to be split groups.  Neighbouring ids are largely frames of one sweep: the most
    similar other image (64 x 64 correlation) is 1 id away for half of the images and
    within 19 ids for 90 %, while byte-identical duplicates lie up to 82 ids apart.
    Blocks of 50 (aligned to multiples of 50) give 29 groups, keep most neighbours
    together (7.5 % of images with a near-identical neighbour, correlation > 0.95,
    have it in another block, vs 23 % for blocks of 10), and the duplicate pairs that
    straddle blocks (04316/04398, 04943/05000, 04959/05012) are merged explicitly.

    Parameters
    ----------
    image_ids : ids such as ``"04316"`` or ``4316``.
    block_size : ids per block.
    duplicate_pairs : id pairs that must share a group.

    Returns
    -------
    One group key per id (``"psfhs-04300"``: the first id of the lowest merged block).

    >>> psfhs_groups(["04316", "04317", "04398", "04450"])
    ['psfhs-04300', 'psfhs-04300', 'psfhs-04300', 'psfhs-04450']
    """
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    parent: dict[int, int] = {}

    def find(b: int) -> int:
        while parent.get(b, b) != b:
            b = parent[b]
        return b

    for a, b in duplicate_pairs:
        ra, rb = find(_id_number(a) // block_size), find(_id_number(b) // block_size)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [f"psfhs-{find(_id_number(i) // block_size) * block_size:05d}" for i in image_ids]
