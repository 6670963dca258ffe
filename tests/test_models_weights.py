"""Pretrained encoder weights from files saved here (no network): keras.applications ``.weights.h5``,
legacy ``.h5`` in the Keras cache (``imagenet``), image-classifiers' ResNet34 layout, N-band
adaptation of the first convolution, and the errors when a file is missing or wrong."""
import h5py
import numpy as np
import pytest

import keras

from tests.model_support import save_and_reload
from tfseg.models import build_model
from tfseg.models.backbones import adapt_first_conv, resnet34


def _legacy_h5(model, path):
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    return path


def _kernel(model, layer):
    return keras.ops.convert_to_numpy(model.get_layer(layer).kernel)


def test_adapt_first_conv_repeats_and_rescales_like_smp():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 3, 8)).astype("float32")
    six = adapt_first_conv(kernel, 6)
    np.testing.assert_allclose(six[:, :, 3:], kernel * 0.5)
    np.testing.assert_allclose(six.sum(2), kernel.sum(2), rtol=1e-5)  # constant image: same response
    np.testing.assert_allclose(adapt_first_conv(kernel, 1)[:, :, 0], kernel.sum(2))
    four = adapt_first_conv(kernel, 4)
    np.testing.assert_allclose(four[:, :, 3], kernel[:, :, 0] * 0.75)


@pytest.mark.parametrize("bands", [3, 4])
def test_resnet50_weights_file_loads_with_band_adaptation(tmp_path, bands):
    source = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path / "resnet50_notop.weights.h5"
    source.save_weights(path)
    model = build_model("unet", input_shape=(64, 64, bands), classes=1, backbone="resnet50",
                        encoder_weights=str(path), decoder_filters=[8, 8, 4, 4, 4])
    encoder = model.get_layer("encoder_resnet50")
    np.testing.assert_array_equal(_kernel(encoder, "conv3_block2_2_conv"), _kernel(source, "conv3_block2_2_conv"))
    expected = _kernel(source, "conv1_conv")
    if bands != 3:
        expected = expected[:, :, [0, 1, 2, 0]] * 0.75
    np.testing.assert_allclose(_kernel(encoder, "conv1_conv"), expected, rtol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(encoder.get_layer("conv4_block1_0_bn").moving_variance),
                                  keras.ops.convert_to_numpy(source.get_layer("conv4_block1_0_bn").moving_variance))
    # standardized bands are mapped to the caffe-style 0..255 range these weights expect
    assert model.get_layer("encoder_input_scale").scale == pytest.approx(57.4)
    # pretrained statistics keep Keras' slow moving average
    assert encoder.get_layer("conv4_block1_0_bn").momentum == pytest.approx(0.99)


def test_encoders_trained_from_scratch_use_the_decoder_bn_momentum(tmp_path):
    """Random-init encoders track batch statistics as fast as the decoder (0.9), so validation
    (inference-mode BatchNorm) does not lag the weights; the setting survives save/load."""
    from tfseg.models.blocks import BN_MOMENTUM

    for backbone in ("resnet34", "resnet50"):
        model = build_model("unet", input_shape=(64, 64, 4), classes=1, backbone=backbone,
                            decoder_filters=[8, 8, 4, 4, 4])
        momenta = {layer.momentum for layer in model.get_layer(f"encoder_{backbone}").layers
                   if isinstance(layer, keras.layers.BatchNormalization)}
        assert momenta == {BN_MOMENTUM}, backbone
    loaded = save_and_reload(model, tmp_path, "m.keras")
    assert {layer.momentum for layer in loaded.get_layer("encoder_resnet50").layers
            if isinstance(layer, keras.layers.BatchNormalization)} == {BN_MOMENTUM}


def test_imagenet_from_keras_cache_efficientnet_one_band(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    source = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(None, None, 3))
    (tmp_path / "models").mkdir()
    _legacy_h5(source, tmp_path / "models" / "efficientnetb0_notop.h5")
    model = build_model("fpn", input_shape=(32, 32, 1), classes=2, encoder_weights="imagenet",
                        decoder_filters=[8, 8])
    encoder = model.get_layer("encoder_efficientnetb0")
    np.testing.assert_allclose(_kernel(encoder, "stem_conv"), _kernel(source, "stem_conv").sum(2, keepdims=True),
                               rtol=1e-5)
    np.testing.assert_array_equal(_kernel(encoder, "block5b_project_conv"), _kernel(source, "block5b_project_conv"))
    # keras' in-model 1/255 + ImageNet normalization stay identity: inputs are standardized already
    norm = [l for l in encoder.layers if isinstance(l, keras.layers.Normalization)][0].get_weights()
    np.testing.assert_array_equal(norm[0], 0.0)
    np.testing.assert_array_equal(norm[1], 1.0)


