"""Masking on video, frame by frame: false-negative frames, false-masked frames, masked area.

* A target frame is a **false negative** when its ground-truth box is not at least
  ``COVER_FRACTION`` covered by the union of the rendered masks (margin included).
* A frame without the target is **false-masked** when any mask is rendered on it.

Detections are computed once per sequence; each hold rule setting then replays them,
so a grid of rules costs one detector pass.
"""

from __future__ import annotations

import numpy as np

from fetalkit.masking.hold import HoldRule
from fetalkit.masking.render import grow_boxes
from fetalkit.synth.sequences import Sequence
from fetalkit.types import ImageDetections

COVER_FRACTION = 0.9


def covered_fraction(box_xyxy: np.ndarray, masks_xyxy: np.ndarray) -> float:
    """Fraction of the (whole-pixel) box area inside the union of the masks."""
    x1, y1, x2, y2 = np.floor(box_xyxy[:2]).astype(int).tolist() + np.ceil(box_xyxy[2:]).astype(int).tolist()
    if x2 <= x1 or y2 <= y1:
        return 1.0
    grid = np.zeros((y2 - y1, x2 - x1), bool)
    for mx1, my1, mx2, my2 in np.asarray(masks_xyxy, np.float64).reshape(-1, 4):
        a, b = int(max(mx1, x1)) - x1, int(max(my1, y1)) - y1
        c, d = int(min(mx2, x2)) - x1, int(min(my2, y2)) - y1
        if c > a and d > b:
            grid[b:d, a:c] = True
    return float(grid.mean())


def replay(seq: Sequence, dets: list[ImageDetections], rule: HoldRule, margin: float = 0.0,
           outcomes: list | None = None) -> dict:
    """Run one hold rule over a sequence's cached detections; per-frame outcome counts.
    ``outcomes``, if given, gets one (frame kind, missed) pair per target frame."""
    rule.reset()
    fn = fm = targets = empties = 0
    area = 0.0
    for frame, d, gt, kind in zip(seq.frames, dets, seq.target_boxes, seq.kinds):
        masks = grow_boxes(rule.update(frame, d).masks.boxes_xyxy, frame.shape, margin)
        if len(masks):
            area += float(((masks[:, 2] - masks[:, 0]) * (masks[:, 3] - masks[:, 1])).sum()) / frame.size
        if gt is None:
            empties += 1
            fm += int(len(masks) > 0)
        else:
            targets += 1
            missed = covered_fraction(gt, masks) < COVER_FRACTION
            fn += int(missed)
            if outcomes is not None:
                outcomes.append((kind, missed))
    return {"fn": fn, "targets": targets, "false_masked": fm, "empties": empties, "area": area,
            "frames": len(seq.frames)}


def unreachable_misses(seq: Sequence, dets: list[ImageDetections], margin: float = 0.0) -> int:
    """Target frames that no rule keeping earlier boxes in place can cover: not >= 90 %
    covered even by every box detected so far in the sequence, kept where it was found.

    BBoxHold and BBoxHoldSim mask the current detections and a subset of earlier ones,
    unmoved, so they miss at least these frames; the rest of the detector's misses are
    what a hold rule can still remove (a rule that moved boxes with the image could do more).
    """
    seen = np.zeros((0, 4), np.float32)
    n = 0
    for frame, d, gt in zip(seq.frames, dets, seq.target_boxes):
        now = grow_boxes(d.boxes_xyxy, frame.shape, margin)
        seen = np.concatenate([seen, now])
        if gt is not None and covered_fraction(gt, now) < COVER_FRACTION:  # the detector missed it
            n += int(covered_fraction(gt, seen) < COVER_FRACTION)
    return n


def summarise(counts: list[dict]) -> dict:
    t = {k: sum(c[k] for c in counts) for k in counts[0]}
    return {"fn_rate": t["fn"] / max(t["targets"], 1), "false_masked_rate": t["false_masked"] / max(t["empties"], 1),
            "mean_masked_area": t["area"] / max(t["frames"], 1), "fn_frames": t["fn"], "target_frames": t["targets"],
            "empty_frames": t["empties"]}


def rule_grid(hold_frames=(2, 5, 10, 20), ssim_thresholds=(0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8)) -> list[dict]:
    """The settings the benchmark compares: the bare detector, BBoxHold(N), and BBoxHoldSim(T)
    in each SSIM variant of :data:`SSIM_VARIANTS`."""
    grid = [{"rule": "none"}]
    grid += [{"rule": "frames", "hold_frames": n} for n in hold_frames]
    for variant in SSIM_VARIANTS.values():
        grid += [{"rule": "ssim", "ssim_threshold": t, **variant} for t in ssim_thresholds]
    return grid


# BBoxHoldSim's SSIM variants, by the label the table and the plot give them ("": the default)
SSIM_VARIANTS = {
    "": {"ssim_gain": True, "ssim_imaged_only": True},
    "gain-matched, whole frame": {"ssim_gain": True, "ssim_imaged_only": False},
    "plain, imaged area": {"ssim_gain": False, "ssim_imaged_only": True},
    "plain, whole frame": {"ssim_gain": False, "ssim_imaged_only": False},
}


