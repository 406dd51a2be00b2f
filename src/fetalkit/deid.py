"""De-identification of DICOM files (PS3.15 Annex E Basic Application Level Confidentiality Profile).

The attribute action table is not written by hand: it is Table E.1-1 of the
DICOM standard as shipped, machine-extracted, by the ``dicom-anonymizer``
package (Kitware, BSD-3-Clause; ``dicomanonymizer.dicom_anonymization_databases``,
newest edition available).  fetalkit applies the table itself so that it can

* walk every sequence recursively (the table applies at every nesting level),
* remap UIDs through a ``UidMap`` shared by all files of a batch, so one
  original UID gets one new UID everywhere (studies and series stay together,
  references between instances stay valid),
* report what it did (``DeidReport``) and be honest about burned-in text.

How the profile's action codes are applied (no IOD-type look-up is made, so
the choice is the one that keeps a US image valid and leaks nothing):

=========  ==============================================================
X, X/Z,    removed
X/D, X/Z/D
Z, Z/D     emptied (zero length; sequences get zero items)
D          replaced by a dummy of the same VR (sequences: zero items)
U          UID replaced through the ``UidMap``
X/Z/U*     sequence kept, its items cleaned recursively (their instance
           UIDs are remapped), as the profile allows for references
=========  ==============================================================

Also removed: every private element (odd group) at any level, and curves
(50xx) and overlays (60xx) as whole groups, since overlay bitmaps can carry text.

**Allow-list.**  The table names what the standard knew to be identifying when
it was written; a scanner writes more (free text, attributes of later editions,
unknown elements).  So an attribute the table does not act on is kept only when
it is on ``ALLOWED_KEYWORDS``: what an ultrasound image needs to be displayed and
measured (image pixel module, palette LUTs, US region calibration, frame timing,
modality and SOP class, coded anatomy and view, de-identification method).
Everything else is removed and listed in the report's ``removed_by_allowlist``.
The same rules apply inside every kept sequence.  A Code Meaning (free text in
principle) is kept only when it is the meaning the standard gives its code
(pydicom's code dictionaries), replaced by that meaning when it differs, and
removed for codes the dictionaries do not know.

**Dates.**  By default dates and times follow the table (emptied or removed).
With ``shift_dates`` the dates of the attributes on ``_TEMPORAL_KEYWORDS`` are
moved by one whole number of days per patient (-365..-1, a keyed hash of the
Patient ID, see ``UidMap.date_shift_days``), so intervals (gestational age from
the last menstrual period, days between scans) survive; times of day are kept
as they are; the Patient's Birth Date is still emptied.  The dataset then says
Longitudinal Temporal Information Modified = MODIFIED and carries code 113107.

**Keep-list.**  ``keep`` names attributes (keyword or tag) to copy unchanged at
every level, whatever the table or the allow-list say: the caller takes
responsibility.  They are listed in ``kept_on_request``; when one of them is
acted on by the profile table, Patient Identity Removed is NO.

Added: Patient Identity Removed, De-identification Method (+ code 113100,
113101 Clean Pixel Data Option when pixels were cleaned, 113107 with shifted
dates), Longitudinal Temporal Information Modified (REMOVED or MODIFIED), and
an honest Burned In Annotation.  The file meta is rebuilt (no AE titles or
private information) and the 128-byte preamble is zero.

Not done (options of Annex E beyond the Basic Profile): retaining device or
institution identity, safe private tags; cleaning free text descriptions (they
are removed instead); removing text burned into pixels, which is the caller's
``clean_pixels`` function.  When pixels are copied (no ``clean_pixels``), JPEG
and JPEG 2000 frames lose their comment and application segments
(``fetalkit.io.encapsulated``); other compressed streams are copied uninspected
and the report's ``pixel_data`` says so.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import uuid
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, RLETransferSyntaxes, generate_uid

from fetalkit.errors import FetalkitError, InputError
from fetalkit.io.dicom import open_dataset, read_dicom, save_dataset, write_dicom
from fetalkit.io.images import atomic_write_bytes
from fetalkit.io.inputs import printable

__all__ = ["UidMap", "DeidReport", "DeidOptionError", "deidentify_dataset", "deidentify_file", "keep_tags",
           "profile_table"]

PROFILE_NAME = "DICOM PS3.15 Basic Application Level Confidentiality Profile"  # fits LO (64)

# dicom-anonymizer's category lists -> PS3.15 action codes.
_CATEGORY_CODES = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z", "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}
# Newest first; dicom-anonymizer adds an edition of the standard now and then.
_TABLE_EDITIONS = ("dicomfields_2026c", "dicomfields_2024b", "dicomfields_2023")

_REMOVE = {"X", "X/Z", "X/D", "X/Z/D"}
_EMPTY = {"Z", "Z/D"}

_DUMMY_TEXT = "ANONYMIZED"
_DUMMIES = {
    "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y",
    "DS": "0", "IS": "0", "UR": "",
    **{vr: _DUMMY_TEXT for vr in ("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT")},
    **{vr: 0 for vr in ("FD", "FL", "SL", "SS", "SV", "UL", "US", "UV")},
    **{vr: b"" for vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN")},
}

_CODE_BASIC = ("113100", "Basic Application Confidentiality Profile")
_CODE_CLEAN_PIXELS = ("113101", "Clean Pixel Data Option")
_CODE_MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
_ALLOWLIST_NAME = "fetalkit ultrasound image attribute allow-list"  # a second De-identification Method value

# Attributes the profile table does not act on that are kept as they are, at every nesting level:
# what an ultrasound image needs to be displayed, calibrated and played, and nothing written as free
# text.  Anything not here (and not kept by the table as emptied / dummy / new UID) is removed, so
# attributes of later editions, unknown elements and scanners' free text cannot leak.
ALLOWED_KEYWORDS = (
    # SOP common, modality, series / instance numbering (type 1 and 2 of the US image IODs)
    "SpecificCharacterSet", "SOPClassUID", "ImageType", "Modality", "SeriesNumber", "InstanceNumber",
    "AcquisitionNumber", "PatientOrientation", "Laterality", "ImageLaterality", "BodyPartExamined",
    "Manufacturer", "ManufacturerModelName", "ConversionType", "PresentationLUTShape",
    # de-identification method and image history (rewritten by _mark_deidentified where they are claims)
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified", "BurnedInAnnotation", "RecognizableVisualFeatures",
    "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod",
    # image pixel module, palette colour LUTs
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "PlanarConfiguration", "PixelAspectRatio", "SmallestImagePixelValue",
    "LargestImagePixelValue", "PixelPaddingValue", "PixelPaddingRangeLimit", "UltrasoundColorDataPresent",
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData", "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData", "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData", "SegmentedBluePaletteColorLookupTableData",
    "ICCProfile", "ColorSpace", "PixelData", "PixelSpacing",
    # modality / VOI LUT (numbers only; explanations are free text)
    "RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence",
    "ModalityLUTSequence", "LUTDescriptor", "LUTData",
    # multi-frame and cine timing
    "NumberOfFrames", "FrameIncrementPointer", "FrameTime", "FrameTimeVector", "CineRate",
    "RecommendedDisplayFrameRate", "ActualFrameDuration", "FrameDelay", "StartTrim", "StopTrim",
    "PreferredPlaybackSequencing",
    # US image module: staging, safety indices, coded anatomy / view / transducer (meanings checked)
    "NumberOfStages", "StageNumber", "NumberOfViewsInStage", "ViewNumber", "MechanicalIndex", "BoneThermalIndex",
    "CranialThermalIndex", "SoftTissueThermalIndex", "SoftTissueFocusThermalIndex",
    "SoftTissueSurfaceThermalIndex", "DepthOfScanField", "AnatomicRegionSequence",
    "AnatomicRegionModifierSequence", "PrimaryAnatomicStructureSequence",
    "PrimaryAnatomicStructureModifierSequence", "ViewCodeSequence", "ViewModifierCodeSequence",
    "StageCodeSequence", "TransducerScanPatternCodeSequence", "TransducerGeometryCodeSequence",
    "TransducerBeamSteeringCodeSequence", "TransducerApplicationCodeSequence",
    # code sequence items
    "CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning", "LongCodeValue", "URNCodeValue",
    "ContextIdentifier", "MappingResource",
    # items of the references the profile keeps (X/Z/U*: Referenced Image, Source Image): their UIDs are remapped
    "ReferencedSOPClassUID", "ReferencedFrameNumber", "PurposeOfReferenceCodeSequence",
    # US region calibration (PS3.3 C.8.5.5)
    "SequenceOfUltrasoundRegions", "RegionSpatialFormat", "RegionDataType", "RegionFlags", "RegionLocationMinX0",
    "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1", "ReferencePixelX0", "ReferencePixelY0",
    "PhysicalUnitsXDirection", "PhysicalUnitsYDirection", "ReferencePixelPhysicalValueX",
    "ReferencePixelPhysicalValueY", "PhysicalDeltaX", "PhysicalDeltaY", "TransducerFrequency", "TransducerType",
    "PulseRepetitionFrequency", "DopplerCorrectionAngle", "SteeringAngle", "DopplerSampleVolumeXPosition",
    "DopplerSampleVolumeYPosition", "TMLinePositionX0", "TMLinePositionY0", "TMLinePositionX1", "TMLinePositionY1",
    "PixelComponentOrganization", "PixelComponentMask", "PixelComponentRangeStart", "PixelComponentRangeStop",
    "PixelComponentPhysicalUnits", "PixelComponentDataType", "NumberOfTableBreakPoints", "TableOfXBreakPoints",
    "TableOfYBreakPoints", "NumberOfTableEntries", "TableOfPixelValues", "TableOfParameterValues",
)
_ALLOWED = frozenset(Tag(k) for k in ALLOWED_KEYWORDS)  # Tag() refuses a misspelt keyword at import
# Type 2 attributes that may hold free text: present and empty, as the IOD asks, never their value.
_EMPTIED = frozenset(Tag(k) for k in ("PositionReferenceIndicator",))

# Dates moved by shift_dates (DA, DT; the TM partners keep their time of day).  The Patient's Birth
# Date is not among them: a birth date a few months off still narrows down who the patient is.
_TEMPORAL_KEYWORDS = (
    "StudyDate", "StudyTime", "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime",
    "AcquisitionDateTime", "ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime", "LastMenstrualDate",
)
_TEMPORAL = frozenset(Tag(k) for k in _TEMPORAL_KEYWORDS)
_SHIFT_RANGE_DAYS = 365  # shifts are -365..-1 days
_SHIFT_ENTRY = "date-shift:"  # prefix of a UidMap entry holding an unkeyed map's shift for one patient
# File meta elements every written file has (its own values); any other one of the source is listed as
# removed (AE titles, private information, the source's implementation UID and name).
_META_REBUILT = frozenset(Tag(k) for k in (
    "FileMetaInformationGroupLength", "FileMetaInformationVersion", "MediaStorageSOPClassUID",
    "MediaStorageSOPInstanceUID", "TransferSyntaxUID"))


class DeidOptionError(FetalkitError):
    """A de-identification option (``--keep``) names no DICOM attribute."""


# --------------------------------------------------------------------------- UID map



def load_or_create_key(path: str | os.PathLike) -> str:
    """The secret key kept in ``path`` (made on first use: 64 hex digits, mode 0600).

    The key of a :class:`UidMap`: commands and batches that share the file give one
    study the same new UIDs and one patient the same date shift.  It is as identifying
    as a UID map: keep it with the source data.
    """
    path = Path(path)
    try:
        if not path.exists():
            atomic_write_bytes(path, secrets.token_hex(32).encode())
            os.chmod(path, 0o600)
        key = path.read_text().strip()
    except OSError as err:
        raise InputError(f"{printable(path)}: cannot read or create the key file ({err.strerror or err}); "
                         "give a --key-file in a folder you can write") from None
    except UnicodeDecodeError:
        key = ""
    if not re.fullmatch(r"[0-9A-Za-z+/=_-]{16,}", key):
        raise InputError(f"{printable(path)}: not a fetalkit key file (expected one line of at least 16 "
                         "letters or digits); give another --key-file or remove this one to make a new key")
    return key

@dataclass
class UidMap:
    """One new UID for each original UID, the same in every file it appears in.

    Share one map across all files of a batch (and save it between runs) so
    that frames, series and studies stay grouped after de-identification.
    New UIDs are ``2.25.<uuid4>``: random, and without an organisation root
    that could point back to the source.  The map links new UIDs to the
    originals, so it is itself identifying: keep it with the source data, never
    ship it with the de-identified files.

    With a secret ``key`` the new UID is a keyed hash (HMAC-SHA256) of the
    original instead of a random draw, so separate processes or machines that
    share the key give one file's study the same new UIDs without sharing a
    map (``fetalkit batch deid``).  The key is as identifying as the map.

    Example
    -------
    >>> uids = UidMap()
    >>> uids.new_uid("1.2.3") == uids.new_uid("1.2.3") != "1.2.3"
    True
    >>> UidMap(key="k").new_uid("1.2.3") == UidMap(key="k").new_uid("1.2.3")
    True
    """

    mapping: dict[str, str] = field(default_factory=dict)
    key: str | None = field(default=None, repr=False)

    def new_uid(self, original: str) -> str:
        """The replacement of ``original`` (created on first use)."""
        key = str(original).strip().rstrip("\x00")
        if key not in self.mapping:
            if self.key is None:
                self.mapping[key] = str(generate_uid(prefix=None))
            else:
                digest = hmac.new(self.key.encode(), key.encode(), hashlib.sha256).digest()
                self.mapping[key] = f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"
        return self.mapping[key]

    def date_shift_days(self, patient_id: str) -> int:
        """Whole days (-365..-1) added to every date of this patient by ``shift_dates``.

        With a ``key``: a keyed hash (HMAC-SHA256) of the Patient ID, so every worker
        and every run that shares the key shifts one patient's files alike.  Without
        one: a random draw remembered in the map (saved with it, under a hash of the
        ID).  Files without a Patient ID share one shift.
        """
        pid = str(patient_id or "").strip()
        if self.key is not None:
            digest = hmac.new(self.key.encode(), b"fetalkit date shift\x00" + pid.encode(), hashlib.sha256).digest()
            return -1 - int.from_bytes(digest[:8], "big") % _SHIFT_RANGE_DAYS
        entry = _SHIFT_ENTRY + hashlib.sha256(pid.encode()).hexdigest()[:32]
        if entry not in self.mapping:
            self.mapping[entry] = str(-1 - secrets.randbelow(_SHIFT_RANGE_DAYS))
        return int(self.mapping[entry])

    def __len__(self) -> int:
        return len(self.mapping)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the map as JSON (atomically)."""
        return atomic_write_bytes(path, json.dumps(self.mapping, indent=1, sort_keys=True).encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "UidMap":
        """Read a map written by ``save``; InputError naming the file when it is not one."""
        p = Path(path)
        try:
            mapping = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{p}: cannot read the UID map ({e}); pass a file written by UidMap.save") from e
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise InputError(f"{p}: not a UID map (expected a JSON object of UID -> UID)")
        return cls(dict(mapping))


# --------------------------------------------------------------------------- report


@dataclass
class DeidReport:
    """What de-identification did to one dataset: attributes by name and tag, never their values.

    Attributes are named by keyword (by tag when they have none, e.g. ``(0040,9999)``),
    nested ones as ``Sequence>Attribute``; ``tags`` gives the tag path of every
    name listed (``"SequenceOfUltrasoundRegions>PhysicalDeltaX": "(0018,6011)>(0018,602C)"``).
    ``as_dict()`` is JSON-serialisable.

    ========================  ===================================================
    removed                   the profile table's X actions; curves and overlays
    removed_by_allowlist      neither acted on by the table nor on the allow-list
    emptied                   the table's Z actions (and type 2 free text)
    replaced                  new UIDs, dummy values, standard code meanings
    shifted                   dates moved by ``shift_dates`` (one shift per patient)
    kept                      unchanged: on the allow-list (and times of day when
                              dates are shifted)
    kept_on_request           unchanged because the caller named them (``keep``)
    private_removed           private elements, by tag path (``private_tags_removed``
                              counts them)
    file_meta_removed         elements of the source's file meta not carried over
    ========================  ===================================================
    """

    profile: str
    profile_table: str
    removed: list[str] = field(default_factory=list)
    emptied: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    removed_by_allowlist: list[str] = field(default_factory=list)
    shifted: list[str] = field(default_factory=list)
    kept_on_request: list[str] = field(default_factory=list)
    private_removed: list[str] = field(default_factory=list)
    file_meta_removed: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    dates_shifted: bool = False
    patient_identity_removed: str = "YES"
    # What happened to the pixel data: copied as stored, metadata segments stripped, or cleaned.
    pixel_data: str = "copied"
    uids_remapped: int = 0
    private_tags_removed: int = 0
    pixels_cleaned: bool = False
    burned_in_annotation: str = "YES"
    source: str | None = None
    output: str | None = None
    # Frame rate written into a cleaned cine that stated none (FrameTime, FrameTimeVector, CineRate): the
    # default, said so; None when the source's own timing was kept.
    fps_assumed: float | None = None
    pixels_verified: bool | None = None   # cleaned pixels passed the residual-text audit (None: not cleaned)
    pixel_residual: float | None = None   # the largest residual-text ratio of the frames checked

    def as_dict(self) -> dict:
        return asdict(self)


class _Tally:
    """Mutable sets filled during the walk, turned into a sorted DeidReport at the end."""

    _KINDS = ("removed", "emptied", "replaced", "kept", "removed_by_allowlist", "shifted", "kept_on_request",
              "private_removed", "file_meta_removed")

    def __init__(self) -> None:
        for kind in self._KINDS:
            setattr(self, kind, set())
        self.tags: dict[str, str] = {}
        self.uids: set[str] = set()
        self.private = 0
        self.identity_kept = False  # the caller kept an attribute the profile acts on (or a private one)
        self.dates_kept = False  # ... or a date as it was

    def note(self, kind: str, name: str, tags: str) -> None:
        getattr(self, kind).add(name)
        self.tags[name] = tags

    def lists(self) -> dict[str, list[str]]:
        """Sorted lists; a name both kept and acted on somewhere (two items of a sequence) counts as acted on."""
        acted = set().union(*(getattr(self, k) for k in self._KINDS if k != "kept"))
        lists = {k: sorted(getattr(self, k)) for k in self._KINDS}
        lists["kept"] = sorted(self.kept - acted)
        return lists


# --------------------------------------------------------------------------- profile table


@lru_cache(maxsize=1)
def profile_table() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...], str]:
    """The Basic Profile action table.

    Returns
    -------
    exact : dict
        Tag (as int) -> action code ("X", "Z", "D", "U", "Z/D", "X/Z", ...).
    masked : tuple
        ``(group, element, group_mask, element_mask, code)`` rows for repeating
        groups (curves, overlays).
    edition : str
        Which edition of the table was loaded, e.g. ``"dicom-anonymizer 2.1.0 dicomfields_2026c"``.
    """
    from importlib.metadata import version

    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    for edition in _TABLE_EDITIONS:
        try:
            lists = dicom_anonymization_database_selector(edition)
            break
        except ValueError:
            continue
    else:  # pragma: no cover - only with a dicom-anonymizer older than fetalkit supports
        raise RuntimeError("dicom-anonymizer has none of the expected profile tables; upgrade it")
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, code in _CATEGORY_CODES.items():
        for entry in lists[category]:
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = code
            else:
                masked.append((*entry, code))
    return exact, tuple(masked), f"dicom-anonymizer {version('dicom-anonymizer')} {edition}"


