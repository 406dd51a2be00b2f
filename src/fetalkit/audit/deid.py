"""``fetalkit audit deid ORIGINAL OUTPUT``: what a de-identified file still reveals.

Three checks, on any output (fetalkit's or another tool's; DICOM, image or video):

1. **Profile** (DICOM original and output, :mod:`fetalkit.audit.profile`): the PS3.15
   Basic Profile's required actions for the tags present in the original, scored on
   the output as MIDI-B scores them; the output's attributes that are neither acted on
   nor known safe are listed ("kept, not known safe"), with a non-empty preamble and
   JPEG / JPEG 2000 comment and application segments in the pixel data.
2. **Identifying strings** (:mod:`fetalkit.audit.strings`): every value of the
   original's identifying attributes, in several spellings, searched in the output's
   bytes and in what OCR reads in its pixels.
3. **Pixels** (:mod:`fetalkit.audit.pixels`): residual burned-in text (edge energy
   in the original's text regions, OCR of the contrast-stretched regions), frames,
   size and colour.

The output *leaks* when a required action was not performed, an identifying string
is found, residual text passes ``max_residual`` or OCR reads a word there, or its
pixels could not be compared.  "Colour lost", "kept, not known safe" and "OCR
unavailable" are reported without making it leak.

>>> audit = audit_deid("scan.dcm", "anon.dcm")           # doctest: +SKIP
>>> audit.clean, audit.required_actions_done, audit.required_actions_total
(True, 39, 39)
>>> print(audit.summary())                              # doctest: +SKIP
audit deid anon.dcm: clean: no identifying string; residual text 0.004 (max 0.03), OCR reads nothing; ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fetalkit.audit.pixels import MAX_RESIDUAL, PixelAudit, audit_pixels
from fetalkit.audit.profile import ProfileAudit, audit_profile
from fetalkit.audit.strings import (identifying_needles, image_metadata_needles, output_regions, pixel_segments,
                                    search_output, segment_known_safe)
from fetalkit.errors import FetalkitError, InputError
from fetalkit.io.inputs import printable

__all__ = ["DeidAudit", "audit_deid"]

_NAMES_SHOWN = 4


@dataclass
class DeidAudit:
    """The result of :func:`audit_deid` (names of attributes, never their values).

    Attributes
    ----------
    leaks : every leak, as ``{"kind": ..., ...}``: "identifying string" (attribute,
        where, form), "required action" (attribute, action, found), "residual text"
        (residual, location), "OCR" (words), "pixels not compared" (reason).
    required_actions_done, required_actions_total : the profile's required actions
        for the original's tags, performed / all (0 / 0 when the original is not DICOM).
    pixels : the pixel audit, None when the files hold no pixels to compare.
    profile : the profile audit, None when the original is not DICOM.
    strings : the identifying strings found (attribute, where, form).
    kept_not_known_safe : output attributes and embedded segments nobody has said are harmless.
    notes : what the audit could not do ("OCR unavailable", a colour lost, a claim contradicted).
    """

    original: str
    output: str
    kind: str
    leaks: list = field(default_factory=list)
    required_actions_done: int = 0
    required_actions_total: int = 0
    pixels: Optional[PixelAudit] = None
    profile: Optional[ProfileAudit] = None
    strings: list = field(default_factory=list)
    identifying_values: int = 0
    kept_not_known_safe: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    max_residual: float = MAX_RESIDUAL

    @property
    def clean(self) -> bool:
        return not self.leaks

    def as_dict(self) -> dict:
        return {"original": self.original, "output": self.output, "kind": self.kind, "clean": self.clean,
                "leaks": self.leaks, "required_actions_done": self.required_actions_done,
                "required_actions_total": self.required_actions_total,
                "required_actions_share": round(self.required_actions_done / self.required_actions_total, 4)
                if self.required_actions_total else None,
                "profile": self.profile.as_dict() if self.profile else None,
                "strings": self.strings, "identifying_values_searched": self.identifying_values,
                "pixels": self.pixels.as_dict() if self.pixels else None,
                "kept_not_known_safe": self.kept_not_known_safe, "notes": self.notes,
                "max_residual": self.max_residual, "summary": self.summary()}

    def summary(self) -> str:
        """One line: LEAK or clean, what leaks, the share of required actions performed."""
        parts = []
        strings = sorted({s["attribute"] for s in self.strings})
        if strings:
            parts.append(f"{len(strings)} identifying string{'s' if len(strings) > 1 else ''} ({_names(strings)})")
        missed = [n["attribute"] for n in self.profile.not_performed] if self.profile else []
        if missed:
            parts.append(f"{len(missed)} required action{'s' if len(missed) > 1 else ''} not performed "
                         f"({_names(missed)})")
        if self.pixels is not None:
            parts += [f for f in self.pixels.findings if not f.startswith("OCR unavailable")]
            if self.leaks and self.pixels.residual > self.max_residual and self.pixels.ocr_available \
                    and not self.pixels.ocr_tokens:
                parts.append("OCR reads nothing")  # what a person reads after a contrast stretch, OCR may not
        parts += [leak["reason"] for leak in self.leaks if leak["kind"] == "pixels not audited"]
        parts += [n for n in self.notes if n.startswith("the output claims")]
        head = f"audit deid {self.output}: " + ("LEAK: " if self.leaks else "clean: ")
        if not self.leaks:
            px = self.pixels
            clean_parts = ["no identifying string"]
            if px is not None and px.comparable:
                clean_parts.append(f"residual text {px.residual:.3f} (max {self.max_residual:g})"
                                   + (", OCR reads nothing" if px.ocr_available else ""))
            parts = clean_parts + parts
        tail = []
        if self.required_actions_total:
            tail.append(f"required actions {100 * self.required_actions_done / self.required_actions_total:.1f} % "
                        f"({self.required_actions_done}/{self.required_actions_total})")
        if self.kept_not_known_safe:
            tail.append(f"{len(self.kept_not_known_safe)} kept, not known safe ({_names(self.kept_not_known_safe)})")
        tail += [n for n in self.notes if n.startswith("OCR unavailable")]
        return head + ", ".join(parts) + ("; " + "; ".join(tail) if tail else "")


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (", ..." if len(names) > _NAMES_SHOWN else "")


def _kind(path: Path) -> str:
    from fetalkit.io.images import is_dicom_file
    from fetalkit.io.inputs import IMAGE_SUFFIXES
    from fetalkit.io.video import VIDEO_SUFFIXES
    if path.is_dir():
        return "folder"
    if is_dicom_file(path):
        return "dicom"
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else "other"


def _check_file(path: Path, role: str) -> None:
    if not path.exists():
        raise InputError(f"{printable(path)}: {role} not found; give the file that was de-identified and its output")
    if path.is_dir():
        raise InputError(f"{printable(path)}: is a folder; `fetalkit audit deid` compares one original with one output")


def audit_deid(original_path: str | Path, output_path: str | Path, *, max_residual: float = MAX_RESIDUAL,
               ocr: bool = True) -> DeidAudit:
    """Audit a de-identified output against its original.

    Parameters
    ----------
    original_path : the file before de-identification (DICOM, image or video).
    output_path : the de-identified file (DICOM, image or video; any tool's).
    max_residual : residual text above this is a leak (default 0.03).
    ocr : read the text regions with Tesseract when it is installed.

    Returns
    -------
    DeidAudit (``clean``, ``leaks``, ``summary()``, ``as_dict()``).

    Raises
    ------
    InputError
        A file is missing, a folder, or not readable as what its name says.
    """
    from fetalkit.io.dicom import open_dataset
    src, dst = Path(original_path), Path(output_path)
    _check_file(src, "original")
    _check_file(dst, "output")
    src_kind, dst_kind = _kind(src), _kind(dst)
    audit = DeidAudit(original=printable(src), output=printable(dst), kind=f"{src_kind} -> {dst_kind}",
                      max_residual=max_residual)
    orig_ds = open_dataset(src) if src_kind == "dicom" else None
    out_ds = open_dataset(dst) if dst_kind == "dicom" else None

    if orig_ds is not None:
        audit.profile = audit_profile(orig_ds, out_ds)
        audit.required_actions_done = audit.profile.required_actions_done
        audit.required_actions_total = audit.profile.required_actions_total
        audit.kept_not_known_safe += audit.profile.kept_not_known_safe
        audit.leaks += [{"kind": "required action", **n} for n in audit.profile.not_performed]
        needles = identifying_needles(orig_ds)
    else:
        needles = image_metadata_needles(src) if src_kind == "image" else []
    audit.identifying_values = len({n.attribute for n in needles})
    if out_ds is not None:
        audit.kept_not_known_safe += _embedded(dst, out_ds)

    has_pixels = orig_ds is None or "PixelData" in orig_ds
    if has_pixels:
        try:
            audit.pixels = audit_pixels(src, dst, max_residual=max_residual, ocr=ocr)
        except FetalkitError as e:
            audit.leaks.append({"kind": "pixels not audited", "reason": f"pixels not audited ({e})"})
    if audit.pixels is not None:
        px = audit.pixels
        if not px.comparable:
            audit.leaks.append({"kind": "pixels not compared", "reason": px.findings[0] if px.findings else ""})
        if px.residual > max_residual:
            audit.leaks.append({"kind": "residual text", "residual": px.residual, "location": px.location,
                                "frame": px.worst_frame})
        if px.ocr_tokens:
            audit.leaks.append({"kind": "OCR", "words": len(px.ocr_tokens)})
        if px.ocr_note:
            audit.notes.append(px.ocr_note)
        if px.colour_lost:
            audit.notes.append(f"colour lost ({px.colour_original} -> {px.colour_output})")

    hits = search_output(needles, output_regions(dst, out_ds is not None),
                         ocr_text=" ".join(audit.pixels.ocr_tokens) if audit.pixels else "")
    audit.strings = [h.as_dict() for h in hits]
    audit.leaks += [{"kind": "identifying string", **h.as_dict()} for h in hits]
    _check_claims(audit, out_ds)
    return audit


def _embedded(path: Path, ds) -> list[str]:
    """A preamble that is not zero, and comment / application segments in the pixel data, as names."""
    found = []
    with open(path, "rb") as f:
        head = f.read(132)
    if head[128:132] == b"DICM" and any(head[:128]):
        found.append(f"preamble ({sum(b != 0 for b in head[:128])} non-zero bytes)")
    for label, payload in pixel_segments(ds):
        if not segment_known_safe(label, payload) and f"pixel data {label}" not in found:
            found.append(f"pixel data {label}")
    return found


def _check_claims(audit: DeidAudit, out_ds) -> None:
    """Say so when the output claims what the audit does not find (PatientIdentityRemoved, BurnedInAnnotation)."""
    if out_ds is None:
        return
    if audit.leaks and str(out_ds.get("PatientIdentityRemoved", "")).upper() == "YES":
        audit.notes.append("the output claims PatientIdentityRemoved YES")
    pixel_leak = any(leak["kind"] in ("residual text", "OCR") for leak in audit.leaks)
    if pixel_leak and str(out_ds.get("BurnedInAnnotation", "")).upper() == "NO":
        audit.notes.append("the output claims BurnedInAnnotation NO")
