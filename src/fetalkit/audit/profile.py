"""The header part of ``fetalkit audit deid``: the PS3.15 profile's required actions, scored.

For every element of the original, at every nesting level and in the file meta,
:func:`fetalkit.deid.profile_table` (Table E.1-1 of PS3.15, as shipped by
``dicom-anonymizer``) says what the Basic Profile requires; the output is looked
up at the same place (the same sequence item) and each required action is scored
performed or not, as the MIDI-B de-identification benchmark scores an output: by
its effect, not by the letter of the code.

=============  ==============================================================
X              the element is absent
X/Z            absent, or empty
X/D, X/Z/D     absent, (empty,) or a value other than the original's
Z, Z/D         absent or empty (Z/D: or another value)
D              absent, empty or another value (a dummy)
U              absent, empty, or a UID other than the original, the same new
               UID wherever the original UID appears in the file
X/Z/U*         a sequence: its items are scored element by element; a UID: as U
private        every private element (odd group): absent
=============  ==============================================================

"Another value" means a value that neither equals the original nor contains it.
A sequence acted on counts as one action (its nested elements go with it).
When the output declares the Modified Dates option (Longitudinal Temporal
Information Modified = MODIFIED), a date (DA, DT) with another value counts as
performed and times of day (TM) are retained by the option: not scored.

Elements of the output that the table does not act on and that are not on
:data:`SAFE_KEYWORDS` (what an ultrasound image needs to be read, displayed and
measured, and the de-identification attributes) are listed as *kept, not known
safe*: not leaks, but nobody has said they are harmless.  Empty elements are not
listed (they say nothing).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterator, Optional

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from fetalkit.deid import ALLOWED_KEYWORDS

__all__ = ["SAFE_KEYWORDS", "ProfileAudit", "required_action", "audit_profile", "walk"]

_REMOVE_ONLY = {"X"}
_EMPTY_OK = {"X/Z", "X/Z/D", "Z", "Z/D", "D", "U", "X/Z/U*"}
_OTHER_OK = {"X/D", "X/Z/D", "Z/D", "D"}

# What an ultrasound image may keep: fetalkit's de-identification allow-list (one list for
# the tool and its audit), plus the file meta and the identifiers every DICOM file must
# carry (their values are checked apart: UIDs remapped, the rest structural).
SAFE_KEYWORDS = frozenset(ALLOWED_KEYWORDS) | frozenset({
    "FileMetaInformationGroupLength", "FileMetaInformationVersion", "MediaStorageSOPClassUID",
    "MediaStorageSOPInstanceUID", "TransferSyntaxUID", "ImplementationClassUID", "ImplementationVersionName",
    "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PositionReferenceIndicator", "RescaleType",
})


# --------------------------------------------------------------------------- the table


def required_action(tag: int) -> Optional[str]:
    """The profile's action code for a tag ("X", "Z", "D", "U", "X/Z", ...), "X" for a private
    element, None when the table does not act on it."""
    from fetalkit.deid import profile_table
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2 == 1:
        return "X"
    exact, masked, _ = profile_table()
    code = exact.get(tag)
    if code is not None:
        return code
    for g, e, gm, em, c in masked:
        if group & gm == g & gm and element & em == e & em:
            return c
    return None


# --------------------------------------------------------------------------- walking


Path = tuple[tuple[int, int], ...]  # (tag, item index) per sequence level, then (tag, -1)


def _name(elem: DataElement) -> str:
    if elem.tag.is_private:
        return f"private {elem.tag}"
    return elem.keyword or str(elem.tag)


def walk(ds: Dataset, prefix: Path = (), name: str = "") -> Iterator[tuple[Path, str, DataElement]]:
    """Every element of ``ds`` at every level: (path, ``Seq>Attr`` name, element); sequences before their items."""
    for elem in ds:
        path = prefix + ((int(elem.tag), -1),)
        full = name + _name(elem)
        yield path, full, elem
        if elem.VR == "SQ" and elem.value is not None:
            for i, item in enumerate(elem.value):
                yield from walk(item, prefix + ((int(elem.tag), i),), full + ">")


def lookup(ds: Optional[Dataset], path: Path) -> Optional[DataElement]:
    """The element at ``path`` in ``ds``, None when it (or a sequence item above it) is not there."""
    for tag, index in path[:-1]:
        if ds is None or tag not in ds:
            return None
        elem = ds[tag]
        if elem.VR != "SQ" or elem.value is None or index >= len(elem.value):
            return None
        ds = elem.value[index]
    if ds is None or path[-1][0] not in ds:
        return None
    return ds[path[-1][0]]


def _values(elem: DataElement) -> list[str]:
    """The element's values as text (one per value of a multi-valued element)."""
    value = elem.value
    if value is None or value == "" or value == b"":
        return []
    if isinstance(value, (bytes, bytearray)):
        return [bytes(value).hex()]
    if elem.VR == "SQ":
        return [str(item) for item in value]
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return [str(value)]


def is_empty(elem: DataElement) -> bool:
    if elem.VR == "SQ":
        return not elem.value
    return not any(v.strip().strip("\x00") for v in _values(elem))


def _other_value(orig: DataElement, out: DataElement) -> bool:
    """The output holds a value that neither equals nor contains the original's."""
    a = [v.strip().upper() for v in _values(orig) if v.strip()]
    b = " ".join(_values(out)).upper()
    return bool(a) and not any(v in b for v in a)


# --------------------------------------------------------------------------- audit


