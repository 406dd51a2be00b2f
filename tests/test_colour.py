"""Colour kept end to end: frames keep their colour, models see grey, outputs keep the source's colour.

The real files are the ultrasound DICOMs inside pydicom's wheel: a Philips OB exam
(PALETTE COLOR), a GE power-Doppler lymph node (RGB, and JPEG 2000 YBR_RCT), a
SonoSite cardiac cine (YBR_FULL_422 JPEG, 30 frames).  Targets of the issue, outside
the redacted pixels: chroma (max - min over channels) at least 0.8 of the source's,
mean absolute change at most 6 grey levels (``benchmarks/measure_colour.py`` prints them).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

from fetalkit.io.dicom import read_dicom, write_dicom
from fetalkit.io.images import read_colour, read_gray, write_image
from fetalkit.io.video import open_source, to_gray
from fetalkit.masking.pipeline import MaskConfig, Masker, run_stream
from fetalkit.masking.render import blank_frame, render_masks
from fetalkit.preprocess.jobs import clean_files, clean_frame, deidentify_path
from fetalkit.types import ImageDetections

EXAMPLES = {  # file -> the photometric interpretation it is stored in
    "examples_palette.dcm": "PALETTE COLOR",
    "examples_rgb_color.dcm": "RGB",
    "examples_ybr_color.dcm": "YBR_FULL_422",
    "examples_jpeg2k.dcm": "YBR_RCT",
}
MIN_CHROMA_RATIO, MAX_MEAN_CHANGE = 0.8, 6.0


def example(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not in this pydicom")
    return Path(path)


def chroma(frames: np.ndarray) -> np.ndarray:
    return frames.max(axis=-1).astype(np.int64) - frames.min(axis=-1)


def outside_redaction(src: np.ndarray, out: np.ndarray, redacted: np.ndarray) -> tuple[float | None, float]:
    """(chroma ratio, mean |change|) over the pixels not redacted; ratio None when they hold no colour."""
    assert out.shape == src.shape, "the output must keep the source's size, frames and colour"
    keep = ~redacted
    c_src = chroma(src)[keep].sum()
    ratio = chroma(out)[keep].sum() / c_src if c_src else None
    return ratio, float(np.abs(out.astype(np.int16) - src)[keep].mean())


def header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def same_geometry(a: Dataset, b: Dataset) -> bool:
    return (a.Rows, a.Columns, int(a.get("NumberOfFrames", 1))) == (b.Rows, b.Columns, int(b.get("NumberOfFrames", 1)))


class ScriptedDetector:
    """One fixed box on every frame; records what it was given (the models' input)."""

    classes = ["pubic_symphysis", "fetal_head"]

    def __init__(self, box=(20, 30, 60, 70)):
        self.box, self.seen = box, []

    def detect(self, gray, conf=None, iou=None):
        self.seen.append(gray.copy())
        return ImageDetections(np.array([self.box], np.float32), np.array([0.9], np.float32), np.array([0]))


def bundled_masker() -> Masker:
    """``fetalkit mask``'s defaults: the bundled detector, MaskConfig()."""
    from fetalkit.runtime.detector import OnnxDetector
    from fetalkit.runtime.registry import resolve_model
    return Masker(OnnxDetector(resolve_model(None, "detector"), threads=1), MaskConfig())


# --------------------------------------------------------------------------- the four pydicom examples


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_deid_keeps_the_colour_of_real_ultrasound_dicoms(name, tmp_path):
    src = example(name)
    source = header(src)
    assert source.PhotometricInterpretation == EXAMPLES[name]
    report = deidentify_path(src, tmp_path / "anon.dcm")                 # `fetalkit deid`, default cleaning
    out = header(tmp_path / "anon.dcm")
    assert out.PhotometricInterpretation == "RGB" and out.SamplesPerPixel == 3 and out.PlanarConfiguration == 0
    assert same_geometry(out, source)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian     # decoded, written losslessly
    # the SonoSite cine keeps its grey footer buttons ("Page 1/3"): the audit reads them, so no claim of NO
    expected = "YES" if name == "examples_ybr_color.dcm" else "NO"
    assert report["burned_in_annotation"] == expected == out.BurnedInAnnotation
    assert "RedPaletteColorLookupTableData" not in out
    frames = read_dicom(src, colour=True).frames
    removed = np.stack([clean_frame(f)[0].overlay_mask > 0 for f in frames])  # what the cleaning replaced
    ratio, change = outside_redaction(frames, read_dicom(tmp_path / "anon.dcm", colour=True).frames, removed)
    assert ratio >= MIN_CHROMA_RATIO and change <= MAX_MEAN_CHANGE, (ratio, change)


def test_deid_of_a_lossy_source_stays_flagged_lossy(tmp_path):
    src = example("examples_ybr_color.dcm")                              # JPEG baseline, ratio 19
    deidentify_path(src, tmp_path / "anon.dcm")
    out = header(tmp_path / "anon.dcm")
    assert out.LossyImageCompression == "01" and float(out.LossyImageCompressionRatio) == 19
    assert out.LossyImageCompressionMethod == "ISO_10918_1"
    deidentify_path(example("examples_jpeg2k.dcm"), tmp_path / "j2k.dcm")  # JPEG 2000 lossless: not lossy
    assert header(tmp_path / "j2k.dcm").LossyImageCompression == "00"


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_mask_keeps_the_colour_and_the_source_burned_in_flag(name, tmp_path):
    src = example(name)
    source = open_source(str(src))
    grey = read_dicom(src).frames
    masker = bundled_masker()
    seen, prepare = [], masker.prepare

    def spy(frame):
        pre = prepare(frame)
        seen.append(pre.gray)
        return pre

    masker.prepare = spy
    report = run_stream(source, tmp_path / "masked.dcm", masker, tmp_path / "log.jsonl")   # as `fetalkit mask`
    assert report.error is None and report.frames == len(grey)
    assert np.array_equal(np.stack(seen), grey)                          # the detector saw the grey frames
    out = header(tmp_path / "masked.dcm")
    assert out.PhotometricInterpretation == "RGB" and same_geometry(out, header(src))
    assert out.BurnedInAnnotation == "YES"                               # masking hides regions, not the text
    frames = read_dicom(src, colour=True).frames
    boxes = np.zeros(frames.shape[:3], bool)
    for record in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()):
        for x, y, w, h in record["masks"]:
            boxes[record["frame"], y:y + h, x:x + w] = True
    ratio, change = outside_redaction(frames, read_dicom(tmp_path / "masked.dcm", colour=True).frames, boxes)
    # the detector's box may cover every coloured pixel (a lymph node is not its domain): then nothing to keep
    assert (ratio is None or ratio >= MIN_CHROMA_RATIO) and change <= MAX_MEAN_CHANGE, (ratio, change)