def ssim_variant(row: dict) -> str:
    """The label of a BBoxHoldSim row's SSIM variant (a key of :data:`SSIM_VARIANTS`)."""
    flags = {k: bool(row.get(k, True)) for k in ("ssim_gain", "ssim_imaged_only")}
    return next(label for label, v in SSIM_VARIANTS.items() if v == flags)


def evaluate_rules(seqs: list[Sequence], dets: list[list[ImageDetections]], grid: list[dict],
                   margin: float = 0.0) -> list[dict]:
    """FN rate, its reduction against the bare detector, false-masked rate and area per setting."""
    rows = []
    for setting in grid:
        counts = [replay(s, d, HoldRule(**setting), margin) for s, d in zip(seqs, dets)]
        rows.append({**setting, **summarise(counts)})
    base = next(r for r in rows if r["rule"] == "none")
    for r in rows:
        r["fn_reduction"] = 1.0 - r["fn_rate"] / base["fn_rate"] if base["fn_rate"] else 0.0
        r["false_masked_increase_pp"] = 100.0 * (r["false_masked_rate"] - base["false_masked_rate"])
    return rows


def draw_breakdown(seqs: list[Sequence], dets: list[list[ImageDetections]], margin: float = 0.0,
                   setting: dict | None = None) -> list[dict]:
    """One row per draw (``Sequence.draw``): the detector alone against one hold rule (the
    default BBoxHoldSim), to show how much the figures move with the simulated motion."""
    rows = []
    for draw in sorted({s.draw for s in seqs}):
        pick = [i for i, s in enumerate(seqs) if s.draw == draw]
        base, held = evaluate_rules([seqs[i] for i in pick], [dets[i] for i in pick],
                                    [{"rule": "none"}, setting or {"rule": "ssim"}], margin)
        rows.append({"draw": draw, "fn_detector": base["fn_frames"], "fn_held": held["fn_frames"],
                     "fn_reduction": held["fn_reduction"], "false_masked_increase_pp": held["false_masked_increase_pp"],
                     "target_frames": held["target_frames"], "empty_frames": held["empty_frames"]})
    return rows


RARELY_FOUND = 0.9  # a sequence whose target is missed in >= 90 % of its frames by the detector alone


def sequence_breakdown(seqs: list[Sequence], dets: list[list[ImageDetections]], margin: float = 0.0,
                       setting: dict | None = None) -> list[dict]:
    """Per sequence: false-negative frames of the detector alone and with one hold rule (the
    default BBoxHoldSim), so that misses a hold rule cannot fix show: ``fn_unreachable``
    (:func:`unreachable_misses`) and ``rarely_found`` (a target the detector almost never sees)."""
    setting = setting or {"rule": "ssim"}
    rows = []
    for s, d in zip(seqs, dets):
        alone = replay(s, d, HoldRule(rule="none"), margin)
        held = replay(s, d, HoldRule(**setting), margin)
        rows.append({"source": s.source, "draw": s.draw, "target_frames": alone["targets"], "empty_frames": alone["empties"],
                     "fn_detector": alone["fn"], "fn_held": held["fn"], "false_masked_detector": alone["false_masked"],
                     "false_masked_held": held["false_masked"], "fn_unreachable": unreachable_misses(s, d, margin),
                     "rarely_found": alone["fn"] >= RARELY_FOUND * max(alone["targets"], 1)})
    return rows


def scan_intervals(per_seq: list[dict], confidence: float = 0.95, n_resamples: int = 2000,
                   seed: int = 0) -> list[dict]:
    """Bootstrap intervals of the hold rule's FN reduction and false-masked increase (rows of
    :func:`sequence_breakdown`), resampling source scans: every draw of a scan moves with it,
    so a few scans the detector fails on weigh as few scans, not as many frames."""
    from scipy.stats import bootstrap
    scans = sorted({r["source"] for r in per_seq})
    keys = ("fn_detector", "fn_held", "false_masked_detector", "false_masked_held", "empty_frames")
    per_scan = {k: np.array([sum(r[k] for r in per_seq if r["source"] == s) for s in scans], float) for k in keys}

    def reduction(alone, held, axis=-1):
        return 1.0 - held.sum(axis) / np.maximum(alone.sum(axis), 1.0)

    def increase_pp(fm_alone, fm_held, empties, axis=-1):
        return 100.0 * (fm_held.sum(axis) - fm_alone.sum(axis)) / np.maximum(empties.sum(axis), 1.0)

    rows = []
    for name, stat, data in (("fn_reduction", reduction, ("fn_detector", "fn_held")),
                             ("false_masked_increase_pp", increase_pp,
                              ("false_masked_detector", "false_masked_held", "empty_frames"))):
        arrays = tuple(per_scan[k] for k in data)
        value = float(stat(*arrays))
        if len(scans) < 2:
            low = high = value
        else:
            ci = bootstrap(arrays, stat, paired=True, vectorized=True, n_resamples=n_resamples,
                           confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed)).confidence_interval
            low, high = float(ci.low), float(ci.high)
        rows.append({"metric": name, "value": value, "low": low, "high": high, "confidence": confidence,
                     "scans": len(scans)})
    return rows


