"""fetalkit.io.dicom: read/write round trips, compressed inputs, colour, calibration, errors.

Datasets are built here with plain pydicom (not with write_dicom) so that the
reader is tested against files it did not write.  The second-reader checks use
dcmtk (`dcmdump`, `dcm2pnm`) and dicom3tools (`dciodvfy`) when installed
(Debian: `apt-get install dcmtk dicom3tools`) and are skipped otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000Lossless,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MPEG4HP41,
    RLELossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from fetalkit.errors import InputError
from fetalkit.io import dicom as dicom_io
from fetalkit.io.dicom import read_dicom, write_dicom

RNG = np.random.default_rng(7)


def _frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    return RNG.integers(0, 256, (n, h, w), dtype=np.uint8)


def _dataset(h: int, w: int, *, n_frames: int = 1, samples: int = 1, photometric: str = "MONOCHROME2",
             bits: int = 8, ts=ExplicitVRLittleEndian) -> Dataset:
    """A minimal US image dataset whose pixel data the caller sets."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage if n_frames > 1 else UltrasoundImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = h, w
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    if n_frames > 1:
        ds.NumberOfFrames = n_frames
        ds.FrameTime = "40"
        ds.FrameIncrementPointer = 0x00181063
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- round trips


def test_single_frame_round_trip(tmp_path):
    frame = _frames(1)[0]
    out = write_dicom(tmp_path / "one.dcm", frame, pixel_mm=(0.2, 0.25))
    clip = read_dicom(out)
    assert clip.frames.shape == (1, 48, 64) and clip.frames.dtype == np.uint8
    assert np.array_equal(clip.frames[0], frame)
    assert clip.pixel_mm == pytest.approx((0.2, 0.25))
    assert clip.fps is None
    assert clip.dataset.SOPClassUID == UltrasoundImageStorage
    assert "PixelData" not in clip.dataset and "NumberOfFrames" not in clip.dataset
    assert clip.source == out


def test_multi_frame_round_trip(tmp_path):
    frames = _frames(5)
    out = write_dicom(tmp_path / "cine.dcm", frames, fps=30.0, pixel_mm=0.31)
    clip = read_dicom(out)
    assert np.array_equal(clip.frames, frames)
    assert clip.fps == pytest.approx(30.0, rel=1e-6)
    assert clip.pixel_mm == pytest.approx((0.31, 0.31))
    ds = clip.dataset
    assert ds.SOPClassUID == UltrasoundMultiFrameImageStorage
    assert int(ds.NumberOfFrames) == 5
    assert ds.FrameIncrementPointer == 0x00181063  # Frame Time
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 8


def test_template_context_is_kept_with_a_new_instance(tmp_path):
    template = _dataset(48, 64)
    template.PatientName, template.PatientID = "Test^Patient", "P-001"
    template.StudyInstanceUID, template.SeriesInstanceUID = generate_uid(), generate_uid()
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 63, 47
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX, region.PhysicalDeltaY = 0.015, 0.015
    template.SequenceOfUltrasoundRegions = Sequence([region])
    template.WindowCenter, template.WindowWidth = "100", "50"  # describes the old pixels
    template.add_new(0x60003000, "OB", b"\x00" * 384)  # an overlay drawn on the old pixels
    before = template.to_json()

    out = write_dicom(tmp_path / "masked.dcm", _frames(2), template=template, fps=20)
    ds = read_dicom(out).dataset
    assert template.to_json() == before, "the template must not be modified"
    assert (ds.PatientName, ds.PatientID) == ("Test^Patient", "P-001")
    assert ds.StudyInstanceUID == template.StudyInstanceUID
    assert ds.SeriesInstanceUID == template.SeriesInstanceUID
    assert ds.SOPInstanceUID != template.SOPInstanceUID
    assert read_dicom(out).pixel_mm == pytest.approx((0.15, 0.15))  # regions kept
    assert "WindowCenter" not in ds and 0x60003000 not in ds
    # no one checked these pixels for text: YES unless the caller (or the template) says NO
    assert ds.ImageType[0] == "DERIVED" and ds.BurnedInAnnotation == "YES"
    template.BurnedInAnnotation = "NO"
    kept = write_dicom(tmp_path / "kept.dcm", _frames(1)[0], template=template)
    assert read_dicom(kept).dataset.BurnedInAnnotation == "NO"
    cleaned = write_dicom(tmp_path / "claimed.dcm", _frames(1)[0], template=template, burned_in_annotation="NO")
    assert read_dicom(cleaned).dataset.BurnedInAnnotation == "NO"

    new_series = read_dicom(write_dicom(tmp_path / "b.dcm", _frames(1)[0], template=template, new_series=True))
    assert new_series.dataset.StudyInstanceUID == template.StudyInstanceUID
    assert new_series.dataset.SeriesInstanceUID != template.SeriesInstanceUID