def test_imagenet_missing_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    expected = tmp_path / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with pytest.raises(FileNotFoundError, match="model.encoder_weights") as info:
        build_model("unet", input_shape=(64, 64, 3), backbone="resnet50", encoder_weights="imagenet")
    assert str(expected) in str(info.value) and "storage.googleapis.com" in str(info.value)
    with pytest.raises(FileNotFoundError, match="efficientnetb3_notop.h5"):
        build_model("fpn", input_shape=(64, 64, 3), backbone="efficientnetb3", encoder_weights="imagenet")


def test_missing_or_wrong_weights_file_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.encoder_weights.*nope.h5"):
        build_model("unet", input_shape=(64, 64, 3), backbone="resnet34", encoder_weights=str(tmp_path / "nope.h5"))
    other = tmp_path / "vgg.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None).save_weights(other)
    with pytest.raises(ValueError, match="model.encoder_weights"):
        build_model("unet", input_shape=(64, 64, 3), backbone="resnet34", encoder_weights=str(other))


def test_resnet34_loads_image_classifiers_layout_and_own_n_band_file(tmp_path):
    """The published ResNet34 ImageNet file is image-classifiers' (as used by segmentation-models);
    tfseg's ResNet34 has the same layout and names, so that file loads (here: saved locally)."""
    try:
        from classification_models.tfkeras import Classifiers
        source = Classifiers.get("resnet34")[0]((None, None, 3), weights=None, include_top=False)
    except Exception as exc:  # noqa: BLE001
        source = resnet34((None, None, 3))  # same layout; image-classifiers not importable here
        print(f"image-classifiers unavailable ({exc}); using tfseg's resnet34 as the file source")
    path = _legacy_h5(source, tmp_path / "resnet34_imagenet_1000_no_top.h5")
    model = build_model("unet", input_shape=(32, 32, 8), classes=1, backbone="resnet34",
                        encoder_weights=str(path), decoder_filters=[8, 8, 4, 4, 4])
    encoder = model.get_layer("encoder_resnet34")
    np.testing.assert_array_equal(_kernel(encoder, "stage3_unit2_conv1"), _kernel(source, "stage3_unit2_conv1"))
    np.testing.assert_allclose(_kernel(encoder, "conv0"), _kernel(source, "conv0")[:, :, [i % 3 for i in range(8)]]
                               * 3 / 8, rtol=1e-6)
    data_mean = keras.ops.convert_to_numpy(source.get_layer("bn_data").moving_mean)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(encoder.get_layer("bn_data").moving_mean),
                                  data_mean[[i % 3 for i in range(8)]])
    # same layout => same function: with 3 bands the encoder reproduces the source network exactly
    rgb = build_model("unet", input_shape=(64, 64, 3), classes=1, backbone="resnet34", encoder_weights=str(path),
                      decoder_filters=[8, 8, 4, 4, 4]).get_layer("encoder_resnet34")
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(rgb(images)[-1]),
                               keras.ops.convert_to_numpy(source(images)), rtol=1e-4, atol=1e-4)
    # an 8-band encoder file (e.g. from an earlier tfseg run) loads as is
    own = tmp_path / "own.weights.h5"
    encoder.save_weights(own)
    again = build_model("fpn", input_shape=(32, 32, 8), classes=1, backbone="resnet34", encoder_weights=str(own),
                        decoder_filters=[8, 8])
    np.testing.assert_array_equal(_kernel(again.get_layer("encoder_resnet34"), "conv0"), _kernel(encoder, "conv0"))


def test_legacy_file_missing_a_layer_is_an_error_naming_it(tmp_path):
    """No by_name fallback that leaves random weights: the first layer without weights is named."""
    path = _legacy_h5(resnet34((None, None, 3)), tmp_path / "resnet34_imagenet_1000_no_top.h5")
    with h5py.File(path, "a") as handle:
        names = [n.decode() if isinstance(n, bytes) else n for n in handle.attrs["layer_names"]]
        del handle["stage3_unit2_conv1"]
        handle.attrs["layer_names"] = [n.encode() for n in names if n != "stage3_unit2_conv1"]
    with pytest.raises(ValueError, match=r"model.encoder_weights: .*has no weights for layer 'stage3_unit2_conv1' "
                                         r"\(first mismatching layer"):
        build_model("unet", input_shape=(32, 32, 3), classes=1, backbone="resnet34", encoder_weights=str(path),
                    decoder_filters=[8, 8, 4, 4, 4])
