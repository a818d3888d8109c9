"""The paper's CNN in Keras (tensorflow-cpu), timed like agent/examples/bench.rs.

Same architecture (619,786 parameters), same hyper-parameters (Adam lr 0.001, Keras'
defaults elsewhere, batch 32/128, dropout 0.5), same data (MNIST read from the IDX files
in data/mnist, pixels / 255), same protocol: a warm-up fit of 10 batches, then one timed
epoch over the first N training images; evaluation on the test set at --eval-batch (the agent's, 256).
Prints `key=value` lines on stdout for agent/core/bench/vs-keras.sh.
"""
import argparse
import os
import struct
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--data", default="data/mnist")
parser.add_argument("--batch-sizes", default="32,128")
parser.add_argument("--train-images", type=int, default=6400)
parser.add_argument("--eval-images", type=int, default=10000)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--eval-batch", type=int, default=256)
args = parser.parse_args()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(args.threads)
tf.config.threading.set_inter_op_parallelism_threads(args.threads)
keras = tf.keras


def read_idx(path):
    with open(path, "rb") as f:
        data = f.read()
    (magic,) = struct.unpack(">I", data[:4])
    if magic >> 8 != 0x08:
        sys.exit(f"reading {path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(images, labels):
    x = read_idx(os.path.join(args.data, images)).astype("float32") / 255.0
    y = read_idx(os.path.join(args.data, labels))
    return x.reshape(-1, 28, 28, 1), keras.utils.to_categorical(y, 10)


def build():
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(32, 3, padding="same", activation="relu"),
            L.MaxPooling2D(2),
            L.Conv2D(64, 3, padding="same", activation="relu"),
            L.MaxPooling2D(2),
            L.Conv2D(128, 3, padding="same", activation="relu"),
            L.MaxPooling2D(2, padding="same"),
            L.Flatten(),
            L.Dense(256, activation="relu"),
            L.Dropout(0.5),
            L.Dense(10, activation="softmax"),
        ]
    )
    assert model.count_params() == 619786, model.count_params()
    model.compile(keras.optimizers.Adam(0.001), "categorical_crossentropy", metrics=["accuracy"])
    return model


x_train, y_train = load("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
x_test, y_test = load("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
print(f"keras: tensorflow {tf.__version__}, {args.threads} threads", file=sys.stderr)

model = build()
for bs in [int(b) for b in args.batch_sizes.split(",")]:
    model.fit(x_train[: 10 * bs], y_train[: 10 * bs], batch_size=bs, epochs=1, verbose=0)
    n = max(args.train_images, bs)
    t0 = time.perf_counter()
    model.fit(x_train[:n], y_train[:n], batch_size=bs, epochs=1, verbose=0, shuffle=True)
    print(f"train bs={bs} images_per_s={n / (time.perf_counter() - t0):.0f}", flush=True)

model.evaluate(x_test[:1000], y_test[:1000], batch_size=args.eval_batch, verbose=0)
n = args.eval_images
t0 = time.perf_counter()
model.evaluate(x_test[:n], y_test[:n], batch_size=args.eval_batch, verbose=0)
print(f"eval bs={args.eval_batch} images_per_s={n / (time.perf_counter() - t0):.0f}", flush=True)