def _action_for(tag: BaseTag) -> str | None:
    exact, masked, _ = profile_table()
    code = exact.get(int(tag))
    if code is not None:
        return code
    for group, element, group_mask, element_mask, code in masked:
        if tag.group & group_mask == group & group_mask and tag.element & element_mask == element & element_mask:
            return code
    return None


def _is_curve_or_overlay(tag: BaseTag) -> bool:
    return tag.group & 0xFF00 in (0x5000, 0x6000) and tag.group % 2 == 0


# --------------------------------------------------------------------------- dataset


def deidentify_dataset(ds: Dataset, uid_map: UidMap, *, pixels_cleaned: bool = False, shift_dates: bool = False,
                       keep: Iterable[str | int] = ()) -> tuple[Dataset, DeidReport]:
    """Apply the Basic Application Level Confidentiality Profile and the allow-list to a copy of ``ds``.

    Parameters
    ----------
    ds : pydicom.Dataset
        Not modified.  Pixel data, if any, is copied unchanged: cleaning text
        burned into the pixels is the caller's job (``deidentify_file``).
    uid_map : UidMap
        Shared map of original -> new UIDs; grows as new UIDs are met.  Its key
        (or memory) also decides each patient's date shift.
    pixels_cleaned : bool
        True only when the pixels that will be stored with this header have had
        burned-in text removed.  Sets Burned In Annotation to NO and adds the
        Clean Pixel Data Option code.  When False, Burned In Annotation is YES
        unless the source itself said NO (its claim is passed on; the report's
        ``pixels_cleaned`` stays False).
    shift_dates : bool
        Shift the dates of one patient by one number of days instead of removing
        them (module docstring, "Dates").
    keep : iterable of str or int
        Attributes to keep unchanged, by keyword or tag (``keep_tags``).

    Returns
    -------
    (pydicom.Dataset, DeidReport)
        The de-identified dataset (a plain Dataset whose ``file_meta`` holds
        only the transfer syntax and the new SOP UIDs) and the report.

    Raises
    ------
    DeidOptionError
        A ``keep`` entry names no attribute.

    Example
    -------
    >>> out, report = deidentify_dataset(ds, UidMap(), shift_dates=True, keep=["PatientAge"])  # doctest: +SKIP
    >>> report.kept_on_request, report.shifted                                                # doctest: +SKIP
    (['PatientAge'], ['ContentDate', 'StudyDate'])
    """
    keep_set = keep_tags(keep)
    source_burned_in = str(ds.get("BurnedInAnnotation") or "").strip().upper()
    out = copy.deepcopy(Dataset(ds))  # Dataset(ds) drops FileDataset's path and preamble
    shift = uid_map.date_shift_days(str(ds.get("PatientID") or "")) if shift_dates else None
    tally = _Tally()
    _clean_level(out, _Rules(uid_map, keep_set, shift), tally)

    burned_in = "NO" if pixels_cleaned or source_burned_in == "NO" else "YES"
    identity_removed = "NO" if tally.identity_kept else "YES"
    # A date kept as it was outweighs shifted ones: the file must not claim more than is true.
    temporal = "UNMODIFIED" if tally.dates_kept else "MODIFIED" if shift_dates else "REMOVED"
    _mark_deidentified(out, pixels_cleaned, burned_in, identity_removed, temporal, shift_dates)
    source_meta = getattr(ds, "file_meta", None)
    out.file_meta = _minimal_meta(out, source_meta)
    for elem in source_meta or []:
        if elem.tag not in _META_REBUILT:
            tally.note("file_meta_removed", elem.keyword or str(elem.tag), str(elem.tag))

    _, _, edition = profile_table()
    report = DeidReport(
        profile=PROFILE_NAME,
        profile_table=edition,
        **tally.lists(),
        tags=dict(sorted(tally.tags.items())),
        dates_shifted=shift_dates,
        patient_identity_removed=identity_removed,
        pixel_data="cleaned" if pixels_cleaned else "copied" if "PixelData" in ds else "none",
        uids_remapped=len(tally.uids),
        private_tags_removed=tally.private,
        pixels_cleaned=pixels_cleaned,
        burned_in_annotation=burned_in,
    )
    return out, report


