"""Frames of the public sets for image-level tools (burned-in text removal).

Each dataset keeps its own group split (HC18 by subject, PSFHS by id block, both
with :func:`fetalkit.datasets.splits.select_split`), so the frames a text model
is tested on are the frames the head and PSFHS models were tested on too.
A user's own folder of frames is split frame by frame (one group per file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from fetalkit.datasets.hc18 import list_hc18
from fetalkit.datasets.psfhs import list_psfhs, psfhs_groups
from fetalkit.datasets.splits import select_split
from fetalkit.errors import DataError
from fetalkit.io.images import expand_inputs


def split_frames(part: str, seed: int = 0, hc18: Optional[Path] = None, psfhs: Optional[Path] = None,
                 folders: Sequence[Path] = ()) -> list[Path]:
    """Image paths of one split part (``train`` / ``val`` / ``test`` / ``all``) of each source given."""
    chosen: list[Path] = []
    if hc18 is not None:
        items = list_hc18(hc18)
        chosen += [items[i].image_path for i in select_split([it.subject_id for it in items], part, seed)]
    if psfhs is not None:
        items = list_psfhs(psfhs)
        groups = psfhs_groups([it.image_id for it in items])
        chosen += [items[i].image_path for i in select_split(groups, part, seed)]
    for folder in folders:
        paths = expand_inputs([folder])
        if len(paths) < 3:
            raise DataError(f"{folder}: need at least 3 frames to split into train / val / test, found {len(paths)}")
        chosen += [paths[i] for i in select_split([p.name for p in paths], part, seed)]
    return chosen
