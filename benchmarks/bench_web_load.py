"""Concurrent uploads to ``fetalkit serve`` on loopback: all answered, none lost, the right results, memory flat,
with hostile requests mixed in.

    python benchmarks/bench_web_load.py [--n 16] [--rounds 5] [--mask-share 0.5] [--hostile 7]

Starts ``fetalkit serve`` (default settings) on 127.0.0.1 with a free port in a
subprocess, then sends ``--rounds`` rounds of ``--n`` concurrent uploads made of
fetalkit's own phantoms: head images to ``/api/biometry/head`` (with their pixel
size) and 40-frame phantom clips to ``/api/mask`` (polled, then downloaded).
Every answer is checked: the HC must be the one ``measure_files`` (what
``fetalkit biometry head`` runs) gives for that image, and the masked clip must
be frame for frame what ``Masker`` + ``run_stream`` (what ``fetalkit mask`` runs)
write.  Each round also sends ``--hostile`` bad requests among the good ones: PNGs of
about 110 KB declaring 30000 x 30000 pixels (to biometry, masking and live staging),
a PNG cut in half, bytes that are no image, a foreign ``Host`` header (DNS rebinding)
and ``pixel_mm=1e308``; each must get its 4xx (413 for the bombs, 400 for the rest)
while every good request still gets its checked result.  The server's resident
memory is read from /proc before the rounds (after one warm-up request of each
kind, so the models are loaded) and after each round; the ratios after / before
and last round / first round say whether memory stays flat (the first concurrent
rounds grow glibc's per-thread malloc arenas, then it levels off), and its peak
(VmHWM) whether a bomb was ever decoded.  Nothing leaves loopback, every loop is
bounded, and the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

MAX_N = 64
REQUEST_TIMEOUT_S = 300.0
HOST = "127.0.0.1"  # loopback only


@dataclass
class Case:
    kind: str            # head | mask | a hostile kind (bomb, truncated, junk, bad-host, bad-pixel-mm)
    path: Path
    pixel_mm: float = 0.0
    expected: object = None
    url: str = ""                            # hostile cases: where they are sent
    status: tuple[int, ...] = ()             # hostile cases: the 4xx they must get
    headers: dict = field(default_factory=dict)


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG of zeros declaring width x height, made without holding its pixels (1-bit grey:
    30000 x 30000 is about 110 KB and would decode to 900 MB or more)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z, row = zlib.compressobj(9), bytes((width + 7) // 8 + 1)
    idat = b"".join(z.compress(row * min(1000, height - y)) for y in range(0, height, 1000)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_hostile(root: Path, head: Case) -> list[Case]:
    """One of each hostile request (bombs to the three endpoints that decode uploads)."""
    bomb = root / "bomb.png"
    bomb.write_bytes(bomb_png(30000, 30000))
    truncated = root / "truncated.png"
    truncated.write_bytes(head.path.read_bytes()[: head.path.stat().st_size // 2])
    junk = root / "junk.png"
    junk.write_bytes(os.urandom(50_000))
    return [Case("bomb", bomb, url="/api/biometry/head", status=(413,)),
            Case("bomb", bomb, url="/api/mask", status=(413,)),
            Case("bomb", bomb, url="/api/live/files", status=(413,)),
            Case("truncated", truncated, url="/api/biometry/head", status=(400,)),
            Case("junk", junk, url="/api/biometry/head", status=(400,)),
            Case("bad-host", head.path, url="/api/biometry/head", status=(400,), headers={"Host": "evil.example"}),
            Case("bad-pixel-mm", head.path, pixel_mm=1e308, url="/api/biometry/head", status=(400,))]


def make_cases(root: Path, n_heads: int, n_clips: int) -> list[Case]:
    """Distinct phantom heads (expected HC from measure_files) and clips (expected frames from run_stream)."""
    from fetalkit.biometry.head_job import measure_files
    from fetalkit.demo import phantom_clip
    from fetalkit.io.images import write_image
    from fetalkit.io.video import open_source
    from fetalkit.masking.pipeline import MaskConfig, Masker, run_stream
    from fetalkit.runtime.detector import OnnxDetector
    from fetalkit.runtime.registry import resolve_model
    from fetalkit.synth.phantom import head_phantom
    cases = []
    for i in range(n_heads):
        p = head_phantom(seed=100 + i)
        path = write_image(root / f"head_{i:02d}.png", p.image)
        row = measure_files([path], root / f"ref_{i:02d}", pixel_mm=p.pixel_mm, overlays=False)[0]
        cases.append(Case("head", path, p.pixel_mm, row["hc_mm"]))
    detector = OnnxDetector(resolve_model(None, "detector"), threads=1)
    for i in range(n_clips):
        path = root / f"clip_{i:02d}.avi"
        phantom_clip(path, n_frames=40, seed=200 + i)
        out = root / f"clip_{i:02d}_ref.avi"
        run_stream(open_source(str(path)), out, Masker(detector, MaskConfig()))
        cases.append(Case("mask", path, expected=[f for _, f in open_source(str(out))]))
    return cases


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    """Resident memory of a process (VmHWM: its peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for process {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(port: int, temp_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "fetalkit.cli", "serve", "--host", HOST, "--port", str(port),
                             "--temp-dir", str(temp_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"fetalkit serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}/api/info", timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("fetalkit serve did not answer within 60 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def send_hostile(base: str, case: Case) -> tuple[str, float, int]:
    """One hostile request: ("ok" when it got its 4xx with a JSON error | what went wrong, seconds, status)."""
    t0 = time.perf_counter()
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as client, open(case.path, "rb") as f:
        r = client.post(case.url, files={"file": (case.path.name, f)}, headers=case.headers,
                        data={"pixel_mm": repr(case.pixel_mm)} if case.pixel_mm else {})
    seconds = time.perf_counter() - t0
    if r.status_code not in case.status:
        return f"{case.kind} to {case.url}: HTTP {r.status_code}, not {case.status}: {r.text[:200]}", seconds, \
            r.status_code
    return ("ok" if "error" in r.json() else f"{case.kind}: no JSON error"), seconds, r.status_code


def answer(base: str, case: Case) -> tuple[str, float, int | None]:
    """Any request, with a connection error or timeout counted as lost (status None), not raised."""
    t0 = time.perf_counter()
    try:
        if case.status:
            return send_hostile(base, case)
        return send(base, case)
    except httpx.HTTPError as e:
        return f"lost ({type(e).__name__}: {e})", time.perf_counter() - t0, None


def send(base: str, case: Case) -> tuple[str, float, int]:
    """One upload, answered and checked: ("ok" | what went wrong, seconds, the upload's HTTP status)."""
    from fetalkit.io.video import open_source
    t0 = time.perf_counter()
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as client, open(case.path, "rb") as f:
        if case.kind == "head":
            r = client.post("/api/biometry/head", files={"file": (case.path.name, f)},
                            data={"pixel_mm": repr(case.pixel_mm)})
            if r.status_code != 200:
                return f"HTTP {r.status_code}: {r.text[:200]}", time.perf_counter() - t0, r.status_code
            got = r.json()["row"]["hc_mm"]
            return ("ok" if got == case.expected else f"HC {got} != {case.expected}"), time.perf_counter() - t0, 200
        r = client.post("/api/mask", files={"file": (case.path.name, f)})
        if r.status_code != 202:
            return f"HTTP {r.status_code}: {r.text[:200]}", time.perf_counter() - t0, r.status_code
        job_id = r.json()["id"]
        while time.monotonic() < deadline:
            job = client.get(f"/api/jobs/{job_id}").json()
            if job["state"] in ("done", "failed"):
                break
            time.sleep(0.1)
        else:
            return "job not finished in time", time.perf_counter() - t0, 202
        if job["state"] != "done":
            return f"job failed: {job['error']}", time.perf_counter() - t0, 202
        video = client.get(job["download"])
    seconds = time.perf_counter() - t0
    with tempfile.NamedTemporaryFile(suffix=".avi") as tmp:
        tmp.write(video.content)
        tmp.flush()
        frames = [fr for _, fr in open_source(tmp.name)]
    same = len(frames) == len(case.expected) and all(np.array_equal(a, b) for a, b in zip(frames, case.expected))
    return ("ok" if same else "masked frames differ from fetalkit mask's"), seconds, 202


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help=f"concurrent uploads per round (at most {MAX_N})")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of --n uploads (at most 10)")
    ap.add_argument("--mask-share", type=float, default=0.5, help="fraction of the uploads that are clips to mask")
    ap.add_argument("--hostile", type=int, default=7, help=f"hostile requests added to each round (0..{MAX_N}; "
                    "7 sends each kind once)")
    args = ap.parse_args()
    if not 1 <= args.n <= MAX_N or not 1 <= args.rounds <= 10 or not 0 <= args.mask_share <= 1 \
            or not 0 <= args.hostile <= MAX_N:
        raise SystemExit(f"--n must be 1..{MAX_N}, --rounds 1..10, --mask-share 0..1, --hostile 0..{MAX_N}")
    n_mask = round(args.n * args.mask_share)
    tmp = Path(tempfile.mkdtemp(prefix="bench_web_"))
    proc = None
    try:
        cases = make_cases(tmp, n_heads=min(8, args.n - n_mask) or 1, n_clips=min(2, n_mask) or 1)
        heads = [c for c in cases if c.kind == "head"]
        clips = [c for c in cases if c.kind == "mask"]
        batch = [clips[i % len(clips)] for i in range(n_mask)] + [heads[i % len(heads)] for i in range(args.n - n_mask)]
        kinds = make_hostile(tmp, heads[0])
        hostile = [kinds[i % len(kinds)] for i in range(args.hostile)]
        batch = [c for pair in zip(batch, hostile) for c in pair] + batch[len(hostile):] + hostile[len(batch):]
        port = free_port()
        server_tmp = tmp / "server"
        server_tmp.mkdir()
        proc = start_server(port, server_tmp)
        base = f"http://{HOST}:{port}"
        for case in (heads[0], clips[0]):  # warm-up: the models load on first use
            status, _, _ = send(base, case)
            assert status == "ok", status
        rss_before, peak_before = rss_mb(proc.pid), rss_mb(proc.pid, "VmHWM")
        results: list[tuple[str, str, float, int | None]] = []
        t0 = time.perf_counter()
        rss_rounds = []
        with ThreadPoolExecutor(max_workers=len(batch)) as pool:
            for _ in range(args.rounds):
                results += [(c.kind, *res) for c, res in zip(batch, pool.map(lambda c: answer(base, c), batch))]
                rss_rounds.append(rss_mb(proc.pid))
        seconds = time.perf_counter() - t0
        rss_after, peak_after = rss_rounds[-1], rss_mb(proc.pid, "VmHWM")
        left = [p for p in server_tmp.rglob("*") if p.is_file()]
        sent = len(batch) * args.rounds
        lost = [r for r in results if r[3] is None]
        wrong = [(k, s) for k, s, _, code in results if s != "ok" and code is not None]
        good = [r for r in results if r[0] in ("head", "mask")]
        bad = [r for r in results if r[0] not in ("head", "mask")]
        print(f"fetalkit serve on {HOST}, default settings: {args.rounds} rounds of {len(batch)} concurrent requests "
              f"({n_mask} phantom clips of 40 frames to mask, {args.n - n_mask} phantom heads to measure, "
              f"{len(hostile)} hostile)")
        print(f"sent {sent}, answered {sent - len(lost)}, lost {len(lost)}, wrong {len(wrong)}; "
              f"{seconds:.1f} s, {sent / seconds:.2f} requests/s")
        statuses = Counter(code for *_, code in results)
        print("answers by HTTP status: " + ", ".join(f"{code}: {count}" for code, count in
                                                   sorted(statuses.items(), key=lambda kv: kv[0] or 0)))
        print(f"good requests: {len(good)} sent, {sum(s == 'ok' for _, s, _, _ in good)} got their checked result "
              "(HC equal to measure_files', masked frames equal to run_stream's)")
        print(f"hostile requests: {len(bad)} sent, {sum(s == 'ok' for _, s, _, _ in bad)} refused with their 4xx "
              "and a JSON error")
        for kind in dict.fromkeys(r[0] for r in results):  # each kind once, in order of appearance
            lat = [s for k, _, s, _ in results if k == kind]
            print(f"  {kind:12s}: {len(lat)} requests, latency median {statistics.median(lat):.2f} s, "
                  f"max {max(lat):.2f} s")
        print(f"server RSS {rss_before:.0f} MB before (models loaded), {rss_after:.0f} MB after: ratio "
              f"{rss_after / rss_before:.2f}; after round 1 {rss_rounds[0]:.0f} MB, so {rss_after / rss_rounds[0]:.2f} "
              f"from the first round to the last (each round: {', '.join(f'{r:.0f}' for r in rss_rounds)} MB)")
        print(f"server peak RSS (VmHWM) {peak_before:.0f} MB before the rounds, {peak_after:.0f} MB after: ratio "
              f"{peak_after / peak_before:.2f} (a decoded 30000 x 30000 bomb alone would add 900 MB)")
        print(f"files left in the server's temp folder: {len(left)}")
        for kind, status in (wrong + [(r[0], r[1]) for r in lost])[:5]:
            print(f"  wrong ({kind}): {status}")
        if wrong or lost or left:
            raise SystemExit(1)
    finally:
        if proc is not None:
            stop_server(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