_TAG_TEXT = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\s*\)?")


def keep_tags(names: Iterable[str | int]) -> frozenset[BaseTag]:
    """Tags named by ``keep`` / ``--keep``: keywords (``PatientAge``) or tags (``0010,1010``, ``(0010,1010)``,
    ``00101010``, an int).

    Raises
    ------
    DeidOptionError
        For a name that is neither a keyword pydicom knows nor a tag.
    """
    if isinstance(names, (str, int)):
        names = [names]
    tags = set()
    for name in names:
        if isinstance(name, int):
            tags.add(Tag(name))
            continue
        text = str(name).strip()
        match = _TAG_TEXT.fullmatch(text)
        number = int(match[1] + match[2], 16) if match else tag_for_keyword(text)
        if number is None:
            raise DeidOptionError(f"--keep {printable(text)}: not a DICOM keyword or tag; give a keyword such as "
                                  "PatientAge or a tag such as 0010,1010")
        tags.add(Tag(number))
    return frozenset(tags)


@dataclass(frozen=True)
class _Rules:
    uid_map: UidMap
    keep: frozenset[BaseTag]
    shift_days: int | None  # None: dates follow the table


def _clean_level(ds: Dataset, rules: _Rules, tally: _Tally, path: tuple[str, str] = ("", "")) -> None:
    """Clean one dataset level (keep-list, table, date shift, allow-list); kept sequences are cleaned item by item.

    ``path`` is the (keyword path, tag path) of the sequence holding this level, each ending in '>'.
    """
    for tag in list(ds.keys()):
        elem = ds[tag]  # converts raw elements so values can be changed
        # keyword_for_tag also names repeating groups (OverlayDescription of 60xx)
        name = path[0] + (elem.keyword or keyword_for_tag(tag) or str(elem.tag))
        tags = path[1] + str(elem.tag)
        kind = _clean_element(ds, elem, rules, tally)
        if kind == "kept_on_request":
            tally.identity_kept |= _action_for(tag) is not None or tag.is_private
            tally.dates_kept |= elem.VR in ("DA", "DT")
        if elem.VR == "SQ" and kind in ("kept", "kept_on_request"):
            for item in elem.value:
                _clean_level(item, rules, tally, (name + ">", tags + ">"))
        tally.private += kind == "private_removed"
        tally.note(kind, name, tags)


