"""keras-hub backbones as encoders (``model.backbone: hub:<local preset dir>``): tiny randomly
initialised keras-hub backbones (a ResNet and a DINOv2 ViT) saved as local presets by the test,
used in UNet, FPN and DeepLabV3+ with N != 3 bands; weights copied from the preset (first
convolution / patch embedding adapted); .keras round trip; a training step under mixed precision;
the errors for a missing preset, a backbone without a feature pyramid and the wrong architecture."""
import numpy as np
import pytest

import keras

keras_hub = pytest.importorskip("keras_hub", reason="keras-hub not installed (pip install 'tfseg[hub]')")

from tests.model_support import assert_roundtrip  # noqa: E402
from tfseg import config as config_lib  # noqa: E402
from tfseg.models import build_model  # noqa: E402
from tfseg.models.backbones import adapt_first_conv  # noqa: E402

BANDS = 5


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    keras.utils.set_random_seed(0)
    resnet = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 8, 16, 16],
        stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        image_shape=(None, None, 3))
    resnet.save_to_preset(str(root / "resnet"))
    dino = keras_hub.models.DINOV2Backbone(patch_size=14, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
                                           image_shape=(56, 56, 3), position_embedding_shape=(56, 56, 3))
    dino.save_to_preset(str(root / "dino"))
    vgg = keras_hub.models.VGGBackbone(stackwise_num_repeats=[1], stackwise_num_filters=[4], image_shape=(None, None, 3))
    vgg.save_to_preset(str(root / "vgg"))
    return {"root": root, "resnet": resnet, "dino": dino}


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def _images(size, batch=2):
    return np.random.default_rng(0).normal(size=(batch, size, size, BANDS)).astype("float32")


ARCHS = [("unet", dict(decoder_filters=[16, 8, 8, 4, 4])), ("fpn", dict(decoder_filters=[16, 8])),
         ("deeplabv3plus", dict(decoder_filters=[16, 16, 8], atrous_rates=[1, 2]))]


@pytest.mark.parametrize("arch,kwargs", ARCHS, ids=[a for a, _ in ARCHS])
def test_resnet_preset_in_every_architecture(presets, arch, kwargs, tmp_path):
    backbone = f"hub:{presets['root'] / 'resnet'}"
    model = build_model(arch, input_shape=(None, None, BANDS), classes=3, backbone=backbone, **kwargs)
    images = _images(64)
    probs = keras.ops.convert_to_numpy(model(images, training=False))
    assert probs.shape == (2, 64, 64, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
    # the preset's weights, first convolution adapted to 5 bands
    encoder = model.get_layer("encoder_hub_resnetbackbone")
    source = presets["resnet"].get_layer("conv1_conv").get_weights()[0]
    np.testing.assert_allclose(encoder.get_layer("conv1_conv").get_weights()[0], adapt_first_conv(source, BANDS))
    np.testing.assert_array_equal(encoder.get_layer("stack2_block0_2_conv").get_weights()[0],
                                  presets["resnet"].get_layer("stack2_block0_2_conv").get_weights()[0])
    if arch == "unet":  # .keras round trip and get_config/from_config give the same outputs
        assert_roundtrip(model, images, tmp_path, expected=probs, config_atol=1e-5, name="hub.keras")


@pytest.mark.parametrize("arch,kwargs", ARCHS, ids=[a for a, _ in ARCHS])
def test_dinov2_preset_through_the_multiscale_adapter(presets, arch, kwargs):
    backbone = f"hub:{presets['root'] / 'dino'}"
    model = build_model(arch, input_shape=(64, 64, BANDS), classes=1, backbone=backbone, **kwargs)
    probs = keras.ops.convert_to_numpy(model(_images(64), training=False))
    assert probs.shape == (2, 64, 64, 1) and 0 <= probs.min() and probs.max() <= 1
    encoder = model.get_layer("encoder_hub_dinov2backbone")
    kernels = [w for w in encoder.weights if len(w.shape) == 4]
    assert kernels[0].shape[2] == BANDS  # patch embedding adapted to 5 bands
    source = [w for w in presets["dino"].weights if len(w.shape) == 4][0]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernels[0]),
                               adapt_first_conv(keras.ops.convert_to_numpy(source), BANDS), rtol=1e-6)
    with pytest.raises(ValueError, match=r"fixed input size \(56, 56\) in its preset.*static input_shape \(tile, tile, 5\)"):
        build_model(arch, input_shape=(None, None, BANDS), backbone=backbone, **kwargs)


