"""fetalkit audit: leaks in de-identified files and masked clips are found; clean outputs pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, UltrasoundImageStorage, generate_uid
from typer.testing import CliRunner

from fetalkit.audit.deid import audit_deid
from fetalkit.audit.mask import audit_mask, hidden_map, longest_run
from fetalkit.audit.ocr import ocr_status
from fetalkit.audit.pixels import residual_text
from fetalkit.audit.profile import audit_profile
from fetalkit.audit.strings import identifying_needles, search_output
from fetalkit.cli import app
from fetalkit.synth.phantom import head_phantom

from conftest import need_dataset

OCR, OCR_WHY = ocr_status()
needs_ocr = pytest.mark.skipif(not OCR, reason=OCR_WHY or "OCR unavailable")

NAME = "DOE^JANE"
HEADER_ROWS = 64


# --------------------------------------------------------------------------- frames with burned-in text


def header_frame(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame with header text, the same frame without it, the text pixels): a phantom scan under a
    shaded grey header bar carrying scanner text with a dark outline, as Voluson draws it."""
    p = head_phantom(seed)
    frame = np.vstack([np.zeros((HEADER_ROWS, p.image.shape[1]), np.uint8), p.image])
    for y in range(10, 52):
        frame[y, 150:790] = np.uint8(60 - 0.6 * (y - 10))  # a bar shaded top to bottom
    clean = frame.copy()
    for text, xy in (("DOE JANE  20.05.2015  2:47:33 PM", (170, 28)), ("ID 0012345  GA 21w3d", (170, 46))):
        cv2.putText(frame, text, xy, cv2.FONT_HERSHEY_SIMPLEX, 0.55, 0, 4, cv2.LINE_AA)    # the outline
        cv2.putText(frame, text, xy, cv2.FONT_HERSHEY_SIMPLEX, 0.55, 235, 1, cv2.LINE_AA)  # the glyphs
    drawn = np.abs(frame.astype(np.int16) - clean) > 2
    return frame, clean, drawn


def test_outline_left_by_partial_removal_is_a_leak():
    frame, clean, drawn = header_frame()
    # text "inpainted" with a mask one pixel short on every side: the glyphs go, their rims stay
    partly = frame.copy()
    core = cv2.erode(drawn.view(np.uint8), np.ones((3, 3), np.uint8)) > 0
    partly[core] = clean[core]
    # the bright glyphs removed and their dark outline left (the top-hat's blind spot)
    bright_only = frame.copy()
    bright = (frame.astype(np.int16) - clean) > 2
    bright_only[bright] = clean[bright]
    blanked = frame.copy()
    blanked[4:58, 150:790] = 0

    for leaky in (partly, bright_only):
        r = residual_text(frame, leaky, ocr=False)
        assert r.residual > 0.03 and r.leak
        assert r.location == "header band"
    assert residual_text(frame, frame, ocr=False).residual == pytest.approx(1.0)
    r = residual_text(frame, blanked, ocr=False)
    assert r.residual <= 0.03 and not r.leak
    # the bar cleaned to its plain shading: its ramp and edges are no text
    r = residual_text(frame, clean, ocr=False)
    assert r.residual < 0.01 and not r.leak


@needs_ocr
def test_ocr_reads_the_original_and_nothing_on_a_blanked_band():
    frame, clean, _ = header_frame()
    kept = residual_text(frame, frame)
    assert kept.ocr_available and "20.05.2015" in kept.ocr_tokens
    blanked = frame.copy()
    blanked[4:58, 150:790] = 0
    r = residual_text(frame, blanked)
    assert r.ocr_tokens == [] and not r.leak
    r = residual_text(frame, clean)
    assert r.ocr_tokens == [] and not r.leak


# --------------------------------------------------------------------------- DICOM


