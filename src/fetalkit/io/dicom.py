"""DICOM reading and writing for ultrasound frames.

``read_dicom`` turns any ultrasound DICOM fetalkit can decode into N x H x W
uint8 grayscale frames (``colour=True``: N x H x W x 3 BGR for a colour file)
plus the metadata the rest of the toolkit needs (pixel size in mm, frame rate).
``write_dicom`` writes frames back as a standard Ultrasound (Multi-frame) Image,
MONOCHROME2 or RGB as the frames are, uncompressed, keeping the patient/study
context of a template so that a masked or cleaned clip stays attached to its study.

Decoding goes through pydicom's pixel handlers:

* uncompressed (Implicit/Explicit VR Little Endian, Deflated) and RLE Lossless:
  pure pydicom;
* JPEG Baseline / Extended (8-bit) and JPEG 2000: Pillow;
* JPEG-LS: only when ``pyjpegls`` is installed;  JPEG Lossless: only when
  ``python-gdcm`` is installed.  Without them ``read_dicom`` says which package
  adds the transfer syntax.  (``pylibjpeg-libjpeg`` would also work but is GPL,
  so fetalkit never suggests it.)

Example
-------
>>> clip = read_dicom("cine.dcm")                    # doctest: +SKIP
>>> clip.frames.shape, clip.fps, clip.pixel_mm       # doctest: +SKIP
((120, 600, 800), 30.0, (0.21, 0.21))
>>> write_dicom("masked.dcm", masked, template=clip.dataset)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, get_decoder, pixel_array
from pydicom.pixels.utils import get_expected_length
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    HTJ2K,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from fetalkit.io.images import atomic_writer
from fetalkit.io.inputs import check_pixels, os_error, printable
from fetalkit.errors import InputError

__all__ = [
    "DicomFrames",
    "read_dicom",
    "write_dicom",
    "open_dataset",
    "save_dataset",
    "pixel_mm_from_dataset",
    "fps_from_dataset",
]

# PhysicalUnitsX/YDirection code for centimetres (PS3.3 C.8.5.5.1.15).
_UNITS_CM = 3
# RegionSpatialFormat code of a 2D (B-mode) region (PS3.3 C.8.5.5.1.1).
_SPATIAL_2D = 1

# Which installable package adds a decoder for a transfer syntax pydicom knows
# but cannot decode here.  Permissive licences only.
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.57": "python-gdcm",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "python-gdcm",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",
}

# Attributes that describe the old pixel data; a written file gets fresh ones.
_PIXEL_KEYWORDS = (
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths", "PixelDataProviderURL", "SamplesPerPixel",
    "PhotometricInterpretation", "PlanarConfiguration", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "NumberOfFrames", "FrameIncrementPointer",
    "SmallestImagePixelValue", "LargestImagePixelValue", "PixelPaddingValue",
    "PixelPaddingRangeLimit", "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation",
    "VOILUTFunction", "VOILUTSequence", "ModalityLUTSequence", "RescaleIntercept",
    "RescaleSlope", "RescaleType", "ICCProfile", "ColorSpace",
    # A palette image is written as RGB: its lookup tables would describe pixels no longer stored.
    *(f"{prefix}{c}PaletteColorLookupTable{part}" for c in ("Red", "Green", "Blue", "Alpha")
      for prefix, part in (("", "Descriptor"), ("", "Data"), ("Segmented", "Data"))),
    *(f"Large{c}PaletteColorLookupTableData" for c in ("Red", "Green", "Blue")),
    "PaletteColorLookupTableUID", "LargePaletteColorLookupTableUID", "PixelPresentation",
    # A thumbnail of the old pixels could still show burned-in text.
    "IconImageSequence",
    # Cine timing is rewritten from ``fps``.
    "FrameTime", "FrameTimeVector", "CineRate", "RecommendedDisplayFrameRate",
    "ActualFrameDuration", "StartTrim", "StopTrim", "PreferredPlaybackSequencing", "FrameDelay",
)
_PIXEL_TAGS = frozenset(Tag(k) for k in _PIXEL_KEYWORDS)

# Type 2 attributes of the US Image IODs: must be present, may be empty.
_TYPE2_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber", "SeriesNumber", "Manufacturer",
    "InstanceNumber", "PatientOrientation",
)
# Lossy transfer syntaxes -> Lossy Image Compression Method (PS3.3 C.7.6.1.1.5.1): a file decoded
# from one stays flagged lossy when fetalkit writes it uncompressed.
_LOSSY_METHODS = {
    JPEGBaseline8Bit: "ISO_10918_1", JPEGExtended12Bit: "ISO_10918_1", JPEG2000: "ISO_15444_1",
    JPEGLSNearLossless: "ISO_14495_1", HTJ2K: "ISO_15444_15",
}
# Photometric interpretations whose chroma was subsampled: already lossy, whatever the transfer syntax.
_SUBSAMPLED = ("YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420")
# Where these say which body part was imaged, Laterality (2C) is theirs to decide.
_ANATOMY_KEYWORDS = ("Laterality", "ImageLaterality", "BodyPartExamined", "AnatomicRegionSequence")


@dataclass
class DicomFrames:
    """Frames and metadata read from one DICOM file.

    Attributes
    ----------
    frames : np.ndarray
        N x H x W uint8 grayscale (N = 1 for a single-frame image); N x H x W x 3
        BGR uint8 when a colour file was read with ``colour=True``.
    pixel_mm : tuple of float or None
        ``(x_mm, y_mm)``: width and height of one pixel in mm, from the Sequence
        of Ultrasound Regions (or Pixel Spacing); None when the file does not say.
    fps : float or None
        Frame rate of a cine clip; None when the file does not say.
    dataset : pydicom.Dataset
        Every attribute of the file except the pixel data: use it as the
        ``template`` of ``write_dicom`` to write results back into the study.
    source : Path
        The file read.
    """

    frames: np.ndarray
    pixel_mm: tuple[float, float] | None
    fps: float | None
    dataset: Dataset
    source: Path


# --------------------------------------------------------------------------- reading


def open_dataset(path: str | os.PathLike) -> Dataset:
    """Parse a DICOM file (pixel data included, not decoded).

    Parameters
    ----------
    path : str or PathLike
        A DICOM Part 10 file, or a bare dataset written without the 128-byte
        preamble (older exports).

    Returns
    -------
    pydicom.Dataset
        With ``file_meta.TransferSyntaxUID`` always set.

    Raises
    ------
    InputError
        Missing file, not DICOM, or a header that cannot be parsed.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{printable(p)}: file not found")
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise os_error(p, e) from None
    has_marker = head[128:132] == b"DICM"
    # Files without the Part 10 preamble start with a group-0002 or -0008 tag;
    # anything else (a PNG renamed .dcm, a zip) is refused before pydicom guesses at it.
    if not has_marker and head[:2] not in (b"\x02\x00", b"\x08\x00"):
        raise InputError(f"{printable(p)}: not a DICOM file (no 'DICM' marker); "
                         "export it from the scanner/PACS as DICOM, or read it as an image")
    try:
        ds = pydicom.dcmread(p, force=not has_marker)
    except Exception as e:  # pydicom raises many types on corrupt input
        raise InputError(f"{printable(p)}: cannot parse the DICOM header ({e}); "
                         "the file is corrupt or truncated, copy or export it again") from e
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        # Bare datasets: the encoding pydicom detected is the transfer syntax.
        implicit = getattr(ds, "original_encoding", (True, True))[0]
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def read_dicom(path: str | os.PathLike, colour: bool = False) -> DicomFrames:
    """Read a DICOM image or cine clip as N x H x W uint8 grayscale frames (or colour ones).

    Conversions, so every caller gets the same frames:

    * colour (RGB, YBR_FULL, YBR_FULL_422, YBR_RCT/ICT, PALETTE COLOR) -> RGB (YBR by
      pydicom, a palette through its lookup table), then with ``colour=True``
      N x H x W x 3 BGR (OpenCV's order, as ``io.images`` and ``io.video``), else
      gray with ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B), as ``io.images.read_gray``;
    * MONOCHROME1 is inverted, so that bright always means echogenic;
    * more than 8 bits (or signed) -> uint8 by the file's first VOI window
      (Window Center/Width, after Rescale Slope/Intercept) when it has one,
      otherwise linearly from the clip's min..max (one range for all frames, so
      cine brightness does not flicker).

    Parameters
    ----------
    path : str or PathLike
        Single- or multi-frame DICOM, uncompressed, RLE, JPEG Baseline/Extended
        or JPEG 2000 (JPEG-LS and JPEG Lossless when their decoders are installed).
    colour : bool
        Keep the colour of a colour file (outputs written in the source's colour);
        grey files give N x H x W either way.  Models take the grey frames.

    Returns
    -------
    DicomFrames

    Raises
    ------
    InputError
        Naming the file: not DICOM, no pixel data, a transfer syntax without an
        installed decoder (and the package that adds it), truncated pixel data.
    """
    p = Path(path)
    ds = open_dataset(p)
    if "PixelData" not in ds:
        # pydicom stops quietly at the end of a cut file: tell truncation from a non-image object.
        sop_class = UID(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or "")
        if len(ds) == 0 or "Rows" in ds or "Image Storage" in sop_class.name:
            raise InputError(f"{printable(p)}: DICOM file ends before its pixel data; "
                             "it was probably cut short, copy or export it again")
        raise InputError(f"{printable(p)}: DICOM file has no pixel data (a report or presentation state?); "
                         "pass an ultrasound image or cine DICOM")
    _check_declared_size(p, ds)
    raw = _decode_pixels(p, ds)
    frames = _to_uint8_frames(p, ds, raw, colour)
    del ds.PixelData  # the caller has the frames; keep the header light
    return DicomFrames(frames=frames, pixel_mm=pixel_mm_from_dataset(ds), fps=fps_from_dataset(ds),
                       dataset=ds, source=p)


