"""Checks fl-agent's exported model from Python, as another tool would use it.

usage: check.py MODEL.onnx MODEL.safetensors INPUTS.f32 PROBABILITIES.f32 [LAYERS INPUT]

INPUTS.f32 holds n examples as little-endian f32, row-major: images NCHW (pixels / 255),
or feature vectors; PROBABILITIES.f32 fl-agent's softmax for them (n x classes). LAYERS
names the network's stages in order, each `convN` (`convN:pool` when a 2x2 "same" pool
follows) or `fcN`, e.g. `conv1:pool,fc1,fc2`, and INPUT is `C,H,W` for images or `F` for
features; without them, the paper's CNN on MNIST (`conv1:pool,conv2:pool,conv3:pool,fc1,fc2`,
`1,28,28`). The ONNX model runs in
onnxruntime; the safetensors weights run through the network written here in numpy from
the documented layout (agent/README.md, "Exporting a model"). Both must predict the same
class as fl-agent on every image and give softmax within 1e-4. Exits 1 otherwise.
"""
import sys

import numpy as np
import onnxruntime
from safetensors.numpy import load_file

TOLERANCE = 1e-4


def conv3x3_relu(x, w, b):
    """'same' 3x3 convolution (NCHW, weights (out, in, 3, 3)) plus bias, then ReLU."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # n c h w 3 3
    out = np.tensordot(patches, w, axes=([1, 4, 5], [1, 2, 3]))  # n h w o
    return np.maximum(out.transpose(0, 3, 1, 2) + b[None, :, None, None], 0.0)


def max_pool_same(x):
    """2x2 max-pool, stride 2, 'same': an odd edge is pooled over what is there."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (0, h % 2), (0, w % 2)), constant_values=-np.inf)
    return padded.reshape(n, c, (h + 1) // 2, 2, (w + 1) // 2, 2).max(axis=(3, 5))


PAPER = ("conv1:pool,conv2:pool,conv3:pool,fc1,fc2", "1,28,28")


def numpy_forward(weights, layers, inputs):
    x = inputs
    dense = [name for name in layers if name.startswith("fc")]
    for stage in layers:
        name, _, pool = stage.partition(":")
        w, b = weights[f"{name}.weight"], weights[f"{name}.bias"]
        if name.startswith("conv"):
            x = conv3x3_relu(x, w, b)
            if pool == "pool":
                x = max_pool_same(x)
            continue
        x = x.reshape(x.shape[0], -1)  # channel-major flatten before the first dense layer
        x = x @ w.T + b
        if name != dense[-1]:
            x = np.maximum(x, 0.0)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main():
    onnx_path, safetensors_path, inputs_path, probabilities_path = sys.argv[1:5]
    layers, shape = sys.argv[5:7] if len(sys.argv) > 6 else PAPER
    layers = layers.split(",")
    shape = [int(d) for d in shape.split(",")]
    input_name = "images" if len(shape) == 3 else "features"
    weights = {k: v.astype(np.float64) for k, v in load_file(safetensors_path).items()}
    classes = weights[layers[-1] + ".bias"].shape[0]
    inputs = np.fromfile(inputs_path, dtype="<f4").reshape(-1, *shape)
    expected = np.fromfile(probabilities_path, dtype="<f4").reshape(-1, classes)
    n = inputs.shape[0]
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != ([input_name], ["probabilities"]):
        print(f"export check: the ONNX graph's inputs and outputs are {names}")
        return 1
    from_onnx = session.run(["probabilities"], {input_name: inputs})[0]
    from_safetensors = np.concatenate(
        [numpy_forward(weights, layers, inputs[i:i + 250].astype(np.float64)) for i in range(0, n, 250)]
    )
    failed = False
    for name, got in (("onnx", from_onnx), ("safetensors", from_safetensors)):
        same = int((got.argmax(axis=1) == expected.argmax(axis=1)).sum())
        worst = float(np.abs(got - expected).max())
        print(f"export check: {name}: same class on {same} of {n} {input_name}, largest softmax difference {worst:.2e}")
        failed |= same != n or worst > TOLERANCE
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