def test_multi_frame_without_fps_is_refused(tmp_path):
    with pytest.raises(ValueError, match="fps"):
        write_dicom(tmp_path / "x.dcm", _frames(3))


# --------------------------------------------------------------------------- compressed inputs


def test_jpeg_baseline_multi_frame(tmp_path):
    frames = _frames(3)
    frames[:, 10:30, 10:40] = 200  # some structure so JPEG error stays small
    encoded = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1] for f in frames]
    ds = _dataset(48, 64, n_frames=3, ts=JPEGBaseline8Bit)
    ds.PixelData = encapsulate([e.tobytes() for e in encoded])
    ds["PixelData"].VR = "OB"
    clip = read_dicom(_save(ds, tmp_path / "jpeg.dcm"))
    expected = np.stack([cv2.imdecode(e, cv2.IMREAD_GRAYSCALE) for e in encoded])
    assert clip.frames.shape == (3, 48, 64)
    assert np.abs(clip.frames.astype(int) - expected).max() <= 1  # same JPEG, two decoders
    assert clip.fps == pytest.approx(25.0)


def test_jpeg_colour_ybr_to_gray(tmp_path):
    bgr = np.zeros((32, 48, 3), np.uint8)
    bgr[:, :16] = (0, 0, 255)  # red
    bgr[:, 16:32] = (0, 255, 0)  # green
    bgr[:, 32:] = (255, 0, 0)  # blue
    params = [cv2.IMWRITE_JPEG_QUALITY, 100,
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422]
    ds = _dataset(32, 48, samples=3, photometric="YBR_FULL_422", ts=JPEGBaseline8Bit)
    ds.PixelData = encapsulate([cv2.imencode(".jpg", bgr, params)[1].tobytes()])
    ds["PixelData"].VR = "OB"
    gray = read_dicom(_save(ds, tmp_path / "colour.dcm")).frames[0]
    # BT.601 luma of pure red/green/blue: 76, 150, 29 (JPEG chroma error: a few levels).
    for x, luma in ((8, 76), (24, 150), (40, 29)):
        assert abs(int(gray[16, x]) - luma) <= 3


def test_uncompressed_rgb_to_gray_is_bt601(tmp_path):
    rgb = np.zeros((2, 8, 9, 3), np.uint8)
    rgb[:, :, :3] = (255, 0, 0)
    rgb[:, :, 3:6] = (0, 255, 0)
    rgb[:, :, 6:] = (0, 0, 255)
    ds = _dataset(8, 9, n_frames=2, samples=3, photometric="RGB")
    ds.PixelData = rgb.tobytes()
    frames = read_dicom(_save(ds, tmp_path / "rgb.dcm")).frames
    assert frames.shape == (2, 8, 9)
    assert frames[0, 0, 0] == 76 and frames[0, 0, 4] == 150 and frames[0, 0, 7] == 29


def test_palette_colour_to_gray(tmp_path):
    ds = _dataset(1, 4, photometric="PALETTE COLOR")
    red_ramp, zero = np.arange(256, dtype=np.uint16) * 257, np.zeros(256, np.uint16)
    for colour, lut in (("Red", red_ramp), ("Green", zero), ("Blue", zero)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut.tobytes())
    ds.PixelData = np.array([[0, 100, 200, 255]], np.uint8).tobytes()
    # index i -> RGB (i, 0, 0) -> luma 0.299 i
    assert read_dicom(_save(ds, tmp_path / "palette.dcm")).frames[0].tolist() == [[0, 30, 60, 76]]


