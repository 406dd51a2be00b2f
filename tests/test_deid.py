"""fetalkit.deid: PS3.15 Basic Profile on DICOM files full of PHI, with burned-in text."""

from __future__ import annotations

import hashlib
import json
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
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, UltrasoundMultiFrameImageStorage

from fetalkit.deid import DeidReport, UidMap, deidentify_dataset, deidentify_file, profile_table
from fetalkit.errors import InputError
from fetalkit.io.dicom import read_dicom

H, W, N_FRAMES = 96, 128, 2
TEXT_ROWS = slice(0, 26)  # where the scanner burned the patient's name in
STUDY_UID = "1.2.826.0.1.3680043.2.1125.7781.1"
SERIES_UID = "1.2.826.0.1.3680043.2.1125.7781.1.2"
FRAME_OF_REFERENCE_UID = "1.2.826.0.1.3680043.2.1125.7781.1.9"

# Every identifying value put into the test files; none may survive (UIDs are checked too).
PHI = {
    "PatientName": "DOE^JANE^QUINCY",
    "PatientID": "MRN-4471902",
    "PatientBirthDate": "19880314",
    "PatientAddress": "12 Harbour Road Springfield",
    "PatientTelephoneNumbers": "555-0199-771",
    "OtherPatientIDs": "ALT-99812",
    "OtherPatientNames": "SMITH^JANE",
    "PatientMotherBirthName": "ROE^MARY",
    "MedicalRecordLocator": "LOC-7781-B",
    "AdditionalPatientHistory": "previous caesarean 2019",
    "InstitutionName": "St Elsewhere Maternity",
    "InstitutionAddress": "1 Hospital Way Springfield",
    "InstitutionalDepartmentName": "Fetal Medicine Unit",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "PerformingPhysicianName": "QUINN^MICHAELA",
    "OperatorsName": "SONO^SALLY",
    "NameOfPhysiciansReadingStudy": "WATSON^JOHN",
    "StudyDate": "20240517",
    "StudyTime": "101502",
    "SeriesDate": "20240518",
    "SeriesTime": "101503",
    "AcquisitionDateTime": "20240517101530",
    "ContentTime": "101531",
    "InstanceCreationDate": "20240519",
    "AccessionNumber": "ACC2024051701",
    "StudyID": "ST-7781-Q",
    "StationName": "US-ROOM-3",
    "DeviceSerialNumber": "SN-AB12345",
    "StudyDescription": "anomaly scan DOE",
    "SeriesDescription": "fetal head DOE",
    "ImageComments": "patient anxious, call husband",
}
NESTED_PHI = ["SEQ-ID-5512", "CITY HOSPITAL ISSUER", "RP-5566-X", "NESTED^NAME", "PRIVATE-PHI-ZX81",
              "PRIVATE^SEQ^NAME", "overlay note DOE"]


