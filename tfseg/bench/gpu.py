"""``python -m tfseg.bench gpu [--json] [--allow-cpu]``: training throughput of tfseg ``unet`` +
``resnet34`` (``--backbone``) in mixed bfloat16 vs float32 on an accelerator, the speedup, and model FLOPs
utilization (MFU) against a matmul peak measured in the same run.

Runs on any Keras backend; by default ``KERAS_BACKEND=jax`` (set before Keras is imported), so it
works on a GPU machine with JAX and no TensorFlow. Exits with an error when no GPU is visible,
unless ``--allow-cpu`` (a smoke test: CPU numbers mean little), and when the backend's package
cannot be imported (without JAX: install it, or set ``KERAS_BACKEND=tensorflow``).

MFU = (training FLOPs per image x images/s) / measured peak matmul FLOP/s of the same dtype;
training FLOPs = 3 x forward FLOPs (forward + two backward matmuls per layer), forward FLOPs from
XLA's cost analysis of the compiled forward pass (JAX) or TensorFlow's graph profiler.

Last line with ``--json``: ``{"device", "backend", "fp32_img_per_s", "bf16_img_per_s", "speedup",
"model_gflops_per_img", "peak_tflops_fp32", "peak_tflops_bf16", "mfu_fp32", "mfu_bf16"}``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time


def _parser():
    parser = argparse.ArgumentParser(prog="python -m tfseg.bench gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--allow-cpu", action="store_true", help="run on CPU when no GPU is visible (smoke test)")
    parser.add_argument("--batch-size", type=int, default=0, help="default: 32 on GPU, 2 on CPU")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--bands", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default: 20 on GPU, 2 on CPU)")
    parser.add_argument("--matmul-size", type=int, default=0, help="default: 8192 on GPU, 512 on CPU")
    parser.add_argument("--backbone", default="resnet34",
                        help="the UNet's encoder (a model.backbone name; 'none': the plain UNet, depth 4, 16 filters)")
    return parser


def _gpu_devices(backend: str) -> list:
    if backend == "jax":
        import jax

        try:
            return [str(d) for d in jax.devices("gpu")]
        except RuntimeError:
            return []
    if backend == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415 - only on the TF backend

        return [d.name for d in tf.config.list_physical_devices("GPU")]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def _sync(value):
    import keras

    return keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.cast(value, "float32")))


def matmul_peak(size: int, dtype: str, repeats: int = 10) -> float:
    """Best measured FLOP/s of an N x N matmul (compiled once, timed over ``repeats``)."""
    import keras
    import numpy as np

    a = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(size=(size, size)), dtype=dtype)
    b = keras.ops.convert_to_tensor(np.random.default_rng(1).normal(size=(size, size)), dtype=dtype)
    best = float("inf")
    # the best of the XLA-compiled and the backend's own kernel (on CPU they differ: XLA's matmul
    # can be slower than the oneDNN/Eigen kernels the model's convolutions run on)
    for matmul in (_compiled(lambda x, y: keras.ops.matmul(x, y)), keras.ops.matmul):
        _sync(matmul(a, b))
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(repeats):
                out = matmul(a, b)
            _sync(out)
            best = min(best, (time.perf_counter() - start) / repeats)
    return 2.0 * size**3 / best


def _compiled(fn):
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415

        return tf.function(fn, jit_compile=True)
    return fn


def forward_flops(model, shape) -> float:
    """Forward FLOPs for one batch of ``shape``."""
    import keras
    import numpy as np

    x = np.zeros(shape, "float32")
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        analysis = jax.jit(lambda images: model(images, training=False)).lower(x).compile().cost_analysis()
        if isinstance(analysis, list):
            analysis = analysis[0]
        return float(analysis["flops"])
    if backend == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415

        graph = tf.function(lambda images: model(images, training=False)).get_concrete_function(
            tf.TensorSpec(shape, tf.float32)).graph
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        return float(tf.compat.v1.profiler.profile(graph, options=options).total_float_ops)
    return float("nan")


def train_throughput(precision: str, args) -> tuple[float, float]:
    """(images/s, forward FLOPs per image) for ``precision``, after compile + warm-up."""
    import keras
    import numpy as np

    from tfseg.losses import get_loss
    from tfseg.models import build_model

    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    shape = (args.batch_size, args.size, args.size, args.bands)
    backbone = "" if args.backbone == "none" else args.backbone
    model = build_model("unet", input_shape=shape[1:], classes=1, backbone=backbone)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=get_loss("bce_dice", 1, 255), jit_compile=True)
    rng = np.random.default_rng(0)
    images = rng.normal(size=shape).astype("float32")
    labels = (rng.random(shape[:3] + (1,)) < 0.3).astype("float32")
    for _ in range(3):
        model.train_on_batch(images, labels)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = model.train_on_batch(images, labels)
    float(np.asarray(loss))
    seconds = time.perf_counter() - start
    flops = forward_flops(model, shape) / args.batch_size
    keras.mixed_precision.set_global_policy("float32")
    return args.batch_size * args.steps / seconds, flops


# the package each Keras backend imports
BACKEND_PACKAGES = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}


def _missing_backend() -> str:
    """Why the Keras backend about to be used cannot be imported ('' when it can)."""
    if "keras" in sys.modules:
        return ""
    backend = os.environ.get("KERAS_BACKEND", "jax")
    package = BACKEND_PACKAGES.get(backend)
    if package is None:
        return ""
    try:
        importlib.import_module(package)
    except ImportError as exc:
        hint = ("install JAX for the accelerator (e.g. pip install 'jax[cuda12]') or run on TensorFlow with "
                "KERAS_BACKEND=tensorflow" if backend == "jax" else f"install {package} or choose another KERAS_BACKEND")
        return (f"bench gpu runs on Keras' {backend} backend (KERAS_BACKEND={backend}), and {package} cannot be "
                f"imported ({exc}); {hint}")
    return ""


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if "keras" not in sys.modules:  # choose the backend only for a fresh process: never leak it
        os.environ.setdefault("KERAS_BACKEND", "jax")
    problem = _missing_backend()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    import keras

    backend = keras.backend.backend()
    gpus = _gpu_devices(backend)
    if not gpus and not args.allow_cpu:
        print(f"error: no GPU visible to the {backend} backend; bench gpu measures an accelerator "
              f"(use --allow-cpu for a CPU smoke test)", file=sys.stderr)
        return 2
    on_gpu = bool(gpus)
    args.batch_size = args.batch_size or (32 if on_gpu else 2)
    args.steps = args.steps or (20 if on_gpu else 2)
    size = args.matmul_size or (8192 if on_gpu else 512)
    device = gpus[0] if on_gpu else f"CPU ({os.cpu_count()} threads)"
    peak32 = matmul_peak(size, "float32")
    peak16 = matmul_peak(size, "bfloat16")
    fp32, flops = train_throughput("float32", args)
    bf16, _ = train_throughput("mixed_bfloat16", args)
    train_flops = 3.0 * flops
    result = {
        "device": device, "backend": backend,
        "fp32_img_per_s": round(fp32, 3), "bf16_img_per_s": round(bf16, 3), "speedup": round(bf16 / fp32, 4),
        "model_gflops_per_img": round(train_flops / 1e9, 3),
        "peak_tflops_fp32": round(peak32 / 1e12, 4), "peak_tflops_bf16": round(peak16 / 1e12, 4),
        "mfu_fp32": round(train_flops * fp32 / peak32, 4), "mfu_bf16": round(train_flops * bf16 / peak16, 4),
    }
    print(f"tfseg unet+{args.backbone} training, batch {args.batch_size}, {args.size}x{args.size}x{args.bands}, "
          f"{backend} on {device}, XLA")
    print(f"{'precision':<16}{'img/s':>10}{'matmul peak TFLOP/s':>22}{'MFU':>8}")
    print(f"{'float32':<16}{fp32:>10.2f}{peak32 / 1e12:>22.3f}{result['mfu_fp32']:>8.1%}")
    print(f"{'mixed_bfloat16':<16}{bf16:>10.2f}{peak16 / 1e12:>22.3f}{result['mfu_bf16']:>8.1%}")
    print(f"speedup bf16/fp32: {result['speedup']:.2f}x   training GFLOPs/image: {result['model_gflops_per_img']}")
    for precision in ("fp32", "bf16"):
        if result[f"mfu_{precision}"] >= 1:
            print(f"warning: {precision} MFU {result[f'mfu_{precision}']:.2f} >= 1: the {size}x{size} matmul "
                  f"did not reach this device's peak; use a larger --matmul-size", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
