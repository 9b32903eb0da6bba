"""Probe (issue 20, base >= 50 Hz): weight-only int4 matrix multiplies (ONNX Runtime's MatMulNBits, block 32,
symmetric, int8 compute) for `base` at batch 1, beside the fp32 and dynamic-int8 graphs of the same bundle.

  python benchmarks/probes/base_int4.py prepare        # export base (random weights, bench_deploy's) and quantize
  python benchmarks/probes/base_int4.py time GRAPH     # fp32 | int8 | int4: one graph per process, machine idle
Needs `pip install onnx-ir` (onnxruntime's n-bit quantizer imports it). Not a backend: see BENCHMARKS.md.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))
import bench_deploy  # noqa: E402

WORK = Path("outputs/bench_deploy")
BUNDLE = WORK / "bundle_base_96"
INT4 = WORK / "base_int4.onnx"


def prepare() -> None:
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    from vla_distill.deploy.export import export

    ds = bench_deploy.observations(WORK, 96)
    ckpt = bench_deploy.random_checkpoint("base", ds, WORK / "random_base" / "pretrained_model")
    if not (BUNDLE / "model.onnx").exists():
        export(ckpt, BUNDLE, "onnx", observations=str(ds))
    cfg = nbits.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=4)
    q = nbits.MatMulNBitsQuantizer(onnx.load(str(BUNDLE / "model.onnx")), algo_config=cfg)
    q.process()
    q.model.save_model_to_file(str(INT4), use_external_data_format=False)


def timed(graph: str, iters: int = 200) -> dict:
    import torch

    from vla_distill.models.backends import _without_weights
    from vla_distill.models.base import frames_to_batch
    from vla_distill.models.bundle import REFERENCE_FILE
    from vla_distill.models.onnx_policy import OnnxPolicy

    z = np.load(BUNDLE / REFERENCE_FILE)
    frames = {k[4:]: z[k] for k in z.files if k.startswith("obs/")}
    path = {"fp32": BUNDLE / "model.onnx", "int8": BUNDLE / "model.int8.onnx", "int4": INT4}[graph]
    policy = OnnxPolicy(_without_weights(BUNDLE), path, 2)
    n = len(z["tasks"])
    batches = [frames_to_batch({k: v[i : i + 1] for k, v in frames.items()}, policy.input_keys, [str(z["tasks"][i])])
               for i in range(n)]
    actions = np.zeros_like(z["actions"])
    with torch.inference_mode():
        for _ in range(3):
            for i in range(n):
                actions[i] = policy.predict_action_chunk(batches[i]).float().numpy()[0]
        times = []
        for i in range(iters):
            t0 = time.perf_counter()
            policy.predict_action_chunk(batches[i % n])
            times.append(time.perf_counter() - t0)
    ms, err = np.asarray(times) * 1e3, np.abs(actions - z["actions"])
    return {"graph": graph, "hz": round(float(1e3 / ms.mean()), 1), "p50_ms": round(float(np.median(ms)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_abs_err": float(err.max()),
            "mean_abs_err": float(err.mean())}


if __name__ == "__main__":
    prepare() if sys.argv[1] == "prepare" else print(json.dumps(timed(sys.argv[2])))
