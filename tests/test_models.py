"""Every architecture x a small encoder configuration (TensorFlow backend): builds at 32-96 px and
non-square sizes, dynamic H/W tracing, get_config and .keras round trips, one training step under
float32 / mixed_float16 / mixed_bfloat16 with float32 outputs, size-multiple errors, freezing and
the ResNet34-UNet parameter count."""
import numpy as np
import pytest

import keras

from tests._model_cases import BANDS, CASES, SLOW, size_multiple
from tests.model_support import assert_roundtrip
from tfseg.models import BUILDERS, build_model

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def _build(case, classes=3, dynamic=False, **extra):
    arch, kwargs, (height, width) = CASES[case]
    shape = (None, None, BANDS) if dynamic else (height, width, BANDS)
    return build_model(arch, input_shape=shape, classes=classes, **kwargs, **extra), (height, width)


def _images(height, width, batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, height, width, BANDS)).astype("float32")


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def test_registry_has_every_architecture():
    assert set(BUILDERS) == {"unet", "unetpp", "fcn8", "fpn", "deeplabv3plus", "sm"}
    with pytest.raises(ValueError, match="available"):
        build_model("deeplab", input_shape=(64, 64, 3))


def _cases(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


@pytest.mark.parametrize("case", _cases(sorted(CASES)))
def test_build_serialize_and_trace_dynamic(case, tmp_path):
    import tensorflow as tf

    from tfseg.export import model_multiple

    model, (height, width) = _build(case, dynamic=True)
    images = _images(height, width)
    probs = keras.ops.convert_to_numpy(model(images, training=False))
    assert probs.shape == (2, height, width, 3)
    assert keras.backend.standardize_dtype(model.outputs[0].dtype) == "float32"
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)  # softmax head
    expected_multiple = size_multiple(case)
    assert model_multiple(model) == expected_multiple
    assert not any(isinstance(l, keras.layers.UpSampling2D) and l.interpolation != "nearest"
                   for l in _all_layers(model))
    # the exporter's serving graph has unknown batch, height and width
    fn = tf.function(lambda x: model(x, training=False))
    traced = fn.get_concrete_function(tf.TensorSpec([None, None, None, BANDS], tf.float32))
    assert traced.structured_outputs.shape.as_list() == [None, None, None, 3]
    # any multiple of the size multiple works with the same graph
    other = _images(height + expected_multiple, width, batch=1)
    assert tuple(fn(other).shape) == (1, height + expected_multiple, width, 3)
    # get_config round trip and .keras save/load give identical outputs
    loaded = assert_roundtrip(model, images, tmp_path, expected=probs, config_atol=1e-5, name=f"{case}.keras")
    assert loaded.get_config()["tfseg_multiple"] == expected_multiple


# every architecture trains under one policy here; the plain UNet and one backbone model under all
STEP_CASES = [(case, PRECISIONS[i % 3]) for i, case in enumerate(sorted(CASES))]
STEP_CASES += [("unet_plain", p) for p in PRECISIONS if ("unet_plain", p) not in STEP_CASES]
STEP_CASES += [("unet_resnet34", p) for p in PRECISIONS if ("unet_resnet34", p) not in STEP_CASES]
# UNet++ and DeepLabV3+ under both mixed-precision policies
STEP_CASES += [(c, p) for c in ("unetpp_plain_ds", "deeplabv3plus_vgg16") for p in PRECISIONS[1:]
               if (c, p) not in STEP_CASES]
STEP_CASES = [pytest.param(c, p, marks=pytest.mark.slow) if c in SLOW else (c, p) for c, p in STEP_CASES]