def _header_int(p: Path, ds: Dataset, keyword: str, default: int | None = None) -> int:
    """An integer attribute of the image header; InputError naming the file when missing or not a number."""
    value = ds.get(keyword, default)
    if value is None:
        raise InputError(f"{printable(p)}: the image header has no {keyword}; the file is damaged, export it again")
    try:
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        raise InputError(f"{printable(p)}: {keyword} is {value!r}, not a number; the header is damaged, "
                         "export the file again") from None


def _check_declared_size(p: Path, ds: Dataset) -> None:
    """Refuse a header that declares more pixels than fetalkit decodes, before any frame is decoded.

    Rows x Columns x NumberOfFrames x SamplesPerPixel x bytes per sample is what
    pydicom would allocate; a small file can declare gigabytes (compressed or forged).
    """
    rows, columns = _header_int(p, ds, "Rows"), _header_int(p, ds, "Columns")
    frames = _header_int(p, ds, "NumberOfFrames", 1)
    samples = _header_int(p, ds, "SamplesPerPixel", 1)
    bytes_per_sample = (_header_int(p, ds, "BitsAllocated", 8) + 7) // 8
    check_pixels(p, rows, columns, frames, max(samples, 1) * max(bytes_per_sample, 1))


def _check_decodable(p: Path, ts: UID) -> None:
    """Refuse a transfer syntax pydicom cannot decode here, naming what would add it."""
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise InputError(f"{printable(p)}: transfer syntax '{ts.name}' ({ts}) is not supported (no Python decoder "
                         "exists, e.g. MPEG/HEVC video); export the clip uncompressed or as JPEG DICOM") from None
    if not decoder.is_available:
        package = _DECODER_PACKAGES.get(str(ts), "python-gdcm")
        raise InputError(f"{printable(p)}: transfer syntax '{ts.name}' ({ts}) needs a decoder that is not installed; "
                         f"`pip install {package}` adds it, or export the images uncompressed")