def _burned_in_frames() -> np.ndarray:
    background = np.tile(np.linspace(40, 120, W).astype(np.uint8), (H, 1))
    frames = np.stack([background + 10 * i for i in range(N_FRAMES)])
    for frame in frames:
        cv2.putText(frame, "DOE JANE 14/03/88", (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1, cv2.LINE_8)
    return frames


def _phi_dataset(sop_instance_uid: str, referenced_uid: str | None = None) -> Dataset:
    """A US multi-frame dataset carrying every kind of PHI the profile must handle."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.SourceApplicationEntityTitle = "US-ROOM-3"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundMultiFrameImageStorage, sop_instance_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, SERIES_UID
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE_UID
    ds.Modality, ds.Manufacturer = "US", "ACME"
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.PatientSex, ds.PatientAge = "F", "036Y"
    ds.ContentDate = ds.StudyDate
    other_id = Dataset()
    other_id.PatientID, other_id.IssuerOfPatientID = "SEQ-ID-5512", "CITY HOSPITAL ISSUER"
    ds.OtherPatientIDsSequence = Sequence([other_id])
    request = Dataset()
    request.RequestedProcedureID = "RP-5566-X"
    request.StudyInstanceUID = STUDY_UID
    ds.RequestAttributesSequence = Sequence([request])
    # A sequence the profile keeps: its items are still cleaned.
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "T-D1100", "SRT", "Head"
    region.PatientName = "NESTED^NAME"
    ds.AnatomicRegionSequence = Sequence([region])
    if referenced_uid:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = UltrasoundMultiFrameImageStorage, referenced_uid
        ds.ReferencedImageSequence = Sequence([ref])
    block = ds.private_block(0x0009, "ACME US", create=True)
    block.add_new(0x01, "LO", "PRIVATE-PHI-ZX81")
    private_item = Dataset()
    private_item.PatientName = "PRIVATE^SEQ^NAME"
    block.add_new(0x02, "SQ", Sequence([private_item]))
    ds.add_new(0x60000010, "US", H)  # overlay plane with a comment
    ds.add_new(0x60000011, "US", W)
    ds.add_new(0x60000022, "LO", "overlay note DOE")
    ds.add_new(0x60003000, "OW", b"\x00" * (H * W // 8))
    ds.BurnedInAnnotation = "YES"
    ds.Rows, ds.Columns, ds.NumberOfFrames = H, W, N_FRAMES
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime, ds.FrameIncrementPointer = "40", 0x00181063
    ds.PixelData = _burned_in_frames().tobytes()
    return ds


@pytest.fixture
def study(tmp_path) -> dict:
    """Two files of one study; b references a."""
    a_uid, b_uid = STUDY_UID + ".3.1", STUDY_UID + ".3.2"
    paths = {"a": tmp_path / "in" / "a.dcm", "b": tmp_path / "in" / "b.dcm"}
    paths["a"].parent.mkdir()
    pydicom.dcmwrite(paths["a"], _phi_dataset(a_uid), enforce_file_format=True)
    pydicom.dcmwrite(paths["b"], _phi_dataset(b_uid, referenced_uid=a_uid), enforce_file_format=True)
    return {"paths": paths, "uids": {"a": a_uid, "b": b_uid}, "out": tmp_path / "out"}


def blank_text(frame: np.ndarray) -> np.ndarray:
    """The pixel cleaner of these tests: blank the band the text was burned into."""
    frame[TEXT_ROWS] = 0
    return frame


def _all_strings(ds: Dataset) -> list[str]:
    """Every value in a dataset (file meta, sequences, private elements) as text."""
    found: list[str] = []

    def visit(dataset: Dataset) -> None:
        for elem in dataset:
            if elem.VR == "SQ":
                for item in elem.value:
                    visit(item)
            elif isinstance(elem.value, bytes):
                found.append(elem.value.decode("latin-1"))
            else:
                found.append(str(elem.value))

    visit(ds.file_meta)
    visit(ds)
    return found


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_no_phi_survives_and_pixels_are_cleaned(study):
    src = study["paths"]["a"]
    digest, mtime = _sha256(src), src.stat().st_mtime_ns
    out = study["out"] / "a.dcm"
    report = deidentify_file(src, out, UidMap(), clean_pixels=blank_text)

    assert (_sha256(src), src.stat().st_mtime_ns) == (digest, mtime), "the source must not be touched"
    ds = pydicom.dcmread(out)
    secrets = list(PHI.values()) + NESTED_PHI + [STUDY_UID, SERIES_UID, FRAME_OF_REFERENCE_UID, study["uids"]["a"]]
    values = _all_strings(ds)
    leaks = [s for s in secrets if any(s in v for v in values)]
    assert leaks == []
    raw = out.read_bytes()
    assert [s for s in secrets if s.encode() in raw] == [], "PHI bytes anywhere in the file"
    assert ds.PatientSex == "" and "PatientAge" not in ds
    assert all(elem.tag.group % 2 == 0 for elem in ds.iterall()), "private elements left"
    assert not any(elem.tag.group & 0xFF00 == 0x6000 for elem in ds), "overlay left"

    assert ds.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113101"]
    assert ds.BurnedInAnnotation == "NO"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.AnatomicRegionSequence[0].CodeMeaning == "Head", "non-PHI content of kept sequences stays"

    # Pixels: the text band equals the cleaned version, nothing of the text survives,
    # and everything outside the band is untouched.
    original = _burned_in_frames()
    text_pixels = original[:, TEXT_ROWS] == 255
    assert text_pixels.sum() > 100, "the test text was not drawn"
    written = read_dicom(out).frames
    assert np.array_equal(written[:, TEXT_ROWS], np.zeros_like(written[:, TEXT_ROWS]))
    assert not np.any(written[:, TEXT_ROWS][text_pixels] == 255)
    assert np.array_equal(written[:, TEXT_ROWS.stop:], original[:, TEXT_ROWS.stop:])
    assert read_dicom(out).fps == pytest.approx(25.0)

    assert isinstance(report, DeidReport) and report.pixels_cleaned
    assert report.burned_in_annotation == "NO"
    assert {"InstitutionName", "OperatorsName", "StationName", "DeviceSerialNumber"} <= set(report.removed)
    assert {"PatientName", "PatientID", "StudyDate", "AccessionNumber"} <= set(report.emptied)
    assert {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"} <= set(report.replaced)
    assert "AnatomicRegionSequence>PatientName" in report.emptied
    assert report.private_tags_removed == 3  # creator, LO, SQ
    assert report.uids_remapped == 4
    assert "Manufacturer" in report.kept
    assert json.loads(json.dumps(report.as_dict()))["profile_table"].startswith("dicom-anonymizer")


def test_one_uid_map_keeps_the_study_together(study, tmp_path):
    uids = UidMap()
    out = study["out"]
    deidentify_file(study["paths"]["a"], out / "a.dcm", uids, clean_pixels=blank_text)
    deidentify_file(study["paths"]["b"], out / "b.dcm", uids)
    a, b = pydicom.dcmread(out / "a.dcm"), pydicom.dcmread(out / "b.dcm")

    assert a.StudyInstanceUID == b.StudyInstanceUID != STUDY_UID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID != SERIES_UID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.SOPInstanceUID == uids.new_uid(study["uids"]["a"])
    # b's reference to a points at a's new UID: references survive de-identification.
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert "RequestAttributesSequence" not in b  # X in the profile

    # The map saved and loaded gives the same UIDs in a later run.
    saved = uids.save(tmp_path / "uids.json")
    again = deidentify_dataset(pydicom.dcmread(study["paths"]["a"]), UidMap.load(saved))[0]
    assert again.StudyInstanceUID == a.StudyInstanceUID and again.SOPInstanceUID == a.SOPInstanceUID
    # A different map gives different UIDs.
    other = deidentify_dataset(pydicom.dcmread(study["paths"]["a"]), UidMap())[0]
    assert other.StudyInstanceUID != a.StudyInstanceUID


def test_header_only_keeps_pixels_and_says_burned_in_yes(study):
    src = study["paths"]["b"]
    out = study["out"] / "b.dcm"
    report = deidentify_file(src, out, UidMap())
    ds = pydicom.dcmread(out)
    assert ds.PixelData == pydicom.dcmread(src).PixelData, "pixels copied byte for byte"
    assert ds.BurnedInAnnotation == "YES" and not report.pixels_cleaned
    assert [item.CodeValue for item in ds.DeidentificationMethodCodeSequence] == ["113100"]
    assert "PatientName" in report.emptied and ds.PatientName == ""


def test_header_only_keeps_compressed_pixel_data(tmp_path):
    ds = _phi_dataset("1.2.3.4.5.6")
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([cv2.imencode(".jpg", f)[1].tobytes() for f in _burned_in_frames()])
    ds["PixelData"].VR = "OB"
    src = tmp_path / "jpeg.dcm"
    pydicom.dcmwrite(src, ds, enforce_file_format=True)
    out = tmp_path / "out.dcm"
    deidentify_file(src, out, UidMap())
    written = pydicom.dcmread(out)
    assert written.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert written.PixelData == ds.PixelData
    # ... and with cleaning, the lossy history is declared on the uncompressed output.
    cleaned = tmp_path / "cleaned.dcm"
    deidentify_file(src, cleaned, UidMap(), clean_pixels=blank_text)
    assert pydicom.dcmread(cleaned).LossyImageCompression == "01"


def test_refuses_to_overwrite_the_source(study):
    src = study["paths"]["a"]
    digest = _sha256(src)
    for dst in (src, src.parent / ".." / "in" / "a.dcm"):
        with pytest.raises(InputError, match="would overwrite the input"):
            deidentify_file(src, dst, UidMap(), clean_pixels=blank_text)
    assert _sha256(src) == digest


def test_bad_inputs(study, tmp_path):
    png = tmp_path / "photo.dcm"
    png.write_bytes(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    with pytest.raises(InputError, match="photo.dcm: not a DICOM file"):
        deidentify_file(png, tmp_path / "x.dcm", UidMap())
    with pytest.raises(ValueError, match="clean_pixels must return"):
        deidentify_file(study["paths"]["a"], tmp_path / "y.dcm", UidMap(), clean_pixels=lambda f: f[:10])
    assert not (tmp_path / "y.dcm").exists()
    bad_map = tmp_path / "map.json"
    bad_map.write_text("[1, 2]")
    with pytest.raises(InputError, match="map.json: not a UID map"):
        UidMap.load(bad_map)


def test_dataset_input_is_not_modified_and_table_is_the_standard():
    ds = _phi_dataset("1.2.3.4.5.7")
    before = ds.to_json()
    deidentify_dataset(ds, UidMap())
    assert ds.to_json() == before
    exact, masked, edition = profile_table()
    assert len(exact) > 600 and masked  # Table E.1-1 has several hundred rows
    assert exact[0x00100010] == "Z" and exact[0x0020000D] == "U" and exact[0x00081010] == "X/Z/D"


def test_output_is_a_valid_us_multiframe_image(study):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    out = study["out"] / "a.dcm"
    deidentify_file(study["paths"]["a"], out, UidMap(), clean_pixels=blank_text)
    check = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=30)
    errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def test_cine_without_frame_timing_is_written_at_the_stated_default(tmp_path):
    """No FrameTime / FrameTimeVector / CineRate: cleaning writes 25 frames/s and says so (was a ValueError)."""
    ds = _phi_dataset(STUDY_UID + ".3.9")
    del ds.FrameTime, ds.FrameIncrementPointer
    src = tmp_path / "untimed.dcm"
    pydicom.dcmwrite(src, ds, enforce_file_format=True)
    report = deidentify_file(src, tmp_path / "anon.dcm", UidMap(), clean_pixels=blank_text)
    assert report.fps_assumed == pytest.approx(25.0) and report.as_dict()["fps_assumed"] == pytest.approx(25.0)
    assert read_dicom(tmp_path / "anon.dcm").fps == pytest.approx(25.0)
    timed = deidentify_file(_save_phi(tmp_path / "timed.dcm"), tmp_path / "anon2.dcm", UidMap(),
                            clean_pixels=blank_text)
    assert timed.fps_assumed is None                                      # the file's own timing: nothing assumed


def _save_phi(path: Path) -> Path:
    pydicom.dcmwrite(path, _phi_dataset(STUDY_UID + ".3.8"), enforce_file_format=True)
    return path


def _text_scan(tmp_path: Path) -> Path:
    """A phantom scan with a header line of burned-in text above its sector, as a DICOM file."""
    from fetalkit.io.dicom import write_dicom
    from fetalkit.synth.phantom import head_phantom
    image = head_phantom(seed=21).image.copy()
    image[:40] = 60  # a grey UI bar
    cv2.putText(image, "DOE JANE 20.05.2015 2:47:33 PM", (12, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 230, 2)
    template = Dataset()
    template.PatientName = "DOE^JANE"
    return write_dicom(tmp_path / "text.dcm", image[None], template=template, burned_in_annotation="YES")


def test_burned_in_annotation_no_only_when_the_audit_agrees(tmp_path):
    src = _text_scan(tmp_path)
    # a cleaner that removes nothing: the text stays, so no claim of clean pixels is written
    left = deidentify_file(src, tmp_path / "left.dcm", UidMap(), clean_pixels=lambda f: f)
    ds = pydicom.dcmread(tmp_path / "left.dcm")
    assert left.pixels_verified is False and left.pixel_residual > 0.5
    assert ds.BurnedInAnnotation == "YES"
    assert "113101" not in [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]
    # fetalkit's cleaner blanks the header line: the audit agrees, and only then NO + Clean Pixel Data
    from fetalkit.preprocess.jobs import clean_frame
    done = deidentify_file(src, tmp_path / "done.dcm", UidMap(), clean_pixels=lambda f: clean_frame(f)[0].image)
    ds = pydicom.dcmread(tmp_path / "done.dcm")
    assert done.pixels_verified is True and done.pixel_residual <= 0.03
    assert ds.BurnedInAnnotation == "NO"
    assert "113101" in [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]