@dataclass
class ProfileAudit:
    """Required actions of the Basic Profile for the tags present in the original, scored on the output.

    ``not_performed`` names each missed action (``attribute``, ``action``, ``found``:
    "kept" / "same value" / "UID not remapped" / "UID remapped inconsistently");
    ``kept_not_known_safe`` the output's elements that are neither acted on nor on
    :data:`SAFE_KEYWORDS`.  Names only, never values.
    """

    required_actions_total: int = 0
    required_actions_done: int = 0
    by_action: dict = field(default_factory=dict)       # code -> [done, total]
    not_performed: list = field(default_factory=list)
    uids_remapped: int = 0
    uids_inconsistent: int = 0
    dates_modified_option: bool = False
    kept_not_known_safe: list = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.required_actions_done / self.required_actions_total if self.required_actions_total else 1.0

    def as_dict(self) -> dict:
        return {**asdict(self), "share": round(self.share, 4)}


def _uid_values(elem: Optional[DataElement]) -> list[str]:
    return [] if elem is None else [v.strip().rstrip("\x00") for v in _values(elem) if v.strip()]


def audit_profile(original: Dataset, output: Optional[Dataset]) -> ProfileAudit:
    """Score the profile's required actions for ``original``'s elements on ``output``.

    ``output`` None means the output holds no DICOM attributes at all (an image or a
    video written from the pixels): every action counts as performed.
    """
    result = ProfileAudit()
    modified = output is not None and str(output.get("LongitudinalTemporalInformationModified", "")).upper() == "MODIFIED"
    result.dates_modified_option = modified
    uid_pairs: list[tuple[str, str, str, str]] = []  # (name, code, original, new)
    levels = [(getattr(original, "file_meta", None), getattr(output, "file_meta", None) if output else None),
              (original, output)]
    for orig_ds, out_ds in levels:
        if orig_ds is None:
            continue
        acted: list[Path] = []  # sequences acted on as a whole: their items go with them
        for path, name, elem in walk(orig_ds):
            if any(_under(path, s) for s in acted):
                continue
            code = required_action(int(elem.tag))
            if code is None or (code == "X/Z/U*" and elem.VR == "SQ"):
                continue
            if modified and elem.VR == "TM":
                continue  # retained by the Modified Dates option
            if elem.VR == "SQ":
                acted.append(path)
            out = lookup(out_ds, path) if output is not None else None
            done, found = _performed(code, elem, out, modified)
            if done and out is not None and elem.VR == "UI" and code in ("U", "X/Z/U*") and not is_empty(out):
                uid_pairs += [(name, code, a, b) for a, b in zip(_uid_values(elem), _uid_values(out))]
            _tally(result, "private" if elem.tag.is_private else code, name, done, found)
    _check_uids(result, uid_pairs)
    if output is not None:
        result.kept_not_known_safe = _kept(output)
    return result


def _under(path: Path, sequence: Path) -> bool:
    """Whether ``path`` lies inside an item of the sequence element at ``sequence``."""
    n = len(sequence)
    return len(path) > n and path[:n - 1] == sequence[:-1] and path[n - 1][0] == sequence[-1][0]


def _performed(code: str, orig: DataElement, out: Optional[DataElement], modified: bool) -> tuple[bool, str]:
    """(performed, what was found when not) for one required action."""
    if out is None:
        return True, ""
    if is_empty(out):
        return (code not in _REMOVE_ONLY), "kept (empty)"
    other = _other_value(orig, out)
    if code in ("U", "X/Z/U*") and orig.VR == "UI":
        return other, "UID not remapped"
    if other and (code in _OTHER_OK or (modified and orig.VR in ("DA", "DT"))):
        return True, ""
    return False, "kept" if other else "same value"


def _tally(result: ProfileAudit, code: str, name: str, done: bool, found: str) -> None:
    result.required_actions_total += 1
    counts = result.by_action.setdefault(code, [0, 0])
    counts[1] += 1
    if done:
        result.required_actions_done += 1
        counts[0] += 1
    else:
        result.not_performed.append({"attribute": name, "action": code, "found": found})


def _check_uids(result: ProfileAudit, pairs: list[tuple[str, str, str, str]]) -> None:
    """One original UID must become one new UID everywhere in the file, and no new UID may be an old one."""
    new_of: dict[str, set[str]] = {}
    for _, _, a, b in pairs:
        new_of.setdefault(a, set()).add(b)
    originals = set(new_of)
    bad = {a for a, news in new_of.items() if len(news) > 1 or news & originals}
    for name, code, a, _ in pairs:
        if a in bad:
            result.required_actions_done -= 1
            result.by_action[code][0] -= 1
            result.not_performed.append({"attribute": name, "action": code, "found": "UID remapped inconsistently"})
    result.uids_inconsistent = sum(1 for _, _, a, _ in pairs if a in bad)
    result.uids_remapped = len(originals - bad)


def _kept(output: Dataset) -> list[str]:
    """Names of the output's non-empty elements that the table does not act on and that are not known safe."""
    names = []
    for ds in (getattr(output, "file_meta", None), output):
        if ds is None:
            continue
        for _, name, elem in walk(ds):
            if elem.VR == "SQ" or elem.tag.is_private:
                continue  # sequences: their elements are judged; private ones: a required action already
            if required_action(int(elem.tag)) is not None or elem.keyword in SAFE_KEYWORDS or is_empty(elem):
                continue
            if name not in names:
                names.append(name)
    return names