def test_clean_frame_finds_in_colour_what_it_finds_in_grey():
    bgr = read_dicom(example("examples_rgb_color.dcm"), colour=True).frames[0]
    colour, kind = clean_frame(bgr)
    grey, _ = clean_frame(to_gray(bgr))
    assert kind == "found" and colour.image.shape == bgr.shape
    assert np.array_equal(colour.overlay_mask, grey.overlay_mask)       # Doppler flow is not taken for marks
    assert np.array_equal(colour.image[colour.overlay_mask == 0], bgr[colour.overlay_mask == 0])


# --------------------------------------------------------------------------- images and `fetalkit clean`


def test_clean_writes_a_colour_png_for_a_colour_input(tmp_path):
    bgr = read_dicom(example("examples_jpeg2k.dcm"), colour=True).frames[0]
    write_image(tmp_path / "scan.png", bgr)
    rows = clean_files([tmp_path / "scan.png"], tmp_path / "out")
    assert rows[0]["error"] in ("", None) and int(rows[0]["overlay_px"]) > 0
    cleaned = read_colour(tmp_path / "out" / "scan.png")
    assert cleaned.shape == bgr.shape
    removed = read_gray(tmp_path / "out" / "scan_removed.png") > 0
    ratio, change = outside_redaction(bgr[None], cleaned[None], removed[None])
    assert ratio >= MIN_CHROMA_RATIO and change <= MAX_MEAN_CHANGE, (ratio, change)
    assert np.array_equal(removed, clean_frame(to_gray(bgr))[0].overlay_mask > 0)


def test_deid_of_a_colour_image_keeps_its_colour(tmp_path):
    bgr = read_dicom(example("examples_rgb_color.dcm"), colour=True).frames[0]
    write_image(tmp_path / "scan.png", bgr)
    report = deidentify_path(tmp_path / "scan.png", tmp_path / "anon.png")
    anon = read_colour(tmp_path / "anon.png")
    removed = clean_frame(bgr)[0].overlay_mask > 0
    ratio, change = outside_redaction(bgr[None], anon[None], removed[None])
    assert report["overlay_px_removed"] == int(removed.sum()) > 0
    assert ratio >= MIN_CHROMA_RATIO and change <= MAX_MEAN_CHANGE, (ratio, change)