def test_dataset_without_preamble(tmp_path):
    ds = _dataset(4, 6)
    del ds.file_meta
    ds.PixelData = np.arange(24, dtype=np.uint8).tobytes()
    path = tmp_path / "bare.dcm"
    pydicom.dcmwrite(path, ds, implicit_vr=True)  # no preamble, no file meta
    assert path.read_bytes()[:2] == b"\x08\x00"
    assert read_dicom(path).frames.ravel().tolist() == list(range(24))


def test_rle_and_jpeg2000_and_implicit_vr(tmp_path):
    frames = _frames(2)
    rle = _dataset(48, 64, n_frames=2)
    rle.PixelData = frames.tobytes()
    rle.compress(RLELossless)  # pure-pydicom encoder
    assert np.array_equal(read_dicom(_save(rle, tmp_path / "rle.dcm")).frames, frames)

    # JPEG 2000 lossless codestream from OpenCV, decoded by Pillow.
    jp2 = cv2.imencode(".jp2", frames[0], [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, 1000])[1].tobytes()
    j2k = _dataset(48, 64, ts=JPEG2000Lossless)
    j2k.PixelData = encapsulate([jp2[jp2.find(b"\xff\x4f\xff\x51"):]])
    j2k["PixelData"].VR = "OB"
    assert np.array_equal(read_dicom(_save(j2k, tmp_path / "j2k.dcm")).frames[0], frames[0])

    implicit = _dataset(48, 64, ts=ImplicitVRLittleEndian)
    implicit.PixelData = frames[0].tobytes()
    path = tmp_path / "implicit.dcm"
    pydicom.dcmwrite(path, implicit, enforce_file_format=True, implicit_vr=True)
    assert np.array_equal(read_dicom(path).frames[0], frames[0])


def test_monochrome1_and_16_bit_window(tmp_path):
    ds = _dataset(2, 3, bits=12, photometric="MONOCHROME1")
    ds.WindowCenter, ds.WindowWidth = "1000", "2001"  # linear window 0..2000
    ds.PixelData = np.array([[0, 500, 1000], [1500, 2000, 4000]], np.uint16).tobytes()
    frame = read_dicom(_save(ds, tmp_path / "m1.dcm")).frames[0]
    # window: 0 -> 0, 1000 -> 127.6, 2000 -> 255, beyond clipped; then MONOCHROME1 inverted.
    assert frame.tolist() == [[255, 191, 127], [64, 0, 0]]

    ds = _dataset(1, 3, bits=16)
    ds.PixelData = np.array([[100, 300, 500]], np.uint16).tobytes()
    assert read_dicom(_save(ds, tmp_path / "minmax.dcm")).frames[0].tolist() == [[0, 128, 255]]


# --------------------------------------------------------------------------- calibration


def test_pixel_mm_from_ultrasound_regions_in_mm(tmp_path):
    ds = _dataset(48, 64)
    ds.PixelData = _frames(1).tobytes()
    m_mode, b_mode = Dataset(), Dataset()
    m_mode.RegionSpatialFormat, m_mode.PhysicalUnitsXDirection, m_mode.PhysicalUnitsYDirection = 3, 4, 3
    m_mode.PhysicalDeltaX, m_mode.PhysicalDeltaY = 0.004, 0.05  # seconds x cm: not a pixel size
    b_mode.RegionSpatialFormat, b_mode.PhysicalUnitsXDirection, b_mode.PhysicalUnitsYDirection = 1, 3, 3
    b_mode.PhysicalDeltaX, b_mode.PhysicalDeltaY = 0.021, 0.022  # cm per pixel
    ds.SequenceOfUltrasoundRegions = Sequence([m_mode, b_mode])
    ds.PixelSpacing = ["9", "9"]  # ignored: the regions win
    assert read_dicom(_save(ds, tmp_path / "regions.dcm")).pixel_mm == pytest.approx((0.21, 0.22))

    del ds.SequenceOfUltrasoundRegions
    ds.PixelSpacing = ["0.3", "0.2"]  # (row, column) mm
    assert read_dicom(_save(ds, tmp_path / "spacing.dcm")).pixel_mm == pytest.approx((0.2, 0.3))

    del ds.PixelSpacing
    assert read_dicom(_save(ds, tmp_path / "none.dcm")).pixel_mm is None