def kind_breakdown(seqs: list[Sequence], dets: list[list[ImageDetections]], margin: float = 0.0,
                   setting: dict | None = None) -> list[dict]:
    """Per kind of target frame (clean, blur, dropout): false negatives of the detector alone
    and with one hold rule (the default BBoxHoldSim), to show where a detector fails."""
    alone, held = [], []
    for s, d in zip(seqs, dets):
        replay(s, d, HoldRule(rule="none"), margin, alone)
        replay(s, d, HoldRule(**(setting or {"rule": "ssim"})), margin, held)
    rows = []
    for kind in sorted({k for k, _ in alone}):
        a = [m for k, m in alone if k == kind]
        h = [m for k, m in held if k == kind]
        rows.append({"kind": kind, "target_frames": len(a), "fn_detector": sum(a), "fn_held": sum(h)})
    return rows


def plot_tradeoff(rows: list[dict], png_path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # one curve per rule and SSIM variant
    for rule, variant in [("frames", None)] + [("ssim", v) for v in SSIM_VARIANTS]:
        rs = [r for r in rows if r["rule"] == rule and (variant is None or ssim_variant(r) == variant)]
        marker = "o" if rule == "frames" else "s"
        label = "BBoxHold (N frames)" if rule == "frames" else \
            "BBoxHoldSim (SSIM T), " + (variant or "gain-matched, imaged area (default)")
        ax.plot([100 * r["false_masked_rate"] for r in rs], [100 * r["fn_reduction"] for r in rs], marker=marker,
                label=label)
        for r in rs:
            ax.annotate(str(r.get("hold_frames", r.get("ssim_threshold"))),
                        (100 * r["false_masked_rate"], 100 * r["fn_reduction"]), fontsize=7)
    base = next(r for r in rows if r["rule"] == "none")
    ax.scatter([100 * base["false_masked_rate"]], [0], color="k", label="detector alone")
    ax.set_xscale("symlog", linthresh=1.0)  # the useful settings all lie below a few percent
    ax.set_xlabel("false-masked frames (% of frames without the target)")
    ax.set_ylabel("false-negative frames removed (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def detect_sequences(seqs: list[Sequence], detector, category: str, conf: float | None = None,
                     roi=None, progress=None, domain=None) -> list[list[ImageDetections]]:
    """Detections of ``category`` in every frame, through the detection step of
    ``fetalkit mask`` (``--roi`` included), its region state fresh for each sequence.
    With a ``domain`` check (:mod:`fetalkit.runtime.domain`), frames it puts outside the
    detector's domain get no detection, as ``fetalkit mask`` passes them."""
    from fetalkit.masking.pipeline import MaskConfig, Masker
    dets, done = [], 0
    for s in seqs:
        masker = Masker(detector, MaskConfig(classes=[category], conf=conf, roi=roi), domain=domain)
        found = []
        for f in s.frames:
            pre = masker.prepare(f)
            found.append(ImageDetections.empty() if masker.outside_domain(pre) else masker.detect(pre))
        dets.append(found)
        done += len(s.frames)
        if progress:
            progress(done)
    return dets


def build_sequences(ds, category: str, n_sequences: int, n_frames: int, seed: int = 0,
                    progress=None) -> list[Sequence]:
    """Sequences from a detection set: each from one image holding ``category`` (its box is the
    target), with cut-aways from the set's images without it.

    Targets come from source images only: a derived image (``tags["derived"]``, a scan with
    a structure blanked out to make a negative) shows its remaining structures cut at the
    blanked edge, which a real scan never does; derived images still serve as cut-aways.
    """
    from fetalkit.errors import DataError
    from fetalkit.io.images import read_gray
    from fetalkit.synth.sequences import make_sequence
    if category not in ds.categories:
        raise DataError(f"category {category!r} is not in the label set ({', '.join(ds.categories)})")
    k = ds.categories.index(category)
    pos = [s for s in ds.samples if (s.labels == k).sum() == 1 and "derived" not in s.tags]
    neg = [s for s in ds.samples if not (s.labels == k).any()]
    if not pos:
        raise DataError(f"no source image (not derived) with exactly one {category!r} box in this split")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(pos), size=min(n_sequences, len(pos)), replace=False)
    cut_pool = [read_gray(neg[i].image_path) for i in rng.choice(len(neg), size=min(len(neg), 40), replace=False)] \
        if neg else []
    seqs = []
    for j, i in enumerate(picks):
        s = pos[int(i)]
        image = read_gray(s.image_path)
        x1, y1, x2, y2 = np.round(s.boxes_xyxy[s.labels == k][0]).astype(int)
        mask = np.zeros(image.shape, bool)
        mask[y1:y2, x1:x2] = True
        cuts = [c for c in cut_pool if c.shape == image.shape]
        seq = make_sequence(image, mask, cuts, n_frames, rng)
        seq.source = s.file_name
        seqs.append(seq)
        if progress:
            progress(j + 1, len(picks))
    return seqs