def _decode_pixels(p: Path, ds: Dataset) -> np.ndarray:
    """Decode all frames (colour as RGB) with a user error for every failure."""
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if not ts.is_transfer_syntax:
        raise InputError(f"{printable(p)}: unknown transfer syntax {ts}; re-export the file as standard DICOM")
    _check_decodable(p, ts)
    try:
        if not ts.is_encapsulated:
            expected = get_expected_length(ds, "bytes")
            if len(ds.PixelData) < expected:
                raise InputError(f"{printable(p)}: pixel data is truncated ({len(ds.PixelData)} of {expected} bytes); "
                                 "the file was cut short, copy or export it again")
        # Frames are decoded here once; the Dataset.pixel_array cache would keep a second copy.
        return pixel_array(ds)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{printable(p)}: cannot decode the pixel data ({ts.name}): {e}; "
                         "the file may be truncated or corrupt") from e


def _to_uint8_frames(p: Path, ds: Dataset, arr: np.ndarray, colour: bool = False) -> np.ndarray:
    """Decoded pixels -> N x H x W uint8 gray, or N x H x W x 3 BGR (``colour``, colour files)."""
    n_frames = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if n_frames == 1:
        arr = arr[None]  # pydicom drops the frame axis of single-frame images
    if photometric == "PALETTE COLOR":
        arr = _palette_to_rgb(p, ds, arr)
        samples = 3
    if arr.dtype != np.uint8:
        arr = _scale_to_uint8(ds, arr)
    if samples == 3 and colour and arr.ndim == 4 and arr.shape[-1] == 3:
        return np.ascontiguousarray(arr[..., ::-1])  # pydicom has already turned YBR into RGB
    if samples == 3:
        # pydicom has already turned YBR into RGB; BT.601 luma as io.images.read_gray.
        arr = np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in arr])
    if arr.ndim != 3:
        raise InputError(f"{printable(p)}: unexpected pixel layout {arr.shape} "
                         f"(SamplesPerPixel={samples}, NumberOfFrames={n_frames}); the header is inconsistent")
    if photometric == "MONOCHROME1":
        arr = 255 - arr
    return np.ascontiguousarray(arr)