def us_dataset(frame: np.ndarray, *, nested_text: str | None = None) -> Dataset:
    """A single-frame US image with identifying attributes, one of them nested in a sequence."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "US"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, "MRN-4471902", "19880314"
    ds.StudyDate, ds.StudyTime = "20150520", "144733"
    ds.InstitutionName = "St Elsewhere Maternity"
    ds.OperatorsName = "SONO^SALLY"
    ds.StudyDescription = "anomaly scan"
    if nested_text is not None:
        item = Dataset()
        item.ValueType = "TEXT"
        item.TextValue = nested_text
        ds.AcquisitionContextSequence = Sequence([item])
    ds.Rows, ds.Columns = frame.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = frame.tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_nested_text_value_with_the_patient_name_is_flagged(tmp_path):
    frame = head_phantom(0).image
    original = save(us_dataset(frame, nested_text=f"patient {NAME} anxious"), tmp_path / "scan.dcm")
    # a tool that empties the top-level attributes and forgets the nested free text
    ds = pydicom.dcmread(original)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "StudyTime"):
        setattr(ds, keyword, "")
    for keyword in ("InstitutionName", "OperatorsName", "StudyDescription"):
        delattr(ds, keyword)
    output = save(ds, tmp_path / "anon.dcm")

    audit = audit_deid(original, output, ocr=False)
    assert not audit.clean
    attributes = {s["attribute"] for s in audit.strings}
    assert "AcquisitionContextSequence>TextValue" in attributes
    assert "PatientName" in attributes  # the name itself, found inside the nested text
    assert all(s["where"] == "header" for s in audit.strings)
    missed = {n["attribute"] for n in audit.profile.not_performed}
    assert "AcquisitionContextSequence" in missed  # the profile removes the whole sequence
    assert audit.required_actions_done < audit.required_actions_total
    assert "identifying string" in audit.summary() and audit.summary().startswith(f"audit deid {output}: LEAK")
    assert NAME not in json.dumps(audit.as_dict())  # the report names attributes, never values


def test_fetalkit_deid_output_passes_the_header_checks(tmp_path):
    from fetalkit.deid import UidMap, deidentify_file
    frame = head_phantom(0).image
    original = save(us_dataset(frame, nested_text=f"patient {NAME} anxious"), tmp_path / "scan.dcm")
    output = tmp_path / "anon.dcm"
    deidentify_file(original, output, UidMap(), clean_pixels=lambda f: f)
    audit = audit_deid(original, output, ocr=False)
    assert audit.strings == []
    assert audit.required_actions_done == audit.required_actions_total > 10
    assert audit.profile.uids_remapped >= 3 and audit.profile.uids_inconsistent == 0
    assert audit.clean, audit.summary()


def test_uids_must_be_remapped_consistently():
    original = us_dataset(np.zeros((8, 8), np.uint8))
    out = us_dataset(np.zeros((8, 8), np.uint8))
    out.SOPInstanceUID = generate_uid()
    out.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # the same original UID, two new ones
    out.StudyInstanceUID = original.StudyInstanceUID            # not remapped at all
    result = audit_profile(original, out)
    found = {(n["attribute"], n["found"]) for n in result.not_performed}
    assert ("StudyInstanceUID", "UID not remapped") in found
    assert ("SOPInstanceUID", "UID remapped inconsistently") in found
    assert ("MediaStorageSOPInstanceUID", "UID remapped inconsistently") in found


def test_dates_are_found_in_other_spellings_and_jpeg_comments(tmp_path):
    frame = head_phantom(0).image
    original = us_dataset(frame)
    needles = identifying_needles(original)
    hits = search_output(needles, [("header", b"exam 20.05.2015 2:47:33 PM, op Sally Sono", True)])
    forms = {(h.attribute, h.form) for h in hits}
    assert ("StudyDate", "DD.MM.YYYY") in forms and ("StudyTime", "H:MM:SS AM/PM") in forms
    assert ("OperatorsName", "name parts reversed") in forms
    assert search_output(needles, [("header", b"20150520143", True), ("header", b"x2.20150520.9", True)]) == []

    # a JPEG frame whose comment segment carries the name, and a preamble that is not zero
    ok, jpeg = cv2.imencode(".jpg", frame)
    comment = b"DOE JANE"
    jpeg = jpeg.tobytes()
    jpeg = jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]
    src = save(us_dataset(frame), tmp_path / "scan.dcm")
    ds = pydicom.dcmread(src)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "StudyTime", "InstitutionName",
                    "OperatorsName", "StudyDescription"):
        delattr(ds, keyword)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    ds.preamble = b"II*\x00" + b"\x00" * 124
    out = save(ds, tmp_path / "anon.dcm")
    audit = audit_deid(src, out, ocr=False)
    assert {"attribute": "PatientName", "where": "pixel data JPEG COM", "form": "words in order"} in audit.strings
    assert "pixel data JPEG COM" in audit.kept_not_known_safe
    assert any(k.startswith("preamble") for k in audit.kept_not_known_safe)
    assert audit.required_actions_done == audit.required_actions_total


def test_colour_lost_is_reported_for_rgb_written_grey(tmp_path):
    from pydicom.data import get_testdata_file
    from fetalkit.io.dicom import read_dicom, write_dicom
    src = Path(get_testdata_file("examples_rgb_color.dcm"))
    clip = read_dicom(src)  # frames as grey
    out = tmp_path / "grey.dcm"
    write_dicom(out, clip.frames, template=clip.dataset)
    audit = audit_deid(src, out, ocr=False)
    assert audit.pixels.colour_lost and audit.pixels.colour_original == "RGB"
    assert audit.pixels.colour_output == "MONOCHROME2"
    assert "colour lost (RGB -> MONOCHROME2)" in audit.summary()

    # an image: a tinted B-mode (as Voluson exports it) written grey, and kept in colour
    frame, _, _ = header_frame()
    colour = np.dstack([cv2.add(frame, 6), frame, cv2.subtract(frame, 4)])  # a blue tint (BGR)
    cv2.imwrite(str(tmp_path / "in.png"), colour)
    cv2.imwrite(str(tmp_path / "grey.png"), cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY))
    assert audit_deid(tmp_path / "in.png", tmp_path / "grey.png", ocr=False).pixels.colour_lost
    cv2.imwrite(str(tmp_path / "same.png"), colour)
    assert not audit_deid(tmp_path / "in.png", tmp_path / "same.png", ocr=False).pixels.colour_lost


def test_pydicom_ultrasound_examples_through_fetalkit_deid(tmp_path):
    """Other scanners' files (not used to choose any threshold): today's deid performs every required
    action and leaves no identifying string; a header-only copy of the pixels shows its text."""
    from pydicom.data import get_testdata_file
    from fetalkit.preprocess.jobs import deidentify_path
    for name in ("examples_palette.dcm", "examples_rgb_color.dcm", "examples_ybr_color.dcm", "examples_jpeg2k.dcm"):
        src = Path(get_testdata_file(name))
        out = tmp_path / name
        deidentify_path(src, out)
        audit = audit_deid(src, out, ocr=False)
        assert audit.required_actions_total > 15 and audit.required_actions_done == audit.required_actions_total
        assert audit.strings == [], (name, audit.strings)
        assert audit.pixels.comparable and audit.pixels.frames_compared == audit.pixels.frames_original
    src = Path(get_testdata_file("examples_palette.dcm"))
    deidentify_path(src, tmp_path / "header_only.dcm", clean=False)
    audit = audit_deid(src, tmp_path / "header_only.dcm", ocr=False)
    assert audit.pixels.residual == pytest.approx(1.0) and not audit.clean


def test_cli_exit_codes(tmp_path):
    frame, clean, _ = header_frame()
    cv2.imwrite(str(tmp_path / "orig.png"), frame)
    blanked = frame.copy()
    blanked[4:58, 150:790] = 0
    cv2.imwrite(str(tmp_path / "blank.png"), blanked)
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "deid", str(tmp_path / "orig.png"), str(tmp_path / "blank.png"), "--no-ocr"])
    assert ok.exit_code == 0 and "clean" in ok.output
    leak = runner.invoke(app, ["audit", "deid", str(tmp_path / "orig.png"), str(tmp_path / "orig.png"), "--no-ocr",
                               "--json"])
    assert leak.exit_code == 1
    report = json.loads(leak.stdout)
    assert report["clean"] is False and report["pixels"]["residual"] == pytest.approx(1.0)
    assert any(x["kind"] == "residual text" for x in report["leaks"])
    missing = runner.invoke(app, ["audit", "deid", str(tmp_path / "none.png"), str(tmp_path / "blank.png")])
    assert missing.exit_code == 2 and "not found" in missing.output
    bad_option = runner.invoke(app, ["audit", "deid", str(tmp_path / "orig.png"), str(tmp_path / "blank.png"),
                                     "--max-residual", "x"])
    assert bad_option.exit_code == 2


# --------------------------------------------------------------------------- masking


@pytest.fixture(scope="module")
def detector():
    from fetalkit.runtime.detector import OnnxDetector
    from fetalkit.runtime.registry import resolve_model
    return OnnxDetector(resolve_model(None, "detector"), threads=2)


def phantom_sequence(seed: int, n_frames: int):
    from fetalkit.synth.sequences import make_sequence
    p = head_phantom(seed=seed, shape_hw=(360, 540))
    rows = np.nonzero(p.mask.any(axis=1))[0]
    away = p.image.copy()
    away[max(0, rows.min() - 4):] = 0  # a cut-away: the head out of view (as the demo clip)
    return make_sequence(p.image, p.mask > 0, [away], n_frames, np.random.default_rng(seed))


def write_masked(seq, dets, rule, margin: float, folder: Path) -> None:
    """The frames, masked as the video benchmark's replay masks them, and their truth boxes, into folder/."""
    from fetalkit.masking.render import grow_boxes, render_masks
    (folder / "orig").mkdir(parents=True)
    (folder / "masked").mkdir()
    rule.reset()
    truth = []
    for i, (frame, d, box) in enumerate(zip(seq.frames, dets, seq.target_boxes)):
        masks = grow_boxes(rule.update(frame, d).masks.boxes_xyxy, frame.shape, margin)
        cv2.imwrite(str(folder / "orig" / f"{i:04d}.png"), frame)
        cv2.imwrite(str(folder / "masked" / f"{i:04d}.png"), render_masks(frame, masks))
        if box is not None:
            x1, y1, x2, y2 = (float(v) for v in box)
            truth.append({"frame": i, "bbox": [x1, y1, x2 - x1, y2 - y1], "category": "fetal_head"})
    (folder / "truth.json").write_text(json.dumps(truth))


