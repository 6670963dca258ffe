"""UNet++ and DeepLabV3+ specifics (TensorFlow backend): every head through the config, band
counts, deep supervision's averaged output, the dilated encoders' output stride, and the bad-input
errors (atrous rates too large for the tile, output stride, options). Shapes, dtypes, save/load
and training steps of both are in test_models.py's matrix (tests/_model_cases.py)."""
import numpy as np
import pytest

import keras

from tfseg import config as config_lib
from tfseg.models import build_model
from tfseg.train import model_kwargs, num_outputs


def _images(height, width, bands, batch=2):
    return np.random.default_rng(0).normal(size=(batch, height, width, bands)).astype("float32")


@pytest.mark.parametrize("name,options", [
    ("unetpp", {"deep_supervision": True}),
    ("deeplabv3plus", {"atrous_rates": [1, 2, 3]}),
])
@pytest.mark.parametrize("classes,task", [(["building"], "auto"), (["a", "b", "c"], "auto"), (["a", "b", "c"], "multilabel")])
def test_every_head_through_the_config(name, options, classes, task):
    cfg = config_lib.from_dict({
        "data": {"classes": classes, "task": task, "window_size": 64},
        "model": {"name": name, "backbone": "vgg16" if name == "deeplabv3plus" else "", "depth": 2, "filters": 4,
                  "decoder_filters": [8, 8, 4] if name == "deeplabv3plus" else [], "options": options}})
    model = build_model(cfg.model.name, input_shape=(None, None, 4), classes=num_outputs(cfg.data),
                        **model_kwargs(cfg.model, config_lib.resolve_task(cfg.data)))
    probs = keras.ops.convert_to_numpy(model(_images(32, 32, 4), training=False))
    assert probs.shape == (2, 32, 32, len(classes)) and probs.dtype == np.float32
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    if len(classes) == 3:  # softmax sums to one; independent sigmoids do not
        assert np.allclose(probs.sum(-1), 1.0, atol=1e-4) == (task != "multilabel")


@pytest.mark.parametrize("bands", [1, 12])
def test_any_band_count(bands):
    for name, kwargs in (("unetpp", dict(depth=2, filters=4)),
                         ("deeplabv3plus", dict(backbone="vgg16", decoder_filters=[8, 8, 4], atrous_rates=[1]))):
        model = build_model(name, input_shape=(32, 32, bands), classes=2, **kwargs)
        assert model(_images(32, 32, bands)).shape == (2, 32, 32, 2)


def test_deep_supervision_outputs_the_mean_of_the_heads():
    model = build_model("unetpp", input_shape=(None, None, 3), classes=1, depth=3, filters=4, deep_supervision=True)
    heads = [model.get_layer(f"head{j}_logits") for j in (1, 2, 3)]
    probe = keras.Model(model.input, [h.output for h in heads] + [model.output])
    *logits, probs = (keras.ops.convert_to_numpy(t) for t in probe(_images(32, 32, 3), training=False))
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-np.mean(logits, axis=0))), atol=1e-5)
    assert len(model.outputs) == 1  # one map to export, whatever the number of heads
    without = build_model("unetpp", input_shape=(None, None, 3), classes=1, depth=3, filters=4)
    assert [l.name for l in without.layers if l.name.endswith("_logits")] == ["head3_logits"]
    assert without.count_params() < model.count_params()


@pytest.mark.parametrize("backbone", ["resnet34", pytest.param("resnet50", marks=pytest.mark.slow),
                                      pytest.param("efficientnetb0", marks=pytest.mark.slow)])
def test_dilated_encoders_stop_at_the_output_stride(backbone):
    from tfseg.models.backbones import build_encoder

    for output_stride in (16, 8):
        inputs = keras.Input((64, 64, 3))
        features, encoder = build_encoder(backbone, inputs, strides=(4, 32), output_stride=output_stride)
        assert features[4].shape[1:3] == (16, 16)
        assert features[32].shape[1:3] == (64 // output_stride,) * 2
        rates = {l.dilation_rate[0] for l in encoder.layers if hasattr(l, "dilation_rate")}
        assert rates == ({1, 2} if output_stride == 16 else {1, 2, 4}), rates
    plain = build_encoder(backbone, keras.Input((64, 64, 3)), strides=(32,))[1]
    assert plain.count_params() == encoder.count_params()  # same weights: pretrained files still load


def test_bad_input_names_the_key():
    with pytest.raises(ValueError, match=r"model.options.atrous_rates .*rate 18 .*4x4 feature map.*smallest tile that "
                                         r"works is 320"):
        build_model("deeplabv3plus", input_shape=(64, 64, 3), backbone="vgg16")
    with pytest.raises(ValueError, match="model.options.output_stride: expected 8 or 16, got 32"):
        build_model("deeplabv3plus", input_shape=(64, 64, 3), output_stride=32)
    with pytest.raises(ValueError, match="model.options.atrous_rates: expected a list of positive integers"):
        build_model("deeplabv3plus", input_shape=(None, None, 3), atrous_rates=[6, 0])
    with pytest.raises(ValueError, match="model.options.deep_supervision"):
        build_model("unetpp", input_shape=(32, 32, 3), deep_supervision="yes")
    with pytest.raises(ValueError, match=r"model.options: unknown option\(s\) \['rates'\]"):
        build_model("deeplabv3plus", input_shape=(64, 64, 3), rates=[1])
    with pytest.raises(ValueError, match="width 40 is not a multiple of 16"):
        build_model("deeplabv3plus", input_shape=(64, 40, 3), atrous_rates=[1])
    with pytest.raises(ValueError, match="model.decoder_filters"):
        build_model("unetpp", input_shape=(64, 64, 3), backbone="vgg16", decoder_filters=[8, 8])


def test_config_validates_the_new_options():
    cfg = config_lib.from_dict({}, ["model.name=deeplabv3plus", "data.window_size=320"])
    assert cfg.model.name == "deeplabv3plus"
    for overrides, message in (
            (["data.window_size=256"], r"data.window_size=256 .*output stride 16; the smallest tile that works is 320"),
            (["model.options={output_stride: 8}"], r"rate 36 .*32x32 feature map that data.window_size=256 gives at "
                                                  r"output stride 8; the smallest tile that works is 320"),
            (["model.options={output_stride: 4}"], r"model.options.output_stride': expected 8 or 16, got 4"),
            (["model.options={atrous_rates: [2, x]}"], "model.options.atrous_rates: expected a list of positive")):
        with pytest.raises(config_lib.ConfigError, match=message):
            config_lib.from_dict({}, ["model.name=deeplabv3plus", *overrides])
    assert config_lib.from_dict({}, ["model.name=deeplabv3plus", "model.options={atrous_rates: [2, 4, 6]}"])
    with pytest.raises(config_lib.ConfigError, match="model.options.deep_supervision"):
        config_lib.from_dict({}, ["model.name=unetpp", "model.options={deep_supervision: 3}"])