def _palette_to_rgb(p: Path, ds: Dataset, arr: np.ndarray) -> np.ndarray:
    try:
        rgb = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    except Exception as e:
        raise InputError(f"{printable(p)}: cannot apply the palette colour lookup table ({e})") from e
    if bits > 8:
        rgb = np.round(rgb.astype(np.float32) * (255.0 / (2**bits - 1))).astype(np.uint8)
    return rgb


def _scale_to_uint8(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """>8-bit or signed pixels -> uint8 by the VOI window, else by the clip's min..max."""
    values = arr.astype(np.float32)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None or intercept is not None:
        values = values * float(slope if slope is not None else 1) + float(intercept or 0)
    window = _first_window(ds)
    if window is not None:
        center, width = window
        lo, hi = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2  # PS3.3 C.11.2.1.2.1
    else:
        lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) * (255.0 / max(hi - lo, 1e-6))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _first_window(ds: Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    center = center[0] if isinstance(center, (list, MultiValue)) else center
    width = width[0] if isinstance(width, (list, MultiValue)) else width
    if float(width) < 1:
        return None
    return float(center), float(width)


def pixel_mm_from_dataset(ds: Dataset) -> tuple[float, float] | None:
    """Physical pixel size ``(x_mm, y_mm)`` of an ultrasound image, or None.

    Taken from the Sequence of Ultrasound Regions (0018,6011): the first region
    whose PhysicalUnitsX/YDirection are both cm (code 3), preferring a 2D
    (B-mode) region; PhysicalDeltaX/Y are cm per pixel and are returned in mm.
    M-mode/Doppler regions (seconds, cm/s on an axis) are skipped.  Falls back
    to Pixel Spacing (0028,0030), which is stored as (row, column) spacing in mm.

    Parameters
    ----------
    ds : pydicom.Dataset

    Returns
    -------
    tuple of float or None
    """
    fallback = None
    for region in ds.get("SequenceOfUltrasoundRegions") or []:
        if region.get("PhysicalUnitsXDirection") != _UNITS_CM or region.get("PhysicalUnitsYDirection") != _UNITS_CM:
            continue
        dx, dy = region.get("PhysicalDeltaX"), region.get("PhysicalDeltaY")
        if not dx or not dy:
            continue
        size_mm = (abs(float(dx)) * 10.0, abs(float(dy)) * 10.0)
        if region.get("RegionSpatialFormat") == _SPATIAL_2D:
            return size_mm
        fallback = fallback or size_mm
    if fallback:
        return fallback
    spacing = ds.get("PixelSpacing")
    if spacing is not None and len(spacing) == 2 and float(spacing[0]) > 0 and float(spacing[1]) > 0:
        return float(spacing[1]), float(spacing[0])
    return None


def fps_from_dataset(ds: Dataset) -> float | None:
    """Frame rate of a cine clip, or None.

    From Frame Time (0018,1063, ms per frame), else the mean of Frame Time
    Vector (0018,1065), else Cine Rate (0018,0040), else Recommended Display
    Frame Rate (0008,2144).
    """
    frame_time_ms = _positive(ds.get("FrameTime"))
    if frame_time_ms:
        return 1000.0 / frame_time_ms
    vector = ds.get("FrameTimeVector")
    if vector is not None and len(vector) > 1:
        # The first entry is 0 (time from the first frame to itself).
        step_ms = float(np.mean([float(v) for v in list(vector)[1:]]))
        if step_ms > 0:
            return 1000.0 / step_ms
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _positive(ds.get(keyword))
        if rate:
            return rate
    return None


def _positive(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


# --------------------------------------------------------------------------- writing


def write_dicom(
    path: str | os.PathLike,
    frames: np.ndarray,
    template: Dataset | None = None,
    *,
    fps: float | None = None,
    pixel_mm: float | tuple[float, float] | None = None,
    burned_in_annotation: str | None = None,
    sop_instance_uid: str | None = None,
    new_series: bool = False,
) -> Path:
    """Write frames as a DICOM Ultrasound Image (1 frame) or Ultrasound Multi-frame Image.

    The file is Explicit VR Little Endian (uncompressed: never a second lossy
    encode), 8 bits, MONOCHROME2 for grey frames and RGB (Planar Configuration 0)
    for colour ones, with a Part 10 preamble and file meta, written atomically
    (temp file + rename).  A template that was lossy (a lossy transfer syntax,
    chroma-subsampled YBR, or Lossy Image Compression 01) keeps Lossy Image
    Compression 01 with its ratio and method, as PS3.3 C.7.6.1.1.5 requires.
    With a ``template`` (e.g. ``read_dicom(...).dataset``) every non-pixel
    attribute is kept (patient, study, series, equipment, ultrasound regions)
    so that the written image joins the template's study and series; attributes
    that described the old pixels (LUTs, windows, overlays, icon, old cine timing)
    are dropped and rewritten.  Image Type value 1 becomes DERIVED.

    Parameters
    ----------
    path : str or PathLike
        Output file; its folder is created.
    frames : np.ndarray
        N x H x W (or H x W) uint8 grayscale, or N x H x W x 3 uint8 BGR (a single
        colour frame as ``frame[None]``), as ``read_dicom(..., colour=True)`` gives.
    template : pydicom.Dataset, optional
        Dataset to copy the context from; it is not modified.
    fps : float, optional
        Frame rate written as Frame Time / Cine Rate.  Defaults to the
        template's; required for more than one frame.
    pixel_mm : float or (x_mm, y_mm), optional
        Pixel size.  When given, the ultrasound regions become one full-image 2D
        region with this size (and Pixel Spacing, if present, is updated).  When
        None the template's regions are kept if the image size is unchanged,
        and dropped otherwise (their coordinates would be wrong).
    burned_in_annotation : {"NO", "YES"} or None
        Burned In Annotation (0028,0301): whether the written pixels show
        identifying text.  "NO" is a claim only a caller that removed the text
        makes; None (default) keeps the template's YES or NO and writes YES when
        it says nothing (masking, say, hides regions, not the burned-in text).
    sop_instance_uid : str, optional
        SOP Instance UID to write; a new one is generated by default.
    new_series : bool
        Give the image a new Series Instance UID instead of the template's.

    Returns
    -------
    Path
        ``path``.
    """
    p = Path(path)
    stack = _as_frame_stack(frames)
    n_frames, height, width = stack.shape[:3]
    if fps is None and template is not None:
        fps = fps_from_dataset(template)
    if n_frames > 1 and not fps:
        raise ValueError(f"{p}: fps is needed to write a {n_frames}-frame cine DICOM; pass fps=")
    ds = _context_from(template)
    _set_identity(ds, n_frames, sop_instance_uid, new_series)
    _set_image_pixel(ds, stack, template)
    if n_frames > 1:
        _set_cine(ds, float(fps))
    _set_regions(ds, template, height, width, pixel_mm)
    ds.BurnedInAnnotation = _burned_in(burned_in_annotation, template)
    ds.file_meta = _file_meta(ds, ExplicitVRLittleEndian)
    return _atomic_dcmwrite(p, ds)


def save_dataset(path: str | os.PathLike, ds: Dataset) -> Path:
    """Write a complete dataset (pixel data as it is) atomically as a DICOM Part 10 file.

    The file meta is rebuilt from the dataset's SOP Class/Instance UIDs and the
    transfer syntax in ``ds.file_meta`` (default Explicit VR Little Endian), so
    that nothing from a source file's meta (AE titles, old UIDs) is carried over.
    """
    old_meta = getattr(ds, "file_meta", None)
    ts = (old_meta or {}).get("TransferSyntaxUID") or ExplicitVRLittleEndian
    ds.file_meta = _file_meta(ds, UID(ts))
    return _atomic_dcmwrite(Path(path), ds)


def _as_frame_stack(frames: np.ndarray) -> np.ndarray:
    stack = np.asarray(frames)
    if stack.ndim == 2:
        stack = stack[None]
    colour = stack.ndim == 4 and stack.shape[3] == 3
    if not (stack.ndim == 3 or colour) or stack.dtype != np.uint8 or 0 in stack.shape:
        raise ValueError(f"frames must be N x H x W (or H x W) grey or N x H x W x 3 BGR uint8, "
                         f"got {stack.shape} {stack.dtype}")
    return np.ascontiguousarray(stack)


def _burned_in(value: str | None, template: Dataset | None) -> str:
    """The Burned In Annotation to write: the caller's claim, else the template's, else YES."""
    if value is None:
        stated = str((template or {}).get("BurnedInAnnotation") or "").strip().upper()
        return stated if stated in ("YES", "NO") else "YES"  # no one checked these pixels for text
    text = value.strip().upper()
    if text not in ("YES", "NO"):
        raise ValueError(f"burned_in_annotation must be 'YES', 'NO' or None, got {value!r}")
    return text


def _context_from(template: Dataset | None) -> Dataset:
    """A new dataset with the template's non-pixel attributes (deep copies)."""
    ds = Dataset()
    if template is not None:
        for elem in template:
            group = elem.tag.group
            # Curves (50xx) and overlays (60xx) were drawn for the old pixels.
            if elem.tag in _PIXEL_TAGS or 0x5000 <= group <= 0x60FF and group & 0xFF00 in (0x5000, 0x6000):
                continue
            ds.add(copy.deepcopy(elem))
    for keyword in _TYPE2_KEYWORDS:
        if keyword not in ds:
            setattr(ds, keyword, None)
    if not any(keyword in ds for keyword in _ANATOMY_KEYWORDS):
        ds.Laterality = None  # body part unknown: present and empty, as PS3.3 allows
    if "FrameOfReferenceUID" in ds and "PositionReferenceIndicator" not in ds:
        ds.PositionReferenceIndicator = None  # type 2 in the Frame of Reference module
    return ds


def _set_identity(ds: Dataset, n_frames: int, sop_instance_uid: str | None, new_series: bool) -> None:
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage if n_frames > 1 else UltrasoundImageStorage
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    if not ds.get("StudyInstanceUID"):
        ds.StudyInstanceUID = generate_uid()
    if new_series or not ds.get("SeriesInstanceUID"):
        ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "US"
    image_type = list(ds.get("ImageType") or ["DERIVED", "PRIMARY"])
    image_type[0] = "DERIVED"  # these pixels were produced by software, not the scanner
    ds.ImageType = image_type


def _set_image_pixel(ds: Dataset, stack: np.ndarray, template: Dataset | None) -> None:
    n_frames, height, width = stack.shape[:3]
    colour = stack.ndim == 4
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0  # R, G, B of each pixel together
    ds.Rows, ds.Columns = height, width
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    if n_frames > 1:
        ds.NumberOfFrames = n_frames
    if template is not None:
        _keep_lossy_flag(ds, template)
    data = (stack[..., ::-1] if colour else stack).tobytes()  # BGR (OpenCV) -> RGB (DICOM)
    if len(data) % 2:
        data += b"\x00"  # DICOM values have even length
    ds.add_new(0x7FE00010, "OB", data)


def _keep_lossy_flag(ds: Dataset, template: Dataset) -> None:
    """Once lossy, always flagged lossy (PS3.3 C.7.6.1.1.5), even when stored uncompressed.

    ``ds`` already holds the template's ratio and method (context attributes); the
    method of the template's transfer syntax is added when it names none.
    """
    ts = str(getattr(template, "file_meta", {}).get("TransferSyntaxUID") or "")
    method = _LOSSY_METHODS.get(ts)
    subsampled = str(template.get("PhotometricInterpretation", "")).strip().upper() in _SUBSAMPLED
    if method is None and not subsampled and template.get("LossyImageCompression") != "01":
        return
    ds.LossyImageCompression = "01"
    if method is not None and not ds.get("LossyImageCompressionMethod"):
        ds.LossyImageCompressionMethod = method


def _set_cine(ds: Dataset, fps: float) -> None:
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    ds.FrameTime = f"{1000.0 / fps:.10g}"  # DS: at most 16 characters
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.CineRate = max(1, round(fps))
    ds.RecommendedDisplayFrameRate = max(1, round(fps))


def _set_regions(ds: Dataset, template: Dataset | None, height: int, width: int,
                 pixel_mm: float | tuple[float, float] | None) -> None:
    same_size = template is not None and (template.get("Rows"), template.get("Columns")) == (height, width)
    if pixel_mm is None:
        if not same_size:
            for keyword in ("SequenceOfUltrasoundRegions", "PixelSpacing"):
                ds.pop(keyword, None)
        return
    x_mm, y_mm = (float(pixel_mm), float(pixel_mm)) if np.isscalar(pixel_mm) else map(float, pixel_mm)
    if not (x_mm > 0 and y_mm > 0):
        raise ValueError(f"pixel_mm must be positive, got {pixel_mm}")
    region = Dataset()
    region.RegionSpatialFormat = _SPATIAL_2D
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = width - 1, height - 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = _UNITS_CM
    region.PhysicalDeltaX, region.PhysicalDeltaY = x_mm / 10.0, y_mm / 10.0
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    if "PixelSpacing" in ds:
        ds.PixelSpacing = [f"{y_mm:.10g}", f"{x_mm:.10g}"]  # (row, column) order


def _file_meta(ds: Dataset, transfer_syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "FETALKIT"
    return meta


def _atomic_dcmwrite(p: Path, ds: Dataset) -> Path:
    """dcmwrite through :func:`atomic_writer`: no half-written DICOM is ever visible."""
    with atomic_writer(p) as f:
        pydicom.dcmwrite(f, ds, enforce_file_format=True)
    return p