def test_audit_mask_gives_the_unmasked_frames_and_their_run(tmp_path, detector):
    from fetalkit.masking.hold import HoldRule
    from fetalkit.evaluation.video import detect_sequences
    seq = phantom_sequence(2, 24)
    dets = detect_sequences([seq], detector, "fetal_head", roi="auto")[0]
    write_masked(seq, dets, HoldRule("ssim"), 0.15, tmp_path)
    clean = audit_mask(tmp_path / "orig", tmp_path / "masked", classes=["fetal_head"], detector=detector)
    assert clean.clean and clean.leaked_frames == [] and clean.regions_found >= 15
    assert clean.regions_covered == clean.regions_found and 0.2 < clean.mean_masked_share < 0.95

    with_head = [i for i, d in enumerate(dets) if len(d.scores)]
    one = with_head[2]
    run = next(i for i in with_head if i > one + 1 and {i + 1, i + 2} <= set(with_head))
    unmasked = [one, run, run + 1, run + 2]  # one frame, then a run of three, left unmasked
    for k in unmasked:
        shutil.copy(tmp_path / "orig" / f"{k:04d}.png", tmp_path / "masked" / f"{k:04d}.png")
    audit = audit_mask(tmp_path / "orig", tmp_path / "masked", classes=["fetal_head"], detector=detector)
    assert audit.leaked_frames == unmasked and audit.longest_leaked_run == 3 and not audit.clean
    record = audit.frames[one]
    assert record["leaked"] and record["found"][0]["outcome"].startswith("leaked")
    assert record["masked_share"] < 0.05
    assert f"4 of 24 frames leaked ({one}, {run}-{run + 2}; longest run 3)" in audit.summary()
    assert audit_mask(tmp_path / "orig", tmp_path / "masked", classes=["fetal_head"], detector=detector,
                      max_leaked=4).clean
    assert longest_run([1, 2, 4, 5, 6]) == 3 and longest_run([]) == 0


