"""``python -m tfseg.bench train [--json]``: training throughput of tfseg ``unet`` + ``resnet34``
against segmentation-models' ``Unet('resnet34')``: same batch, size, data, loss and optimizer,
float32 on this machine, after warm-up, measured in the same run (rounds interleaved so machine
noise hits both alike), without and with XLA ``jit_compile``. tfseg's model carries its
preprocessing (raw uint16 tiles in, normalized in the step, as training runs it);
segmentation-models gets the same tiles normalized beforehand (float32, 2x the bytes).

Last line with ``--json``: ``{"tfseg_img_per_s", "sm_img_per_s", "ratio", "ratio_xla"}`` where
``ratio = tfseg / sm`` without XLA and ``ratio_xla = tfseg / sm`` with XLA for both.

``--profile [--config YAML] [--set KEY=VALUE ...]`` instead profiles the model a config names
(no timing, no segmentation-models): parameters and training GFLOP per image (3 x the forward
FLOPs of TensorFlow's graph profiler) at ``data.window_size`` with ``--bands`` bands; last line
with ``--json``: ``{"model", "backbone", "params", "train_gflops_per_img", "tile", "bands"}``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

from ._args import non_negative_int, positive_int


def _parser():
    parser = argparse.ArgumentParser(prog="python -m tfseg.bench train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument("--size", type=positive_int, default=256, help="tile size in pixels (multiple of 32)")
    parser.add_argument("--bands", type=positive_int, default=3)
    parser.add_argument("--steps", type=positive_int, default=6, help="timed steps per round")
    parser.add_argument("--rounds", type=positive_int, default=2, help="interleaved measurement rounds")
    parser.add_argument("--warmup", type=non_negative_int, default=2, help="untimed steps after compilation")
    parser.add_argument("--upsampling", default="nearest", choices=["nearest", "bilinear", "transpose"],
                        help="tfseg decoder upsampling (segmentation-models' Unet uses nearest)")
    parser.add_argument("--no-xla", action="store_true", help="skip the jit_compile measurements")
    parser.add_argument("--profile", action="store_true",
                        help="profile the model of --config/--set (parameters, training GFLOP/image) instead of timing")
    parser.add_argument("--config", help="with --profile: the YAML config naming the model (default: configs/default.yaml)")
    from tfseg import config as config_lib

    config_lib.add_overrides_argument(parser, "with --profile: config overrides, e.g. --set model.name=unetpp")
    return parser


NORM_MEAN, NORM_STD = 1000.0, 300.0


def import_sm():
    """segmentation-models (tf.keras framework), its import banner ("Segmentation Models: using
    `tf.keras` framework.") sent to stderr: stdout keeps only the benchmark's table and JSON line."""
    from tfseg.models.sm_adapter import import_segmentation_models

    with contextlib.redirect_stdout(sys.stderr):
        return import_segmentation_models()


def profile_model(model, size: int) -> dict:
    """Parameters and training GFLOP per ``size`` x ``size`` image (3 x forward FLOPs) of a built model."""
    from .gpu import forward_flops

    bands = int(model.input_shape[-1])
    return {"params": int(model.count_params()),
            "train_gflops_per_img": 3.0 * forward_flops(model, (1, size, size, bands)) / 1e9,
            "tile": int(size), "bands": bands}


def profile_config(cfg, bands: int = 3) -> dict:
    """:func:`profile_model` of the model ``cfg`` describes (random init), at ``data.window_size``."""
    import keras

    from tfseg.models import build_model
    from tfseg.train import model_kwargs, num_outputs

    keras.mixed_precision.set_global_policy("float32")
    model = build_model(cfg.model.name, input_shape=(None, None, bands), classes=num_outputs(cfg.data),
                        **model_kwargs(cfg.model, cfg.data.task))
    return {"model": cfg.model.name, "backbone": cfg.model.backbone,
            **profile_model(model, cfg.data.window_size)}


def _models(args, jit_compile):
    import keras

    from tfseg.losses import get_loss
    from tfseg.models import Preprocess, build_model

    sm = import_sm()
    shape = (args.size, args.size, args.bands)
    preprocess = Preprocess([NORM_MEAN] * args.bands, [NORM_STD] * args.bands, nodata=0.0)
    tfseg_model = build_model("unet", input_shape=shape, classes=1, backbone="resnet34",
                              upsampling=args.upsampling, preprocessing=preprocess)
    sm_model = sm.Unet("resnet34", encoder_weights=None, input_shape=shape, classes=1, activation="sigmoid")
    for model in (tfseg_model, sm_model):
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=get_loss("bce_dice", 1, 255),
                      jit_compile=jit_compile)
    return {"tfseg": tfseg_model, "sm": sm_model}