def test_training_step_under_mixed_precision(presets):
    from tfseg.losses import get_loss

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build_model("fpn", input_shape=(64, 64, BANDS), classes=1, backbone=f"hub:{presets['root'] / 'resnet'}",
                        decoder_filters=[8, 8], encoder_freeze=True)
    assert keras.backend.standardize_dtype(model.outputs[0].dtype) == "float32"
    encoder = model.get_layer("encoder_hub_resnetbackbone")
    assert encoder.get_layer("conv1_conv").compute_dtype == "bfloat16" and not encoder.trainable_weights
    model.compile(optimizer="adam", loss=get_loss("bce_dice", 1, 255), run_eagerly=True)
    frozen = encoder.get_weights()
    logs = model.train_on_batch(_images(64), np.ones((2, 64, 64, 1), "float32"), return_dict=True)
    assert np.isfinite(logs["loss"])
    assert all(np.array_equal(a, b) for a, b in zip(frozen, encoder.get_weights()))


def test_bad_presets_are_named(presets, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'resnet_50_imagenet' is not a local keras-hub preset directory.*"
                                                r"save_to_preset"):
        build_model("unet", input_shape=(None, None, 3), backbone="hub:resnet_50_imagenet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        build_model("unet", input_shape=(None, None, 3), backbone=f"hub:{tmp_path / 'empty'}")
    vgg = f"hub:{presets['root'] / 'vgg'}"
    with pytest.raises(ValueError, match=rf"model.backbone='{vgg}': the keras-hub VGGBackbone exposes no feature "
                                         r"pyramid .*exposes only its output \(None, None, None, 4\)"):
        build_model("fpn", input_shape=(None, None, 3), backbone=vgg)
    resnet = f"hub:{presets['root'] / 'resnet'}"
    with pytest.raises(ValueError, match="work with model.name unet, fpn and deeplabv3plus, not unetpp"):
        build_model("unetpp", input_shape=(None, None, 3), backbone=resnet)
    with pytest.raises(ValueError, match="model.encoder_weights: a keras-hub backbone"):
        build_model("unet", input_shape=(None, None, 3), backbone=resnet, encoder_weights="imagenet")
    assert config_lib.from_dict({}, ["model.name=fpn", f"model.backbone={resnet}"]).model.backbone == resnet
    with pytest.raises(config_lib.ConfigError, match="model.backbone.*keras-hub.*got model.name='fcn8'"):
        config_lib.from_dict({}, ["model.name=fcn8", f"model.backbone={resnet}"])


@pytest.mark.slow
def test_fixed_size_vit_trains_exports_and_predicts_through_tfseg(presets, tmp_path):
    """A DINOv2 encoder (fixed input size) through tfseg.train: built for the training window,
    the SavedModel takes only that tile size, predict tiles a larger scene with it (same
    probabilities as the Keras model on a tile) and another --tile-size is refused."""
    import json

    import rasterio
    import tensorflow as tf

    from tests.data.fixtures import tiny_synthetic_overrides
    from tfseg import predict, train
    from tfseg.inference import load_predictor
    from tfseg.model_card import load_model_card

    run_dir = tmp_path / "run"
    overrides = tiny_synthetic_overrides(tmp_path / "data") + [
        "train.epochs=1", "train.steps_per_epoch=2", "model.name=fpn", f"model.backbone=hub:{presets['root'] / 'dino'}",
        "model.decoder_filters=[8, 8]", "train.num_figure_tiles=0"]
    assert train.main(["--quiet", "--run-dir", str(run_dir), "--set", *overrides]) == 0
    assert 0.0 <= json.loads((run_dir / "metrics.json").read_text())["val"]["iou"] <= 1.0
    card = load_model_card(run_dir)
    assert card.tile_size == 64
    keras_predictor, saved = load_predictor(run_dir / "model.keras"), load_predictor(run_dir / "export")
    assert keras_predictor.fixed_size == saved.fixed_size == (64, 64)
    signature = tf.saved_model.load(str(run_dir / "export")).signatures["serving_default"]
    assert signature.structured_input_signature[1]["images"].shape.as_list() == [None, 64, 64, 4]
    raw = np.random.default_rng(0).integers(200, 3000, (1, 64, 64, 4)).astype(card.band_dtype)
    np.testing.assert_allclose(saved(raw), keras_predictor(raw), atol=1e-5)
    scene = sorted((tmp_path / "data").rglob("*.tif"))[0]  # 256 px: four 64 px tiles a side
    out = tmp_path / "pred"
    assert predict.main(["--model", str(run_dir), "--input", str(scene), "--output", str(out), "--quiet"]) == 0
    with rasterio.open(next(out.glob("*_prob.tif"))) as prob, rasterio.open(scene) as src:
        assert prob.shape == src.shape and np.isfinite(prob.read(1)).mean() > 0.9
    with pytest.raises(ValueError, match=r"--tile-size 128: .*takes only 64x64 tiles"):
        predict.predict_scenes(saved, [scene], tmp_path / "pred128", predict.PredictOptions(tile_size=128))
