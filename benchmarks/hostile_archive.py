"""Every file command on a hostile archive: tracebacks, crashes, inputs changed, peak memory.

Builds an archive as old scanners and PACS exports leave them (a Latin-1 file name,
a FIFO, a folder named like an image, a dangling link, a 0.9 MB PNG declaring
30000 x 30000 pixels, a PNG cut short, text named .png, a 1 x 1 image, a real
ultrasound DICOM from pydicom's wheel, a clip cut short, a clip with a damaged
frame, a cine DICOM without frame timing), then runs each command on it, including
outputs aimed at the inputs, and prints one row per run:

    exit status | a traceback? | killed by a signal? | inputs changed? | error and warning lines | peak RSS

The baseline beside it is the input rule itself: every input's SHA-256 before and
after each run, and the 1.5 GB memory target.  Usage::

    python benchmarks/hostile_archive.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

MEMORY_TARGET_KB = int(1.5 * 1024 * 1024)
PROBE = ("import resource, subprocess, sys; "
         "r = subprocess.run(sys.argv[1:], capture_output=True); "
         "sys.stdout.buffer.write(b'%d %d\\n' % (r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
         "sys.stdout.buffer.write(r.stderr)")


def write_clip(path: Path, n: int = 40, size_hw=(240, 320)) -> None:
    from fetalkit.synth.phantom import head_phantom
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, size_hw[::-1])
    for k in range(n):
        writer.write(cv2.cvtColor(head_phantom(seed=k, shape_hw=size_hw).image, cv2.COLOR_GRAY2BGR))
    writer.release()


def damage_middle_frame(src: Path, dst: Path) -> None:
    """Copy an MJPG clip with the bytes of one JPEG frame in the middle replaced by garbage."""
    data = bytearray(src.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    k = starts[len(starts) // 2]
    data[k + 2: k + 2 + 600] = os.urandom(600)
    dst.write_bytes(bytes(data))


def build_archive(root: Path) -> Path:
    from fetalkit.synth.hostile import bomb_png, drop_frame_timing
    from fetalkit.synth.phantom import write_phantom_folder
    src = root / "archive"
    stills = src / "stills"
    write_phantom_folder(stills, n=3, seed=5)
    shutil.copy(stills / "phantom_01.png", os.path.join(os.fsencode(stills), b"caf\xe9.png"))
    (stills / "bomb.png").write_bytes(bomb_png())
    (stills / "cut.png").write_bytes((stills / "phantom_02.png").read_bytes()[:400])
    (stills / "text.png").write_text("not an image")
    cv2.imwrite(str(stills / "tiny.png"), np.full((1, 1), 90, np.uint8))
    os.mkfifo(stills / "pipe.png")
    (stills / "folder.png").mkdir()
    os.symlink("nowhere.png", stills / "dangling.png")
    try:
        from pydicom.data import get_testdata_file
        shutil.copy(get_testdata_file("examples_palette.dcm"), stills / "us.dcm")
    except Exception:  # noqa: BLE001 - pydicom's test files are optional here
        pass
    clips = src / "clips"
    clips.mkdir()
    write_clip(clips / "clip.avi")
    data = (clips / "clip.avi").read_bytes()
    (clips / "cut.avi").write_bytes(data[: len(data) // 2])
    damage_middle_frame(clips / "clip.avi", clips / "damaged.avi")
    frames = src / "frames"
    frames.mkdir()
    for k, p in enumerate(sorted(stills.glob("phantom_0*.png"))):
        shutil.copy(p, frames / f"f{k:03d}.png")
    from fetalkit.io.dicom import write_dicom
    stack = np.stack([np.full((64, 80), 30 + 10 * k, np.uint8) for k in range(6)])
    drop_frame_timing(write_dicom(clips / "cine_no_timing.dcm", stack, fps=20.0))
    return src


def digest(root: Path) -> dict[bytes, str]:
    out = {}
    for dirpath, _, files in os.walk(os.fsencode(root)):
        for f in files:
            p = os.path.join(dirpath, f)
            try:
                if os.path.isfile(p) and not os.path.islink(p):
                    out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
            except OSError:
                pass
    return out


def run(label: str, args: list, src: Path, timeout_s: float) -> dict:
    before = digest(src)
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", PROBE, sys.executable, "-m", "fetalkit.cli",
                            *map(os.fsdecode, args)], capture_output=True, timeout=timeout_s)
        head, _, stderr = r.stdout.partition(b"\n")
        code, peak_kb = map(int, head.split())
        hung = False
    except subprocess.TimeoutExpired:  # a FIFO opened for reading blocks forever, for one
        code, peak_kb, stderr, hung = -1, 0, b"", True
    after = digest(src)
    changed = sorted(os.fsdecode(k) for k in before if after.get(k) != before[k])
    text = stderr.decode("utf-8", "replace")
    lines = text.splitlines()
    return {"run": label, "exit": code, "traceback": "Traceback" in text, "signal": code < 0 and not hung,
            "hung": hung, "inputs_changed": len(changed), "peak_mb": peak_kb / 1024,
            "seconds": time.perf_counter() - t0,
            "error_lines": sum(line.startswith("error:") for line in lines),
            "warning_lines": sum(line.startswith(("warning:", "no frame timing")) for line in lines),
            "stray_lines": sum(("libpng" in line or line.startswith("[")) for line in lines)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="Build the archive and outputs here and keep them.")
    ap.add_argument("--timeout", type=float, default=300.0, help="Seconds after which a run counts as hung.")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="fetalkit_hostile_"))
    root.mkdir(parents=True, exist_ok=True)
    src = build_archive(root)
    o = root / "out"
    stills, clips, frames = src / "stills", src / "clips", src / "frames"
    runs = [
        ("biometry head", ["biometry", "head", stills, "--pixel-mm", "0.1", "--out", o / "head"]),
        ("biometry aop", ["biometry", "aop", stills, "--out", o / "aop"]),
        ("detect", ["detect", stills, "--overlay", "--out", o / "detect"]),
        ("classify", ["classify", stills, "--out", o / "classify"]),
        ("sector", ["sector", stills, "--out", o / "sector"]),
        ("clean", ["clean", stills, "--out", o / "clean"]),
        ("clean --out <input folder>", ["clean", stills, "--out", stills]),
        ("head --out <input file>", ["biometry", "head", stills, "--out", stills / "phantom_00.png"]),
        ("mask clip", ["mask", clips / "clip.avi", "-o", o / "mask" / "clip.avi"]),
        ("mask clip -o clip", ["mask", clips / "clip.avi", "-o", clips / "clip.avi"]),
        ("mask frames -o frames", ["mask", frames, "-o", frames]),
        ("mask damaged clip", ["mask", clips / "damaged.avi", "-o", o / "mask" / "damaged.avi"]),
        ("mask cut clip", ["mask", clips / "cut.avi", "-o", o / "mask" / "cut.avi"]),
        ("mask cine without timing", ["mask", clips / "cine_no_timing.dcm", "-o", o / "mask" / "cine.dcm"]),
        ("deid bomb", ["deid", stills / "bomb.png", "-o", o / "deid" / "bomb.png"]),
        ("deid cut clip", ["deid", clips / "cut.avi", "-o", o / "deid" / "cut.avi"]),
        ("deid cine without timing", ["deid", clips / "cine_no_timing.dcm", "-o", o / "deid" / "cine.dcm"]),
        ("deid folder", ["deid", stills, "-o", o / "deid" / "x.png"]),
        ("deid -o <existing folder>", ["deid", stills / "phantom_00.png", "-o", o]),
        ("batch mask --workers 2", ["batch", "mask", src, "--out", o / "batch_mask", "--workers", "2"]),
        ("batch biometry-head", ["batch", "biometry-head", src, "--pixel-mm", "0.1", "--out", o / "batch_head"]),
        ("batch --out <inside SRC>", ["batch", "detect", src, "--out", stills]),
    ]
    print(f"{'run':28s} {'exit':>4s} {'trace':>5s} {'signal':>6s} {'inputs chg':>10s} {'errors':>6s} {'warns':>5s} "
          f"{'stray':>5s} {'peak MB':>8s} {'s':>6s}", flush=True)
    rows = []
    for label, cmd in runs:
        r = run(label, cmd, src, args.timeout)
        rows.append(r)
        print(f"{r['run']:28s} {r['exit']:4d} {str(r['traceback']):>5s} {str(r['signal']):>6s} "
              f"{r['inputs_changed']:10d} {r['error_lines']:6d} {r['warning_lines']:5d} {r['stray_lines']:5d} "
              f"{r['peak_mb']:8.0f} {r['seconds']:6.1f}" + ("  HUNG (killed)" if r["hung"] else ""), flush=True)
    worst = max(r["peak_mb"] for r in rows)
    bad = [r["run"] for r in rows if r["traceback"] or r["signal"] or r["hung"] or r["inputs_changed"]
           or r["stray_lines"]]
    print(f"{len(rows)} runs: {sum(r['traceback'] for r in rows)} tracebacks, {sum(r['signal'] for r in rows)} "
          f"crashes, {sum(r['hung'] for r in rows)} hung, {sum(r['inputs_changed'] > 0 for r in rows)} runs changed an input, "
          f"{sum(r['stray_lines'] for r in rows)} stray library lines; peak RSS {worst:.0f} MB "
          f"(ratio to the 1536 MB target {worst / 1536:.2f})")
    if bad:
        print("runs breaking a rule: " + ", ".join(bad))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if bad or worst * 1024 > MEMORY_TARGET_KB else 0)


if __name__ == "__main__":
    main()