def _clean_element(ds: Dataset, elem: DataElement, rules: _Rules, tally: _Tally) -> str:
    """Apply the first rule that decides ``elem`` (changing or deleting it in ``ds``); return the report list."""
    tag = elem.tag
    if tag in rules.keep:
        return "kept_on_request"
    if tag.is_private:
        del ds[tag]
        return "private_removed"
    if _is_curve_or_overlay(tag):
        del ds[tag]
        return "removed"
    if rules.shift_days is not None and tag in _TEMPORAL:
        return _shift_dates(elem, rules.shift_days)
    code = _action_for(tag)
    if code in _REMOVE:
        del ds[tag]
        return "removed"
    if code in _EMPTY or (code == "D" and elem.VR == "SQ"):
        elem.value = Sequence() if elem.VR == "SQ" else elem.empty_value
        return "emptied"
    if code == "X/Z/U*":  # references the profile keeps: items cleaned, UIDs remapped
        if elem.VR == "SQ":
            return "kept"
        if elem.VR == "UI":
            return _remap_uids(elem, rules.uid_map, tally)
        elem.value = elem.empty_value
        return "emptied"
    if code == "U" or (code == "D" and elem.VR == "UI"):
        return _remap_uids(elem, rules.uid_map, tally)
    if code == "D":
        _replace_with_dummy(elem)
        return "replaced"
    return _allow(ds, elem)


