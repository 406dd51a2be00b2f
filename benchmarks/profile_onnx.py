"""Where an ONNX detector spends its time: onnxruntime's profiler, grouped by network part.

    python benchmarks/profile_onnx.py MODEL.onnx [MODEL2.onnx ...] [--threads 1] [--runs 200] [--hw 160 256]

Per model: kernel time per run (ms) and its share, split into backbone / FPN /
classification head / regression head / the rest (input normalisation, box decoding),
and within each into depthwise convolutions, other convolutions and other operators.  Run it on an FP32 model and
its INT8 file to see which part an INT8 speed-up comes from.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

PARTS = (("backbone/body", "backbone"), ("fpn", "fpn"), ("classification_head", "head_cls"),
         ("regression_head", "head_reg"))


def profile(path: str, threads: int, runs: int, hw: tuple[int, int]) -> tuple[dict, float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = tempfile.mkdtemp() + "/prof"
    opts.optimized_model_filepath = tempfile.mkdtemp() + "/optimized.onnx"  # to read each conv's groups
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    depthwise = {n.name for n in onnx.load(opts.optimized_model_filepath).graph.node
                 if "Conv" in n.op_type and any(a.name == "group" and a.i > 1 for a in n.attribute)}
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else size for d, size in zip(inp.shape[1:], (1, *hw))]  # free sides: --hw
    x = np.random.default_rng(0).integers(0, 255, (1, *shape)).astype(np.float32)
    for _ in range(runs):
        sess.run(None, {inp.name: x})
    events = json.load(open(sess.end_profiling()))
    by: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            part = next((p for key, p in PARTS if key in e["name"]), "rest")
            node = e["name"][: -len("_kernel_time")]
            kind = "dw conv" if node in depthwise else "conv" if "Conv" in e["args"]["op_name"] else "other"
            by[(part, kind)] += e["dur"]
    total = sum(by.values())
    return {k: v / runs / 1000 for k, v in by.items()}, total / runs / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--hw", type=int, nargs=2, default=(256, 256), help="Input size of a model with free input sides.")
    args = ap.parse_args()
    results = [(m, *profile(m, args.threads, args.runs, tuple(args.hw))) for m in args.models]
    keys = sorted({k for _, by, _ in results for k in by})
    print(f"{'part / operators':22s}" + "".join(f"{m.rsplit('/', 1)[-1][:28]:>30s}" for m, _, _ in results))
    for k in keys:
        print(f"{k[0] + ' ' + k[1]:22s}" + "".join(f"{by.get(k, 0.0):12.3f} ms {100 * by.get(k, 0.0) / t:5.1f} %   "
                                                 for _, by, t in results))
    print(f"{'total kernel time':22s}" + "".join(f"{t:12.3f} ms {'':11s}" for _, _, t in results))


if __name__ == "__main__":
    main()
