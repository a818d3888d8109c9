"""Checks fl-agent's exported model from Python, as another tool would use it.

usage: check.py MODEL.onnx MODEL.safetensors IMAGES.f32 PROBABILITIES.f32

IMAGES.f32 holds n images as little-endian f32 pixels / 255 (n x 784, row-major);
PROBABILITIES.f32 fl-agent's softmax for them (n x 10). The ONNX model runs in
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


def numpy_forward(weights, images):
    x = images
    for layer in ("conv1", "conv2", "conv3"):
        x = max_pool_same(conv3x3_relu(x, weights[f"{layer}.weight"], weights[f"{layer}.bias"]))
    x = x.reshape(x.shape[0], -1)  # channel-major flatten: (n, 128 * 4 * 4)
    x = np.maximum(x @ weights["fc1.weight"].T + weights["fc1.bias"], 0.0)
    logits = x @ weights["fc2.weight"].T + weights["fc2.bias"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main():
    onnx_path, safetensors_path, images_path, probabilities_path = sys.argv[1:5]
    images = np.fromfile(images_path, dtype="<f4").reshape(-1, 1, 28, 28)
    expected = np.fromfile(probabilities_path, dtype="<f4").reshape(-1, 10)
    n = images.shape[0]
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != (["images"], ["probabilities"]):
        print(f"export check: the ONNX graph's inputs and outputs are {names}")
        return 1
    from_onnx = session.run(["probabilities"], {"images": images})[0]
    weights = {k: v.astype(np.float64) for k, v in load_file(safetensors_path).items()}
    from_safetensors = np.concatenate([numpy_forward(weights, images[i:i + 250].astype(np.float64)) for i in range(0, n, 250)])
    failed = False
    for name, got in (("onnx", from_onnx), ("safetensors", from_safetensors)):
        same = int((got.argmax(axis=1) == expected.argmax(axis=1)).sum())
        worst = float(np.abs(got - expected).max())
        print(f"export check: {name}: same class on {same} of {n} images, largest softmax difference {worst:.2e}")
        failed |= same != n or worst > TOLERANCE
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
