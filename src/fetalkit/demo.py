"""``fetalkit demo``: the main job end to end on the embedded phantom (no data, no torch needed)."""

from __future__ import annotations

import time
from pathlib import Path

from fetalkit.biometry.head_job import measure_files
from fetalkit.datasets.hc18 import read_pixel_csv


def run_head_demo(out_dir: Path, n: int = 6, seed: int = 0) -> list[dict]:
    """Write ``n`` phantom head images, measure them with the bundled model; rows with truth beside result."""
    from fetalkit.synth.phantom import write_phantom_folder
    images_dir = out_dir / "phantoms"
    csv_path = write_phantom_folder(images_dir, n=n, seed=seed)
    truth = read_pixel_csv(csv_path)
    t0 = time.perf_counter()
    rows = measure_files([images_dir], out_dir / "biometry", pixel_csv=csv_path)
    seconds = time.perf_counter() - t0
    for r in rows:
        r["hc_true_mm"] = truth[Path(r["filename"]).name][1]
        r["seconds_total"] = seconds
    return rows


def phantom_clip(out_path: Path, n_frames: int = 120, seed: int = 0, shape_hw: tuple[int, int] = (360, 540)) -> dict:
    """A phantom scan clip with a known head track: smooth probe motion, speckle, a few blurred /
    faded frames and one cut-away (rows holding the head blanked, as when the probe looks away).

    Writes ``out_path`` (MJPG .avi, 20 fps) and returns the per-frame truth boxes (None = absent).
    """
    import numpy as np
    from fetalkit.io.video import VideoSink
    from fetalkit.synth.phantom import head_phantom
    from fetalkit.synth.sequences import make_sequence
    p = head_phantom(seed=seed, shape_hw=shape_hw)
    rows = np.nonzero(p.mask.any(axis=1))[0]
    away = p.image.copy()
    away[max(0, rows.min() - 4):] = 0  # no head left in view
    seq = make_sequence(p.image, p.mask > 0, [away], n_frames, np.random.default_rng(seed))
    sink = VideoSink(out_path, 20.0, shape_hw, is_color=False)
    for f in seq.frames:
        sink.write(f)
    sink.close()
    return {"boxes": [None if b is None else b.tolist() for b in seq.target_boxes], "kinds": seq.kinds}


def run_mask_demo(out_dir: Path, seed: int = 0) -> dict:
    """Mask the head in a phantom clip with the bundled detector (class fetal_head, BBoxHoldSim) and
    score the output against the known track: false-negative and false-masked frames, frames/s."""
    import json
    import numpy as np
    from fetalkit.evaluation.video import COVER_FRACTION, covered_fraction
    from fetalkit.io.video import open_source
    from fetalkit.masking.pipeline import MaskConfig, Masker, run_stream
    from fetalkit.runtime.detector import OnnxDetector
    from fetalkit.runtime.domain import DomainCheck
    from fetalkit.runtime.registry import resolve_model
    clip = out_dir / "masking" / "phantom_clip.avi"
    truth = phantom_clip(clip, seed=seed)
    masked, log = out_dir / "masking" / "phantom_clip_masked.avi", out_dir / "masking" / "frames.jsonl"
    det = OnnxDetector(resolve_model(None, "detector"), threads=1)  # as fetalkit mask
    masker = Masker(det, MaskConfig(classes=["fetal_head"]), domain=DomainCheck.of(det))  # as fetalkit mask
    report = run_stream(open_source(str(clip)), masked, masker, log)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    fn = fm = 0
    for rec, box in zip(records, truth["boxes"]):
        masks = np.array([[x, y, x + w, y + h] for x, y, w, h in rec["masks"]], np.float32).reshape(-1, 4)
        if box is None:
            fm += int(len(masks) > 0)
        else:
            fn += int(covered_fraction(np.asarray(box, np.float32), masks) < COVER_FRACTION)
    return {"frames": report.frames, "target_frames": sum(b is not None for b in truth["boxes"]),
            "empty_frames": sum(b is None for b in truth["boxes"]), "false_negative_frames": fn,
            "false_masked_frames": fm, "fps": report.fps, "clip": clip, "masked": masked, "log": log}