@pytest.mark.parametrize("case,precision", STEP_CASES)
def test_one_training_step(case, precision):
    from tfseg.losses import get_loss
    from tfseg.metrics import segmentation_metrics

    keras.mixed_precision.set_global_policy(precision)
    classes = 1 if precision == "mixed_float16" else 3
    model, (height, width) = _build(case, classes=classes)
    assert keras.backend.standardize_dtype(model.outputs[0].dtype) == "float32"
    if precision != "float32":
        assert any(l.compute_dtype != "float32" for l in _all_layers(model) if isinstance(l, keras.layers.Conv2D))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("bce_dice" if classes == 1 else "cce_dice",
                                                                       classes, 255),
                  metrics=segmentation_metrics(classes, 255),
                  # graph tracing of a 250-layer train step costs ~30 s on 2 cores: the backbone models
                  # run the step eagerly (their graph tracing is covered by the dynamic-shape test)
                  run_eagerly=not case.startswith("unet_plain"))
    labels = np.random.default_rng(1).integers(0, max(classes, 2), (2, height, width, 1)).astype("float32")
    labels[:, :4] = 255
    before = [w.copy() for w in model.get_weights()]
    logs = model.train_on_batch(_images(height, width), labels, return_dict=True)
    assert np.isfinite(logs["loss"]) and 0.0 <= logs["iou"] <= 1.0
    changed = sum(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert changed > len(before) // 3
    assert keras.backend.standardize_dtype(model(_images(height, width)).dtype) == "float32"


def test_unet_20_bands_in_10_classes_out():
    model = build_model("unet", input_shape=(64, 64, 20), classes=10, depth=3, filters=4)
    assert model.input_shape == (None, 64, 64, 20) and model.output_shape == (None, 64, 64, 10)


@pytest.mark.parametrize("arch,kwargs,multiple", [
    ("unet", dict(depth=4, filters=4), 16),
    ("unet", dict(backbone="resnet34"), 32),
    ("fcn8", dict(decoder_filters=[8]), 32),
    ("fpn", dict(), 32),
])
def test_size_not_a_multiple_names_size_and_multiple(arch, kwargs, multiple):
    with pytest.raises(ValueError, match=rf"width 100 is not a multiple of {multiple}"):
        build_model(arch, input_shape=(64, 100, 3), classes=1, **kwargs)


def test_bad_arguments_name_the_key():
    with pytest.raises(ValueError, match="model.backbone"):
        build_model("unet", input_shape=(64, 64, 3), backbone="resnet999")
    with pytest.raises(ValueError, match="model.decoder_filters"):
        build_model("unet", input_shape=(64, 64, 3), backbone="resnet34", decoder_filters=[8, 8])
    with pytest.raises(ValueError, match="model.options"):
        build_model("fpn", input_shape=(64, 64, 3), colour="red")
    with pytest.raises(ValueError, match="model.upsampling"):
        build_model("unet", input_shape=(64, 64, 3), depth=2, filters=2, upsampling="cubic")


@pytest.mark.parametrize("arch,kwargs,match", [
    # wrong-length decoder_filters: refused, never truncated or padded
    ("fpn", dict(backbone="resnet34", decoder_filters=[8, 8, 8]), r"model.decoder_filters: fpn takes 2 entries.*got 3"),
    ("fpn", dict(backbone="resnet34", decoder_filters=[8]), r"model.decoder_filters: fpn takes 2 entries.*got 1"),
    ("deeplabv3plus", dict(backbone="vgg16", decoder_filters=[8, 8, 8, 8]),
     r"model.decoder_filters: deeplabv3plus takes 3 entries.*got 4"),
    ("fcn8", dict(decoder_filters=[8, 8]), r"model.decoder_filters: fcn8 takes 1 entry.*got 2"),
    ("unet", dict(backbone="vgg16", decoder_filters=[8, 8, 8, 8, 8, 8]), r"model.decoder_filters: .*4 or 5 entries"),
    ("fpn", dict(backbone="resnet34", decoder_filters=[8, 0]), r"model.decoder_filters: expected positive integers"),
    # the residual stem feeds the fifth (full-resolution) block: with 4 blocks it would be dropped
    ("unet", dict(backbone="vgg16", decoder_filters=[8, 8, 8, 8], stem="residual"),
     r"model.stem: 'residual' .*4 entries.*give 5 widths"),
    # a float output stride (16.0 from YAML) is refused, not an AttributeError
    ("deeplabv3plus", dict(backbone="vgg16", output_stride=16.0), r"model.options.output_stride: .*got 16.0 \(a float"),
    # the encoder fields of a plain UNet (train.py passes every model field to every builder)
    ("unet", dict(depth=2, filters=4, encoder_weights="imagenet"), r"model.encoder_weights: only applies .*backbone"),
    ("unet", dict(depth=2, filters=4, encoder_freeze=True), r"model.encoder_freeze: only applies .*backbone"),
    ("unet", dict(depth=2, filters=4, decoder_filters=[8, 8]), r"model.decoder_filters: only applies .*backbone"),
    ("unet", dict(depth=2, filters=4, input_scale=2.0), r"model.options.input_scale: only applies .*backbone"),
    ("unet", dict(depth=2, filters=4, colour="red"), r"model.options: unknown option\(s\) \['colour'\]"),
])
def test_builders_refuse_what_they_would_silently_drop(arch, kwargs, match):
    from tfseg.errors import TfsegError

    with pytest.raises(TfsegError, match=match):
        build_model(arch, input_shape=(None, None, 3), classes=1, **kwargs)


def test_plain_unet_takes_every_model_field_at_its_default():
    """What tfseg.train passes to every builder: all ModelConfig fields plus the options."""
    import dataclasses

    from tfseg.config import ModelConfig

    fields = dataclasses.asdict(ModelConfig(depth=2, filters=4))
    fields.pop("name")
    fields.update(fields.pop("options"))
    model = build_model("unet", input_shape=(None, None, 3), classes=1, **fields)
    assert model.get_config()["tfseg_multiple"] == 4


def test_residual_stem_is_wired_into_the_fifth_block():
    counts = {stem: build_model("unet", input_shape=(None, None, 4), classes=1, backbone="vgg16",
                                decoder_filters=[8, 8, 8, 8, 8], stem=stem).count_params()
              for stem in ("plain", "residual")}
    assert counts["residual"] > counts["plain"]


def test_encoder_freeze_keeps_batchnorm_in_inference_mode():
    model = build_model("unet", input_shape=(32, 32, 3), classes=1, backbone="resnet34", encoder_freeze=True,
                        decoder_filters=[8, 8, 4, 4, 4])
    encoder = model.get_layer("encoder_resnet34")
    assert not encoder.trainable and encoder.trainable_weights == []
    assert model.trainable_weights  # the decoder still trains
    bn = encoder.get_layer("bn0")
    moving = keras.ops.convert_to_numpy(bn.moving_mean).copy()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    images = _images(32, 32)[..., :3]
    model.train_on_batch(images, np.ones((2, 32, 32, 1), "float32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.moving_mean), moving)
    features = keras.Model(encoder.input, encoder.outputs[-1])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(features(images, training=True)),
                               keras.ops.convert_to_numpy(features(images, training=False)), atol=1e-5)


SM_UNET_RESNET34_PARAMS = 24_456_444  # segmentation-models 1.0.1 Unet('resnet34'), 3 bands, 1 class


def test_unet_resnet34_parameter_count_matches_segmentation_models():
    model = build_model("unet", input_shape=(None, None, 3), classes=1, backbone="resnet34")
    ours = model.count_params()
    try:
        from tfseg.models.sm_adapter import import_segmentation_models

        sm = import_segmentation_models()
        reference = sm.Unet("resnet34", encoder_weights=None, input_shape=(None, None, 3), classes=1).count_params()
        assert ours == reference  # same layout, same 3x3 head: identical count
    except ImportError:
        reference = SM_UNET_RESNET34_PARAMS  # segmentation-models not installed: the published count
    assert abs(ours - reference) / reference < 0.05, (ours, reference)
    assert 24.0e6 < ours < 25.0e6


def test_config_choices_match_registry_and_feed_the_builders():
    from tfseg import config as config_lib
    from tfseg.models import BACKBONES
    from tfseg.train import model_kwargs, num_outputs

    assert sorted(config_lib.CHOICES["model.backbone"]) == sorted([""] + BACKBONES)
    assert set(config_lib.CHOICES["model.name"]) == set(BUILDERS)
    cfg = config_lib.from_dict({"data": {"classes": ["crops", "trees", "water"], "task": "multilabel"},
                                "model": {"name": "fpn", "backbone": "resnet34", "decoder_filters": [8, 8],
                                          "options": {"aggregation": "sum"}}})
    kwargs = model_kwargs(cfg.model, config_lib.resolve_task(cfg.data))
    assert kwargs["activation"] == "sigmoid"
    model = build_model(cfg.model.name, input_shape=(None, None, 4), classes=num_outputs(cfg.data), **kwargs)
    probs = keras.ops.convert_to_numpy(model(_images(32, 32)[..., :4]))
    assert probs.shape == (2, 32, 32, 3) and not np.allclose(probs.sum(-1), 1.0)  # independent sigmoids
    default = config_lib.load(None)
    plain = build_model(default.model.name, input_shape=(None, None, 4), classes=1, **model_kwargs(default.model))
    assert plain.get_layer("enc0_conv0") is not None and plain.get_config()["tfseg_multiple"] == 16
    for bad, key in ((["model.backbone=resnet99"], "model.backbone"),
                     (["model.stem=residual"], "model.stem"),
                     (["model.backbone=resnet34", "model.decoder_filters=[8, 8]"], "model.decoder_filters")):
        with pytest.raises(config_lib.ConfigError, match=key):
            config_lib.from_dict({}, bad)
    assert config_lib.from_dict({}, ["model.name=sm", "model.backbone=seresnext50"]).model.backbone == "seresnext50"