def _allow(ds: Dataset, elem: DataElement) -> str:
    """An attribute the table leaves alone: kept only when on the allow-list."""
    if elem.tag in _ALLOWED:
        return _check_code_meaning(ds, elem) if elem.keyword == "CodeMeaning" else "kept"
    if elem.tag in _EMPTIED:
        elem.value = elem.empty_value
        return "emptied"
    del ds[elem.tag]
    return "removed_by_allowlist"


def _check_code_meaning(item: Dataset, elem: DataElement) -> str:
    """A Code Meaning is free text: kept when it is a meaning the standard gives the code, else replaced or removed."""
    known = _standard_meanings(str(item.get("CodingSchemeDesignator") or "").strip(),
                               str(item.get("CodeValue") or "").strip())
    if not known:
        del item[elem.tag]
        return "removed_by_allowlist"
    if str(elem.value or "").strip().casefold() in {m.casefold() for m in known}:
        return "kept"
    elem.value = known[0]
    return "replaced"


def _standard_meanings(scheme: str, code: str) -> tuple[str, ...]:
    """The meanings pydicom's code dictionaries (DCM, SCT, LN, UCUM, ...) give a code; SRT codes by their SCT id."""
    table, srt_to_sct = _code_dictionary()
    if scheme == "SRT" and code in srt_to_sct:
        scheme, code = "SCT", srt_to_sct[code]
    return table.get((scheme, code), ())


