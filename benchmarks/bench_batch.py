"""Files/s of ``fetalkit batch`` on one generated archive: 1 vs N local workers, and local vs Ray.

    python benchmarks/bench_batch.py [--job biometry-head|mask|deid] [--n 48] [--workers 2] [--rounds 3]

The archive is made of fetalkit's own phantoms (head images at HC18 size, or
phantom clips for ``mask``), so the figures need no data.  Every run starts on
an empty output folder; a run's time is the whole ``run_batch`` call (model
loading and worker start-up included, as a user's command would pay them).
Ray's own start-up (``ray.init``) is timed apart and left out of its files/s.
Ratios are against the 1-worker local run measured in the same invocation.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2


def make_archive(root: Path, job: str, n: int) -> Path:
    from fetalkit.demo import phantom_clip
    from fetalkit.io.dicom import write_dicom
    from fetalkit.synth.phantom import head_phantom
    root.mkdir(parents=True)
    for i in range(n):
        folder = root / f"study_{i // 8:03d}"
        folder.mkdir(exist_ok=True)
        if job == "mask":
            phantom_clip(folder / f"clip_{i:04d}.avi", n_frames=40, seed=i)
        elif job == "deid":
            write_dicom(folder / f"img_{i:04d}.dcm", head_phantom(seed=i).image, pixel_mm=0.15)
        else:
            cv2.imwrite(str(folder / f"img_{i:04d}.png"), head_phantom(seed=i).image)
    return root


def timed_run(job: str, archive: Path, out: Path, **kw) -> float:
    from fetalkit.batch import run_batch
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = run_batch(job, archive, out, **kw)
    seconds = time.perf_counter() - t0
    if s.failed or s.done == 0:
        raise SystemExit(f"{job}: {s.failed} failed, {s.done} done: {[e.error for e in s.failures][:3]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", default="biometry-head", choices=["biometry-head", "mask", "deid"])
    ap.add_argument("--n", type=int, default=48, help="files in the archive")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="runs of each setting")
    ap.add_argument("--no-ray", action="store_true", help="leave out the Ray runs")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        archive = make_archive(tmp / "archive", args.job, args.n)
        settings = [("local, 1 worker", dict(workers=1)),
                    (f"local, {args.workers} workers", dict(workers=args.workers))]
        ray_init_s = None
        if not args.no_ray:
            try:
                import ray
                t0 = time.perf_counter()
                ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
                ray_init_s = time.perf_counter() - t0
                settings.append((f"Ray, {args.workers} CPUs", dict(ray_address="local", workers=args.workers)))
            except ModuleNotFoundError:
                print("Ray not installed (pip install 'fetalkit[cluster]'): Ray runs left out")
        times: dict[str, list[float]] = {name: [] for name, _ in settings}
        for _ in range(args.rounds):  # interleaved, so a slow spell of the machine hits every setting
            for name, kw in settings:
                times[name].append(timed_run(args.job, archive, tmp / "out", **kw))
        # Ray keeps its worker processes, with their loaded models, from one run to the next;
        # local workers start afresh every run.  So the first run is shown apart from the rest.
        later = {name: statistics.median(t[1:] or t) for name, t in times.items()}
        base_first, base_later = times[settings[0][0]][0], later[settings[0][0]]
        print(f"fetalkit batch {args.job}: {args.n} files; first run, then the median of the "
              f"{max(1, args.rounds - 1)} later runs")
        print(f"{'setting':<22} {'first s':>8} {'files/s':>8} {'ratio':>6} {'later s':>8} {'files/s':>8} {'ratio':>6}")
        for name, _ in settings:
            first = times[name][0]
            print(f"{name:<22} {first:8.2f} {args.n / first:8.1f} {base_first / first:5.2f}x "
                  f"{later[name]:8.2f} {args.n / later[name]:8.1f} {base_later / later[name]:5.2f}x")
        if ray_init_s is not None:
            print(f"(ray.init took {ray_init_s:.1f} s, not counted above)")
            import ray
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