def test_fps_from_cine_rate_when_no_frame_time():
    ds = Dataset()
    ds.CineRate = 24
    assert dicom_io.fps_from_dataset(ds) == 24.0
    ds.FrameTimeVector = ["0", "50", "50"]
    assert dicom_io.fps_from_dataset(ds) == pytest.approx(20.0)


# --------------------------------------------------------------------------- errors


def test_png_named_dcm_is_refused(tmp_path):
    path = tmp_path / "scan.dcm"
    path.write_bytes(cv2.imencode(".png", _frames(1)[0])[1].tobytes())
    with pytest.raises(InputError, match="scan.dcm: not a DICOM file"):
        read_dicom(path)
    with pytest.raises(InputError, match="file not found"):
        read_dicom(tmp_path / "missing.dcm")


def test_dicom_without_pixel_data_is_refused(tmp_path):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", generate_uid()  # Basic Text SR
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    path = _save(ds, tmp_path / "report.dcm")
    with pytest.raises(InputError, match="report.dcm: DICOM file has no pixel data"):
        read_dicom(path)


def test_unsupported_transfer_syntax_names_it(tmp_path):
    ds = _dataset(4, 4, ts=MPEG4HP41)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" * 4])
    ds["PixelData"].VR = "OB"
    with pytest.raises(InputError, match=r"video\.dcm: transfer syntax 'MPEG-4 AVC/H\.264.*not supported"):
        read_dicom(_save(ds, tmp_path / "video.dcm"))


def test_missing_decoder_names_the_package(tmp_path):
    if pydicom.pixels.get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed")
    ds = _dataset(4, 4, ts=JPEGLSLossless)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    ds["PixelData"].VR = "OB"
    with pytest.raises(InputError, match=r"jls\.dcm: transfer syntax 'JPEG-LS Lossless.*pip install pyjpegls"):
        read_dicom(_save(ds, tmp_path / "jls.dcm"))


