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
Added: Patient Identity Removed = YES, De-identification Method (+ code 113100,
and 113101 Clean Pixel Data Option when pixels were cleaned), Longitudinal
Temporal Information Modified = REMOVED, and an honest Burned In Annotation.

Not done (options of Annex E beyond the Basic Profile): retaining dates,
device or institution identity, safe private tags; cleaning free text
descriptions (they are removed instead); removing text burned into pixels,
which is the caller's ``clean_pixels`` function.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import generate_uid

from fetalkit.errors import InputError
from fetalkit.io.dicom import open_dataset, read_dicom, save_dataset, write_dicom
from fetalkit.io.images import atomic_write_bytes
from fetalkit.io.inputs import printable

__all__ = ["UidMap", "DeidReport", "deidentify_dataset", "deidentify_file", "profile_table"]

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


# --------------------------------------------------------------------------- UID map


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
    """What de-identification did to one dataset (attribute keywords only, never values).

    Nested attributes are named ``Sequence>Attribute``; private elements are only
    counted.  ``as_dict()`` is JSON-serialisable.
    """

    profile: str
    profile_table: str
    removed: list[str] = field(default_factory=list)
    emptied: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    uids_remapped: int = 0
    private_tags_removed: int = 0
    pixels_cleaned: bool = False
    burned_in_annotation: str = "YES"
    source: str | None = None
    output: str | None = None
    # Frame rate written into a cleaned cine that stated none (FrameTime, FrameTimeVector, CineRate): the
    # default, said so; None when the source's own timing was kept.
    fps_assumed: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class _Tally:
    """Mutable sets filled during the walk, turned into a sorted DeidReport at the end."""

    def __init__(self) -> None:
        self.removed: set[str] = set()
        self.emptied: set[str] = set()
        self.replaced: set[str] = set()
        self.kept: set[str] = set()
        self.uids: set[str] = set()
        self.private = 0


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


def deidentify_dataset(ds: Dataset, uid_map: UidMap, *, pixels_cleaned: bool = False) -> tuple[Dataset, DeidReport]:
    """Apply the Basic Application Level Confidentiality Profile to a copy of ``ds``.

    Parameters
    ----------
    ds : pydicom.Dataset
        Not modified.  Pixel data, if any, is copied unchanged: cleaning text
        burned into the pixels is the caller's job (``deidentify_file``).
    uid_map : UidMap
        Shared map of original -> new UIDs; grows as new UIDs are met.
    pixels_cleaned : bool
        True only when the pixels that will be stored with this header have had
        burned-in text removed.  Sets Burned In Annotation to NO and adds the
        Clean Pixel Data Option code.  When False, Burned In Annotation is YES
        unless the source itself said NO (its claim is passed on; the report's
        ``pixels_cleaned`` stays False).

    Returns
    -------
    (pydicom.Dataset, DeidReport)
        The de-identified dataset (a plain Dataset whose ``file_meta`` holds
        only the transfer syntax and the new SOP UIDs) and the report.
    """
    source_burned_in = str(ds.get("BurnedInAnnotation") or "").strip().upper()
    out = copy.deepcopy(Dataset(ds))  # Dataset(ds) drops FileDataset's path and preamble
    tally = _Tally()
    _clean_level(out, uid_map, tally, prefix="")

    burned_in = "NO" if pixels_cleaned or source_burned_in == "NO" else "YES"
    _mark_deidentified(out, pixels_cleaned, burned_in)
    out.file_meta = _minimal_meta(out, getattr(ds, "file_meta", None))

    _, _, edition = profile_table()
    report = DeidReport(
        profile=PROFILE_NAME,
        profile_table=edition,
        removed=sorted(tally.removed),
        emptied=sorted(tally.emptied),
        replaced=sorted(tally.replaced),
        kept=sorted(tally.kept - tally.removed - tally.emptied - tally.replaced),
        uids_remapped=len(tally.uids),
        private_tags_removed=tally.private,
        pixels_cleaned=pixels_cleaned,
        burned_in_annotation=burned_in,
    )
    return out, report