def _inputs(name, raw):
    """tfseg: the raw tiles; segmentation-models: normalized on the host beforehand."""
    return raw if name == "tfseg" else ((raw.astype("float32") - NORM_MEAN) / NORM_STD)


def _step_time(model, images, labels, steps):
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    return (time.perf_counter() - start) / steps


def measure(args, jit_compile: bool) -> dict:
    """Images/s per model: median over interleaved rounds of ``steps`` training steps."""
    import keras
    import numpy as np

    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    raw = rng.normal(NORM_MEAN, NORM_STD, (args.batch_size, args.size, args.size, args.bands)).clip(1, 4000)
    raw = raw.astype("uint16")
    labels = (rng.random((args.batch_size, args.size, args.size, 1)) < 0.3).astype("uint8")
    models = _models(args, jit_compile)
    for name, model in models.items():  # compile + warm-up
        for _ in range(1 + args.warmup):
            model.train_on_batch(_inputs(name, raw), labels)
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            times[name].append(_step_time(model, _inputs(name, raw), labels, args.steps))
    result = {name: {"img_per_s": args.batch_size / statistics.median(t), "params": models[name].count_params()}
              for name, t in times.items()}
    if not jit_compile:  # FLOPs are the same network's either way: profiled once, for the plain run
        from .gpu import forward_flops

        shape = (1, args.size, args.size, args.bands)
        for name, model in models.items():
            result[name]["train_flops_per_img"] = 3.0 * forward_flops(model, shape)
    return result


def main(argv=None) -> int:
    from tfseg import _tf  # noqa: F401  (TensorFlow without its start-up notices; the parser imports it)

    args = _parser().parse_args(argv)
    if args.profile:
        return _profile_main(args)
    os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
    import keras

    if keras.backend.backend() != "tensorflow":
        print("error: bench train compares with segmentation-models, which needs KERAS_BACKEND=tensorflow",
              file=sys.stderr)
        return 2
    try:
        import_sm()
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.time()
    plain = measure(args, jit_compile=False)
    xla = None if args.no_xla else measure(args, jit_compile=True)
    ratio = plain["tfseg"]["img_per_s"] / plain["sm"]["img_per_s"]
    ratio_xla = xla["tfseg"]["img_per_s"] / xla["sm"]["img_per_s"] if xla else None
    print(f"training throughput, batch {args.batch_size}, {args.size}x{args.size}x{args.bands}, float32, "
          f"{os.cpu_count()} CPU threads, {args.rounds} rounds x {args.steps} steps (median)")
    print(f"{'model':<34}{'params':>12}{'img/s':>10}{'img/s XLA':>12}")
    for name, label in (("tfseg", f"tfseg unet+resnet34 ({args.upsampling})"), ("sm", "segmentation-models Unet")):
        xla_value = f"{xla[name]['img_per_s']:>12.2f}" if xla else f"{'-':>12}"
        print(f"{label:<34}{plain[name]['params']:>12,}{plain[name]['img_per_s']:>10.2f}{xla_value}")
    # how close each model runs to this CPU's measured float32 matmul peak: the ceiling on any
    # speed-up of the same network (training FLOPs = 3 x forward FLOPs, convolutions dominate)
    from .gpu import matmul_peak

    peak = matmul_peak(2048, "float32")
    for name in ("tfseg", "sm"):
        achieved = plain[name]["train_flops_per_img"] * plain[name]["img_per_s"]
        print(f"{name}: {plain[name]['train_flops_per_img'] / 1e9:.1f} training GFLOP/image, "
              f"{achieved / 1e9:.0f} GFLOP/s = {achieved / peak:.0%} of the measured matmul peak "
              f"({peak / 1e9:.0f} GFLOP/s)")
    print(f"ratio tfseg/sm: {ratio:.3f}   with XLA: {ratio_xla if ratio_xla is None else round(ratio_xla, 3)}   "
          f"({time.time() - started:.0f}s)")
    if args.json:
        print(json.dumps({"tfseg_img_per_s": round(plain["tfseg"]["img_per_s"], 3),
                          "sm_img_per_s": round(plain["sm"]["img_per_s"], 3),
                          "ratio": round(ratio, 4), "ratio_xla": None if ratio_xla is None else round(ratio_xla, 4)}))
    return 0


def _profile_main(args) -> int:
    from tfseg import config as config_lib

    try:
        cfg = config_lib.load(args.config, args.overrides)
        result = profile_config(cfg, args.bands)
    except (config_lib.ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{result['model']} {result['backbone'] or '(plain)'}, {result['tile']}x{result['tile']}x{result['bands']}: "
          f"{result['params']:,} parameters, {result['train_gflops_per_img']:.2f} training GFLOP/image")
    if args.json:
        print(json.dumps({**result, "train_gflops_per_img": round(result["train_gflops_per_img"], 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