def test_truncated_files_are_refused(tmp_path):
    path = write_dicom(tmp_path / "cine.dcm", _frames(3), fps=10)
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-1000])
    with pytest.raises(InputError, match=r"cut\.dcm: pixel data is truncated"):
        read_dicom(cut)
    for size in (200, 600):  # cut inside the file meta, inside the dataset
        cut.write_bytes(data[:size])
        with pytest.raises(InputError, match=r"cut\.dcm: DICOM file ends before its pixel data"):
            read_dicom(cut)

    ds = _dataset(48, 64, ts=JPEGBaseline8Bit)
    jpeg = cv2.imencode(".jpg", _frames(1)[0])[1].tobytes()
    ds.PixelData = encapsulate([jpeg[: len(jpeg) // 2]])
    ds["PixelData"].VR = "OB"
    with pytest.raises(InputError, match=r"half\.dcm: cannot decode the pixel data"):
        read_dicom(_save(ds, tmp_path / "half.dcm"))


# --------------------------------------------------------------------------- atomic write


def test_atomic_write_leaves_no_temp_files(tmp_path, monkeypatch):
    out = tmp_path / "sub" / "clip.dcm"
    write_dicom(out, _frames(2), fps=15)
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.dcm"]
    original = out.read_bytes()

    def broken_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dicom_io.pydicom, "dcmwrite", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_dicom(out, _frames(2), fps=15)
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.dcm"]
    assert out.read_bytes() == original, "a failed write must leave the old file intact"


# --------------------------------------------------------------------------- second readers


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (apt-get install dcmtk dicom3tools)")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=30)


def test_dcmtk_reads_the_written_file(tmp_path):
    frames = _frames(3)
    out = write_dicom(tmp_path / "cine.dcm", frames, fps=25, pixel_mm=0.2)
    dump = _run("dcmdump", str(out))
    assert dump.returncode == 0, dump.stderr
    assert "UltrasoundMultiframeImageStorage" in dump.stdout and "(0028,0008) IS [3]" in dump.stdout
    # dcm2pnm decodes frame 2 independently of pydicom: the pixels must match.
    pgm = tmp_path / "frame.pgm"
    conv = _run("dcm2pnm", "+F", "2", "--write-raw-pnm", str(out), str(pgm))
    assert conv.returncode == 0, conv.stderr
    assert np.array_equal(cv2.imread(str(pgm), cv2.IMREAD_UNCHANGED), frames[1])


@pytest.mark.parametrize("n_frames", [1, 4])
def test_dciodvfy_finds_no_iod_errors(tmp_path, n_frames):
    out = write_dicom(tmp_path / "us.dcm", _frames(n_frames), fps=30, pixel_mm=0.25)
    check = _run("dciodvfy", str(out))
    errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
    assert ("USMultiFrameImage" if n_frames > 1 else "USImage") in check.stdout + check.stderr


def test_cli_refuses_dicom_without_pixels_or_with_video_syntax(tmp_path):
    """`fetalkit deid` and `fetalkit mask`: one-line error naming the file, exit 1, nothing written, input kept."""
    import sys
    report = Dataset()
    report.file_meta = FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.SOPClassUID, report.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", generate_uid()
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID
    video = _dataset(4, 4, ts=MPEG4HP41)
    video.PixelData = encapsulate([b"\x00\x00\x01\xb3" * 4])
    video["PixelData"].VR = "OB"
    cases = {_save(report, tmp_path / "report.dcm"): "has no pixel data",
             _save(video, tmp_path / "video.dcm"): "is not supported"}
    for path, reason in cases.items():
        before = path.read_bytes()
        for args in (["deid", path, "-o", tmp_path / "out.dcm"], ["mask", path, "-o", tmp_path / "out.dcm"]):
            res = subprocess.run([sys.executable, "-m", "fetalkit.cli", *map(str, args)], capture_output=True, text=True)
            assert res.returncode == 1, (args, res.stderr)
            assert path.name in res.stderr and reason in res.stderr and "Traceback" not in res.stderr
            assert not (tmp_path / "out.dcm").exists()
        assert path.read_bytes() == before


# --------------------------------------------------------------------------- declared size


def test_declared_size_is_refused_before_any_pixel_is_decoded(tmp_path, monkeypatch):
    """A small file can declare gigabytes: Rows x Columns x frames x samples x bytes is checked first."""
    def no_decoding(p, ds):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(dicom_io, "_decode_pixels", no_decoding)
    ds = _dataset(30000, 30000, ts=JPEGBaseline8Bit)                    # a 1 KB JPEG declared as 900 Mpx
    ds.PixelData = encapsulate([cv2.imencode(".jpg", _frames(1)[0])[1].tobytes()])
    ds["PixelData"].VR = "OB"
    with pytest.raises(InputError, match=r"huge\.dcm: declares 30000 x 30000 pixels .*FETALKIT_MAX_PIXELS"):
        read_dicom(_save(ds, tmp_path / "huge.dcm"))
    ds = _dataset(600, 800, n_frames=3000)                              # 1.4 GB of frames
    ds.PixelData = b"\x00" * 64
    with pytest.raises(InputError, match=r"long\.dcm: 3000 frames of 800 x 600 would decode to 1373 MB"):
        read_dicom(_save(ds, tmp_path / "long.dcm"))
    ds = _dataset(48, 64, n_frames=3)
    ds.PixelData = _frames(3).tobytes()
    path = _save(ds, tmp_path / "small.dcm")
    monkeypatch.setenv("FETALKIT_MAX_PIXELS", "1000")                   # the limit is the user's to change
    with pytest.raises(InputError, match=r"small\.dcm: declares 64 x 48 pixels"):
        read_dicom(path)
    del ds.Rows
    with pytest.raises(InputError, match=r"norows\.dcm: the image header has no Rows"):
        read_dicom(_save(ds, tmp_path / "norows.dcm"))