def _clean_level(ds: Dataset, uid_map: UidMap, tally: _Tally, prefix: str) -> None:
    """Apply the table to one dataset level and recurse into the sequences it keeps."""
    for tag in list(ds.keys()):
        elem = ds[tag]  # converts raw elements so values can be changed
        name = prefix + (elem.keyword or str(elem.tag))
        if tag.is_private:
            del ds[tag]
            tally.private += 1
            continue
        if _is_curve_or_overlay(tag):
            del ds[tag]
            tally.removed.add(name)
            continue
        code = _action_for(tag)
        if code is None or code == "X/Z/U*":
            if elem.VR == "SQ":
                for item in elem.value:
                    _clean_level(item, uid_map, tally, prefix=name + ">")
            elif code == "X/Z/U*" and elem.VR == "UI":
                _remap_uids(elem, uid_map, tally, name)
            elif code == "X/Z/U*":
                elem.value = elem.empty_value
                tally.emptied.add(name)
            else:
                tally.kept.add(name)
        elif code in _REMOVE:
            del ds[tag]
            tally.removed.add(name)
        elif code in _EMPTY or (code == "D" and elem.VR == "SQ"):
            elem.value = Sequence() if elem.VR == "SQ" else elem.empty_value
            tally.emptied.add(name)
        elif code == "U" or elem.VR == "UI":
            _remap_uids(elem, uid_map, tally, name)
        else:  # "D"
            _replace_with_dummy(elem)
            tally.replaced.add(name)


def _remap_uids(elem: DataElement, uid_map: UidMap, tally: _Tally, name: str) -> None:
    if elem.VR != "UI" or elem.VM == 0:
        if elem.VM:
            elem.value = elem.empty_value  # a non-UID value under a UID action: drop it
            tally.emptied.add(name)
        return
    values = list(elem.value) if elem.VM > 1 else [elem.value]
    tally.uids.update(str(v) for v in values)
    new = [uid_map.new_uid(v) for v in values]
    elem.value = new if elem.VM > 1 else new[0]
    tally.replaced.add(name)


def _replace_with_dummy(elem: DataElement) -> None:
    dummy = _DUMMIES.get(elem.VR, None)
    elem.value = dummy if dummy is not None else elem.empty_value


def _code_item(code: tuple[str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodeMeaning = code
    item.CodingSchemeDesignator = "DCM"
    return item


def _mark_deidentified(ds: Dataset, pixels_cleaned: bool, burned_in: str) -> None:
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = PROFILE_NAME
    codes = [_CODE_BASIC] + ([_CODE_CLEAN_PIXELS] if pixels_cleaned else [])
    ds.DeidentificationMethodCodeSequence = Sequence([_code_item(c) for c in codes])
    ds.LongitudinalTemporalInformationModified = "REMOVED"  # dates were removed, not shifted
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
        ``f(frame) -> frame`` on H x W uint8 grayscale frames, removing burned-in
        text (e.g. fetalkit's text remover).  When given, every frame is decoded
        (``read_dicom``: colour becomes gray, >8 bit becomes 8 bit), cleaned, and
        written as a MONOCHROME2 8-bit US image with Burned In Annotation NO.
        When None, the pixel data is copied byte for byte (any transfer syntax,
        even ones fetalkit cannot decode) and Burned In Annotation is YES unless
        the source said NO.

    Returns
    -------
    DeidReport

    Raises
    ------
    InputError
        ``dst`` is ``src``, or ``src`` is not a readable DICOM file.
    """
    src_path, dst_path = Path(src), Path(dst)
    if _same_file(src_path, dst_path):
        raise InputError(f"{printable(dst_path)}: output would overwrite the input; "
                         "write the de-identified copy elsewhere")
    fps_assumed = None
    if clean_pixels is None:
        out, report = deidentify_dataset(open_dataset(src_path), uid_map, pixels_cleaned=False)
        save_dataset(dst_path, out)
    else:
        clip = read_dicom(src_path)
        cleaned = np.stack([_clean_frame(clean_pixels, frame) for frame in clip.frames])
        out, report = deidentify_dataset(clip.dataset, uid_map, pixels_cleaned=True)
        fps = clip.fps
        if fps is None and len(cleaned) > 1:  # a cine must state its timing: the default, reported
            from fetalkit.io.video import DEFAULT_FPS
            fps = fps_assumed = DEFAULT_FPS
        write_dicom(dst_path, cleaned, template=out, fps=fps, burned_in_annotation="NO",
                    sop_instance_uid=out.SOPInstanceUID)
    report.source, report.output = printable(src_path), printable(dst_path)
    report.fps_assumed = fps_assumed
    return report


def _clean_frame(clean_pixels: Callable[[np.ndarray], np.ndarray], frame: np.ndarray) -> np.ndarray:
    cleaned = np.asarray(clean_pixels(frame.copy()))  # a copy: the cleaner may work in place
    if cleaned.shape != frame.shape or cleaned.dtype != np.uint8:
        raise ValueError(f"clean_pixels must return an H x W uint8 frame like its input {frame.shape}, "
                         f"got {cleaned.shape} {cleaned.dtype}")
    return cleaned


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)
