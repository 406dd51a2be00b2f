"""onnxruntime session options for a detector, one thread as in ``fetalkit mask``.

    python benchmarks/bench_ort_options.py [--model psfhs-fcos-mnv2] [--rounds 5] [--runs 100]

Each option set gets its own session; the sessions take turns over ``--rounds`` rounds of
``--runs`` inferences on one 256 x 256 input, and the median ms per inference is printed
with its ratio to the default session of the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fetalkit.runtime.registry import resolve_model

OPTION_SETS = {
    "default": {},
    "denormals as zero": {"session.set_denormal_as_zero": "1"},
    "no spinning": {"session.intra_op.allow_spinning": "0"},
}


def session(path, entries: dict[str, str]):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in entries.items():
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="psfhs-fcos-mnv2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()
    path = resolve_model(args.model, "detector")
    sessions = {name: session(path, entries) for name, entries in OPTION_SETS.items()}
    feed = {sessions["default"].get_inputs()[0].name:
            np.random.default_rng(0).random((1, 1, 256, 256), dtype=np.float32)}
    ms: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, s in sessions.items():
            for _ in range(10):  # warm-up
                s.run(None, feed)
            t0 = time.perf_counter()
            for _ in range(args.runs):
                s.run(None, feed)
            ms[name].append(1000 * (time.perf_counter() - t0) / args.runs)
    base = float(np.median(ms["default"]))
    print(f"{path.name}, 1 thread, median of {args.rounds} x {args.runs} runs")
    print(f"{'options':<22}{'ms':>8}{'vs default':>12}")
    for name, values in ms.items():
        m = float(np.median(values))
        print(f"{name:<22}{m:>8.2f}{base / m:>12.2f}")


if __name__ == "__main__":
    main()