@lru_cache(maxsize=1)
def _code_dictionary() -> tuple[dict[tuple[str, str], tuple[str, ...]], dict[str, str]]:
    try:  # pydicom's private modules; without them no meaning can be checked, so none is kept
        from pydicom.sr._concepts_dict import concepts
        from pydicom.sr._snomed_dict import mapping
    except ImportError:  # pragma: no cover - a pydicom that moved them
        return {}, {}
    table: dict[tuple[str, str], list[str]] = {}
    for scheme, by_name in concepts.items():
        for codes in by_name.values():
            for code, (meaning, _cids) in codes.items():
                table.setdefault((scheme, code), []).append(meaning)
    return {k: tuple(v) for k, v in table.items()}, dict(mapping.get("SRT", {}))


def _shift_dates(elem: DataElement, days: int) -> str:
    """Move a DA / DT value by ``days`` (time, fraction and UTC offset of a DT kept); a TM keeps its time of day.

    A value that is not a whole date (a year alone, damaged text) cannot be shifted and is emptied.
    """
    if elem.VR == "TM" or elem.VM == 0:
        return "kept"
    values = list(elem.value) if elem.VM > 1 else [elem.value]
    shifted = [_shift_date_text(str(v), days) if elem.VR in ("DA", "DT") else None for v in values]
    if None in shifted:
        elem.value = elem.empty_value
        return "emptied"
    elem.value = shifted if elem.VM > 1 else shifted[0]
    return "shifted"


