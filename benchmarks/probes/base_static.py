"""Probe (issue 20, base >= 50 Hz): static int8 (calibrated on the bundle's recorded observations) for `base`.

  python benchmarks/probes/base_static.py prepare VARIANT    # after base_int4.py prepare (the bundle)
  python benchmarks/probes/base_static.py time GRAPH         # one graph per process, machine idle
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import base_int4  # noqa: E402
from base_int4 import BUNDLE, WORK  # noqa: E402

VARIANTS = {  # name -> quantize_static keyword arguments
    "qdq": dict(per_channel=False),
    "qdq-pc": dict(per_channel=True),
    "qop-pc": dict(per_channel=True, fmt="QOperator"),
    "qdq-pc-mm": dict(per_channel=True, ops=("MatMul", "Gemm")),
}


def feeds() -> list[dict]:
    from vla_distill.models.backends import _without_weights
    from vla_distill.models.base import frames_to_batch
    from vla_distill.models.bundle import REFERENCE_FILE
    from vla_distill.models.onnx_policy import graph_inputs

    z = np.load(BUNDLE / REFERENCE_FILE)
    frames = {k[4:]: z[k] for k in z.files if k.startswith("obs/")}
    policy = _without_weights(BUNDLE)
    return [graph_inputs(policy, frames_to_batch({k: v[i : i + 1] for k, v in frames.items()}, policy.input_keys,
                                                 [str(z["tasks"][i])])) for i in range(len(z["tasks"]))]


def prepare(name: str) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    kw = dict(VARIANTS[name])
    fmt, ops = kw.pop("fmt", "QDQ"), kw.pop("ops", ("Conv", "MatMul", "Gemm"))
    src = BUNDLE / "model.onnx"
    pre = WORK / "base_pre.onnx"
    if not pre.exists():
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    graph = onnx.load(str(pre)).graph
    weights = {i.name for i in graph.initializer}
    products = [n.name for n in graph.node if n.op_type in ("MatMul",
                                                            "Gemm") and not any(i in weights for i in n.input)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds())

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(pre), str(WORK / f"base_{name}.onnx"), Reader(), quant_format=getattr(QuantFormat, fmt),
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=list(ops),
                    nodes_to_exclude=products, **kw)


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(sys.argv[2])
    else:
        g = sys.argv[2]
        if g not in ("fp32", "int8", "int4"):
            base_int4.INT4 = WORK / f"base_{g}.onnx"
            g = "int4"
        print(json.dumps({**base_int4.timed(g), "graph": sys.argv[2]}))