def test_text_on_a_coloured_bar_takes_the_bar_colour(tmp_path):
    """A glyph replaced by a grey level would still show on a blue header bar: the fill is in colour."""
    frame = read_dicom(example("examples_palette.dcm"), colour=True).frames[0]
    result, _ = clean_frame(frame)
    bar = result.overlay_mask[:55].astype(bool)                          # the Philips header's text
    assert bar.sum() > 500
    blue = np.median(frame[:55][~bar], axis=0)
    assert np.abs(result.image[:55][bar].astype(int) - blue).max(axis=1).mean() < 12


# --------------------------------------------------------------------------- DICOM in/out


def _colour_dataset(rgb: np.ndarray) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "US", *rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    return ds


def test_read_dicom_colour_gives_bgr_and_grey_stays_the_default(tmp_path):
    rgb = np.zeros((40, 48, 3), np.uint8)
    rgb[:, :16], rgb[:, 16:32], rgb[:, 32:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    path = tmp_path / "rgb.dcm"
    pydicom.dcmwrite(path, _colour_dataset(rgb), enforce_file_format=True)
    colour = read_dicom(path, colour=True).frames
    assert colour.shape == (1, 40, 48, 3) and colour[0, 0, 0].tolist() == [0, 0, 255]   # red, in BGR
    grey = read_dicom(path).frames
    assert grey.shape == (1, 40, 48) and np.array_equal(grey[0], to_gray(colour[0]))    # BT.601, as before


def test_write_dicom_colour_round_trip_is_lossless_rgb(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (3, 33, 47, 3), np.uint8)      # odd byte count
    out = write_dicom(tmp_path / "c.dcm", frames, fps=10.0)
    ds = pydicom.dcmread(out)
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration) == ("RGB", 3, 0)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and ds.BurnedInAnnotation == "YES"
    assert np.array_equal(ds.pixel_array, frames[..., ::-1])            # stored as RGB
    assert np.array_equal(read_dicom(out, colour=True).frames, frames)
    with pytest.raises(ValueError, match="N x H x W x 3"):
        write_dicom(tmp_path / "bad.dcm", np.zeros((2, 8, 8, 4), np.uint8), fps=10.0)


def test_mask_sink_keeps_colour_and_the_source_flag(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (96, 128, 3), np.uint8)
    for stated, written in (("NO", "NO"), ("YES", "YES"), (None, "YES")):
        ds = _colour_dataset(rgb)
        if stated:
            ds.BurnedInAnnotation = stated
        src = tmp_path / f"src_{stated}.dcm"
        pydicom.dcmwrite(src, ds, enforce_file_format=True)
        det = ScriptedDetector()
        masker = Masker(det, MaskConfig(rule="none", margin=0, roi="full"))
        run_stream(open_source(str(src)), tmp_path / f"out_{stated}.dcm", masker)
        out = read_dicom(tmp_path / f"out_{stated}.dcm", colour=True)
        assert out.dataset.BurnedInAnnotation == written, stated
        assert det.seen[0].ndim == 2                                     # the model saw grey
        expected = rgb[..., ::-1].copy()
        expected[30:70, 20:60] = 0
        assert np.array_equal(out.frames[0], expected)                  # only the box changed


# --------------------------------------------------------------------------- render


@pytest.mark.parametrize("style", ["fill", "blur", "pixelate"])
def test_render_hides_boxes_in_every_channel_and_leaves_the_rest(style):
    frame = np.random.default_rng(2).integers(0, 256, (64, 80, 3), np.uint8)
    out = render_masks(frame, np.array([[10, 12, 42, 40]], np.float32), style)
    inside = np.zeros(frame.shape[:2], bool)
    inside[12:40, 10:42] = True
    assert out.shape == frame.shape and np.array_equal(out[~inside], frame[~inside])
    assert not np.array_equal(out[inside], frame[inside])
    sector = np.zeros(frame.shape[:2], np.uint8)
    sector[20:50, 30:70] = 1
    blank = blank_frame(frame, sector)
    assert (blank[sector > 0] == 0).all() and np.array_equal(blank[sector == 0], frame[sector == 0])