def _shift_date_text(value: str, days: int) -> str | None:
    match = re.fullmatch(r"(\d{8})([0-9.+\-]*)", value.strip())
    if not match:
        return None
    try:
        date = datetime.datetime.strptime(match[1], "%Y%m%d").date() + datetime.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{date.year:04d}{date.month:02d}{date.day:02d}{match[2]}"


def _remap_uids(elem: DataElement, uid_map: UidMap, tally: _Tally) -> str:
    if elem.VR != "UI" or elem.VM == 0:
        elem.value = elem.empty_value  # a non-UID value under a UID action: drop it
        return "emptied"
    values = list(elem.value) if elem.VM > 1 else [elem.value]
    tally.uids.update(str(v) for v in values)
    new = [uid_map.new_uid(v) for v in values]
    elem.value = new if elem.VM > 1 else new[0]
    return "replaced"


def _replace_with_dummy(elem: DataElement) -> None:
    dummy = _DUMMIES.get(elem.VR, None)
    elem.value = dummy if dummy is not None else elem.empty_value


def _code_item(code: tuple[str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodeMeaning = code
    item.CodingSchemeDesignator = "DCM"
    return item


def _mark_deidentified(ds: Dataset, pixels_cleaned: bool, burned_in: str, identity_removed: str,
                       temporal: str, shifted: bool) -> None:
    """The claims the file makes about itself; ``identity_removed`` is NO when the caller kept an identifying one."""
    ds.PatientIdentityRemoved = identity_removed
    ds.DeidentificationMethod = [PROFILE_NAME, _ALLOWLIST_NAME] + ([_CODE_MODIFIED_DATES[1]] if shifted else [])
    codes = [_CODE_BASIC] + [_CODE_CLEAN_PIXELS] * pixels_cleaned + [_CODE_MODIFIED_DATES] * shifted
    ds.DeidentificationMethodCodeSequence = Sequence([_code_item(c) for c in codes])
    ds.LongitudinalTemporalInformationModified = temporal  # REMOVED, MODIFIED (shifted) or UNMODIFIED (kept)
    ds.BurnedInAnnotation = burned_in


def _minimal_meta(ds: Dataset, source_meta: Dataset | None) -> FileMetaDataset:
    """File meta with only what the new file needs; the source's AE titles etc. are dropped."""
    meta = FileMetaDataset()
    ts = (source_meta or {}).get("TransferSyntaxUID")
    if ts:
        meta.TransferSyntaxUID = ts
    if "SOPClassUID" in ds and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return meta


# --------------------------------------------------------------------------- files


def deidentify_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    uid_map: UidMap,
    clean_pixels: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    shift_dates: bool = False,
    keep: Iterable[str | int] = (),
) -> DeidReport:
    """De-identify one DICOM file into a new file; ``src`` is never modified.

    Parameters
    ----------
    src : str or PathLike
        DICOM file to read.
    dst : str or PathLike
        Output file (written atomically); must not be ``src``.
    uid_map : UidMap
        Shared across the files of a batch (see ``UidMap``).
    clean_pixels : callable, optional
        ``f(frame) -> frame`` on uint8 frames as read, H x W grey or H x W x 3 BGR
        for a colour file, removing burned-in text (e.g. fetalkit's text remover).
        When given, every frame is decoded (``read_dicom(colour=True)``: palette and
        YBR become RGB, >8 bit becomes 8 bit), cleaned, and written uncompressed as
        an 8-bit US image in the source's colour (MONOCHROME2 or RGB; a lossy
        source stays flagged lossy) with Burned In Annotation NO.
        When None, the pixel data is copied (any transfer syntax, even ones
        fetalkit cannot decode) and Burned In Annotation is YES unless the source
        said NO; JPEG, JPEG-LS and JPEG 2000 frames lose their comment and
        application segments on the way, their image bytes unchanged
        (``fetalkit.io.encapsulated``).
    shift_dates, keep
        As in ``deidentify_dataset``.

    Returns
    -------
    DeidReport

    Raises
    ------
    InputError
        ``dst`` is ``src``, ``src`` is not a readable DICOM file, or its copied
        JPEG / JPEG 2000 frames cannot be parsed.
    DeidOptionError
        A ``keep`` entry names no attribute.
    """
    keep = keep_tags(keep)  # a mistyped --keep fails before any file is read
    src_path, dst_path = Path(src), Path(dst)
    if _same_file(src_path, dst_path):
        raise InputError(f"{printable(dst_path)}: output would overwrite the input; "
                         "write the de-identified copy elsewhere")
    fps_assumed = None
    if clean_pixels is None:
        source = open_dataset(src_path)
        out, report = deidentify_dataset(source, uid_map, pixels_cleaned=False, shift_dates=shift_dates, keep=keep)
        report.pixel_data = _strip_pixel_metadata(src_path, source, out)
        save_dataset(dst_path, out)
    else:
        clip = read_dicom(src_path, colour=True)  # the output keeps the source's colour
        cleaned = np.stack([_clean_frame(clean_pixels, frame) for frame in clip.frames])
        out, report = deidentify_dataset(clip.dataset, uid_map, pixels_cleaned=True, shift_dates=shift_dates,
                                         keep=keep)
        fps = clip.fps
        if fps is None and len(cleaned) > 1:  # a cine must state its timing: the default, reported
            from fetalkit.io.video import DEFAULT_FPS
            fps = fps_assumed = DEFAULT_FPS
        write_dicom(dst_path, cleaned, template=out, fps=fps, burned_in_annotation="NO",
                    sop_instance_uid=out.SOPInstanceUID)
        # the claims (Burned In Annotation NO, Clean Pixel Data, identity removed) stand only when the audit agrees
        report.pixels_verified, report.pixel_residual = verify_written_pixels(src_path, dst_path)
        if not report.pixels_verified:
            report.burned_in_annotation, report.patient_identity_removed = "YES", "NO"
    report.source, report.output = printable(src_path), printable(dst_path)
    report.fps_assumed = fps_assumed
    return report


def verify_written_pixels(src: Path, dst: Path) -> tuple[bool, float]:
    """Audit the cleaned output's pixels against the source (:func:`fetalkit.audit.pixels.audit_pixels`:
    the residual-structure measure and, when Tesseract is installed, OCR); where text is left,
    take back the claims: Burned In Annotation YES, Patient Identity Removed NO, no Clean Pixel
    Data code.  Returns (verified, the largest residual ratio)."""
    from fetalkit.audit.pixels import audit_pixels
    pixels = audit_pixels(src, dst)
    if not pixels.leak:
        return True, float(pixels.residual or 0.0)
    ds = open_dataset(dst)
    ds.BurnedInAnnotation = "YES"
    ds.PatientIdentityRemoved = "NO"
    if "DeidentificationMethodCodeSequence" in ds:
        ds.DeidentificationMethodCodeSequence = [c for c in ds.DeidentificationMethodCodeSequence
                                                 if c.get("CodeValue") != _CODE_CLEAN_PIXELS[0]]
    save_dataset(dst, ds)
    return False, float(pixels.residual or 0.0)


def _strip_pixel_metadata(path: Path, source: Dataset, out: Dataset) -> str:
    """Copied pixel data: JPEG-family frames lose COM / APPn / XML boxes (``out`` changed); says what was done."""
    from fetalkit.io.encapsulated import strip_pixel_data
    if "PixelData" not in out:
        return "none"
    ts = UID(source.file_meta.TransferSyntaxUID)
    if not ts.is_encapsulated:
        return "copied (uncompressed)"
    offsets = ((source.ExtendedOffsetTable, source.ExtendedOffsetTableLengths)
               if "ExtendedOffsetTable" in source and "ExtendedOffsetTableLengths" in source else None)
    try:
        result = strip_pixel_data(source.PixelData, ts, int(source.get("NumberOfFrames") or 1), offsets)
    except Exception as e:  # pydicom raises many types on corrupt encapsulation; nothing is copied unread
        raise InputError(f"{printable(path)}: cannot parse the {ts.name} frames to remove their metadata ({e}); "
                         "de-identify with pixel cleaning (without --no-clean) so the frames are re-encoded") from None
    if result is None:
        if ts in RLETransferSyntaxes:
            return "copied (RLE Lossless: no metadata segments)"
        return f"copied uninspected ({ts.name}: the stream may carry metadata)"
    out.PixelData, removed = result
    out["PixelData"].VR = "OB"
    return f"copied; {removed} metadata segments removed from the {ts.name} frames"


def _clean_frame(clean_pixels: Callable[[np.ndarray], np.ndarray], frame: np.ndarray) -> np.ndarray:
    cleaned = np.asarray(clean_pixels(frame.copy()))  # a copy: the cleaner may work in place
    if cleaned.shape != frame.shape or cleaned.dtype != np.uint8:
        raise ValueError(f"clean_pixels must return a uint8 frame shaped like its input {frame.shape}, "
                         f"got {cleaned.shape} {cleaned.dtype}")
    return cleaned


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)