def test_truth_misses_agree_with_the_video_benchmark(tmp_path, detector):
    """On the benchmark's own masked output, --truth counts exactly its false-negative frames."""
    from fetalkit.evaluation.video import detect_sequences, replay
    from fetalkit.masking.hold import HoldRule
    total = 0
    for seed in (0, 1):
        seq = phantom_sequence(seed, 40)
        # a strict confidence, so that the detector misses some frames and the hold rules matter
        dets = detect_sequences([seq], detector, "fetal_head", conf=0.8, roi="auto")[0]
        for setting, margin in (({"rule": "none"}, 0.15), ({"rule": "ssim"}, 0.15), ({"rule": "none"}, 0.0)):
            bench = replay(seq, dets, HoldRule(**setting), margin)
            folder = tmp_path / f"s{seed}_{setting['rule']}_{margin}"
            write_masked(seq, dets, HoldRule(**setting), margin, folder)
            audit = audit_mask(folder / "orig", folder / "masked", truth=folder / "truth.json",
                               classes=["fetal_head"], detector=detector)
            assert audit.truth_target_frames == bench["targets"]
            assert len(audit.truth_uncovered_frames) == bench["fn"], (seed, setting, margin)
            assert set(audit.truth_uncovered_frames) <= set(audit.leaked_frames)
            total += bench["fn"]
    assert total > 10  # the comparison saw misses, not only covered frames


def test_hidden_map_on_styles_and_a_lossy_copy():
    frame = head_phantom(1, shape_hw=(360, 540)).image
    box = (slice(100, 220), slice(150, 330))
    from fetalkit.masking.render import render_masks
    boxes = np.array([[150, 100, 330, 220]], np.float32)
    # pixelation keeps what is coarser than its 16 px blocks: part of it still follows the original
    for style, least in (("fill", 0.99), ("blur", 0.97), ("pixelate", 0.8)):
        hidden = hidden_map(frame, render_masks(frame, boxes, style))
        assert hidden[box].mean() > least, style
        outside = np.ones(frame.shape, bool)
        outside[90:230, 140:340] = False
        assert hidden[outside & (frame > 20)].mean() < 0.02, style
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
    lossy = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)
    assert hidden_map(frame, lossy)[frame > 20].mean() < 0.02  # re-encoding hides nothing
    brighter = cv2.convertScaleAbs(frame, alpha=1.3, beta=10)
    assert hidden_map(frame, brighter)[frame > 20].mean() < 0.02  # nor does a change of gain


def test_truth_file_errors_name_the_file(tmp_path, detector):
    from fetalkit.errors import InputError
    frame = head_phantom(0, shape_hw=(200, 300)).image
    cv2.imwrite(str(tmp_path / "a.png"), frame)
    (tmp_path / "truth.json").write_text('[{"frame": 0, "box": [1, 2, 3, 4]}]')
    with pytest.raises(InputError, match="truth.json"):
        audit_mask(tmp_path / "a.png", tmp_path / "a.png", truth=tmp_path / "truth.json", detector=detector)
    cv2.imwrite(str(tmp_path / "small.png"), frame[:100])
    with pytest.raises(InputError, match="pixel by pixel"):
        audit_mask(tmp_path / "a.png", tmp_path / "small.png", detector=detector)


# --------------------------------------------------------------------------- real scans


def test_sononet_header_text_is_measured():
    """SonoNet frames (Voluson E8 header text on grey bars): the audit finds the header text and
    scores an untouched copy as 1 and a blanked header as clean."""
    folder = need_dataset("sononet_examples")
    path = sorted(folder.glob("*.tiff"))[0]
    frame = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY)
    kept = residual_text(frame, frame, ocr=False)
    header = [r for r in kept.regions if r.location == "header band"]
    assert sum(r.text_px for r in header) > 5000 and kept.residual == pytest.approx(1.0)
    blanked = frame.copy()
    blanked[:max(r.y + r.h for r in header) + 4] = 0
    r = residual_text(frame, blanked, ocr=False)
    assert not any(reg.location == "header band" and (reg.residual or 0) > 0.03 for reg in r.regions)


def test_without_ocr_the_audit_says_so_and_still_runs(tmp_path, monkeypatch):
    from fetalkit.audit import ocr
    monkeypatch.setattr(ocr, "ocr_status", lambda: (False, "OCR unavailable: the tesseract program is not installed"))
    frame, clean, _ = header_frame()
    cv2.imwrite(str(tmp_path / "orig.png"), frame)
    cv2.imwrite(str(tmp_path / "kept.png"), frame)
    audit = audit_deid(tmp_path / "orig.png", tmp_path / "kept.png")
    assert not audit.pixels.ocr_available and audit.pixels.ocr_tokens == []
    assert audit.pixels.residual == pytest.approx(1.0) and not audit.clean
    assert "OCR unavailable" in audit.summary()
    assert not residual_text(frame, frame).ocr_available
