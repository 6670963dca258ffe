import pytest

from tfseg import config as config_lib
from tfseg.config import ConfigError


def test_default_config_loads_and_validates():
    cfg = config_lib.load()
    assert cfg.data.format == "synthetic"
    assert cfg.model.name == "unet"
    assert cfg.data.window_size == 128  # configs/default.yaml: sized for a 2-core CPU


def test_overrides_convert_types():
    cfg = config_lib.load(None, ["train.epochs=3", "model.name=unet", "train.learning_rate=1e-3",
                                 "data.augment.flip=false", "data.classes=[a, b]"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.learning_rate == pytest.approx(1e-3)
    assert cfg.data.augment.flip is False
    assert cfg.data.classes == ["a", "b"]


def test_unknown_key_in_file_names_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'.*epochs"):
        config_lib.load(path)


def test_unknown_key_in_set_names_key():
    with pytest.raises(ConfigError, match=r"train.epoch'.*allowed keys under 'train'"):
        config_lib.load(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'"):
        config_lib.load(None, ["trian.epochs=3"])


def test_set_wrong_type_names_key_type_and_value():
    with pytest.raises(ConfigError, match=r"'train.epochs': expected int, got str 'three'"):
        config_lib.load(None, ["train.epochs=three"])
    with pytest.raises(ConfigError, match=r"'data.augment.flip': expected bool"):
        config_lib.load(None, ["data.augment.flip=maybe"])


def test_out_of_range_and_bad_choice():
    with pytest.raises(ConfigError, match=r"'train.epochs': expected a value in \[1, 100000\], got 0"):
        config_lib.load(None, ["train.epochs=0"])
    with pytest.raises(ConfigError, match=r"'train.optimizer': expected one of \['adam', 'adamw', 'sgd'\], got 'adagrad'"):
        config_lib.load(None, ["train.optimizer=adagrad"])
    with pytest.raises(ConfigError, match=r"'data.window_size': expected a multiple of 32, got 100"):
        config_lib.load(None, ["data.window_size=100"])


def test_set_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config_lib.load(None, ["train.epochs"])


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        config_lib.load(tmp_path / "nope.yaml")


def test_yaml_round_trip_and_diff(tmp_path):
    cfg = config_lib.load(None, ["train.epochs=5"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = config_lib.load(path)
    assert config_lib.diff(cfg, again) == {}
    other = config_lib.load(path, ["train.epochs=6"])
    assert config_lib.diff(cfg, other) == {"train.epochs": (5, 6)}


def test_all_configs_in_repo_validate():
    from pathlib import Path

    from tfseg.data.formats import check_options

    import yaml

    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        if isinstance(yaml.safe_load(path.read_text()), list):
            continue  # a model list for pipelines/compare_architectures.py --models, not a config
        check_options(config_lib.load(path).data)


def test_a_yaml_list_is_not_a_config(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("- label: unet\n  overrides: [model.name=unet]\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections.*got a YAML list"):
        config_lib.load(path)


def test_set_nested_option_keys():
    cfg = config_lib.load(None, ["data.format=mask_folder", "data.options.mask_suffix=.mask",
                                 "data.options.images_dir=img", "data.palette.building='#FF0000'",
                                 "train.loss_weights.bce=0.5"])
    assert cfg.data.options == {"mask_suffix": ".mask", "images_dir": "img"}
    assert cfg.data.palette == {"building": "#FF0000"}
    assert cfg.train.loss_weights == {"bce": 0.5}


def test_list_and_dict_elements_are_type_checked_with_the_key_named():
    with pytest.raises(ConfigError, match=r"'data.percentiles\[0\]': expected float, got str 'a'"):
        config_lib.load(None, ["data.percentiles=[a,b]"])
    with pytest.raises(ConfigError, match=r"'data.bands\[1\]': expected int, got str 'x'"):
        config_lib.load(None, ["data.bands=[1,x]"])
    with pytest.raises(ConfigError, match=r"'train.loss_weights.dice': expected float, got str 'high'"):
        config_lib.load(None, ["train.loss_weights.dice=high"])
    with pytest.raises(ConfigError, match=r"'data.options': expected dict, got int 3"):
        config_lib.load(None, ["data.options=3"])
    assert config_lib.load(None, ["data.percentiles=[1, 99]"]).data.percentiles == [1.0, 99.0]


def test_format_options_are_checked_with_a_suggestion():
    from tfseg.data.formats import check_options, load_scenes

    cfg = config_lib.load(None, ["data.format=mask_folder", "data.options.mask_sufix=.mask", "data.root=/nowhere"])
    with pytest.raises(ConfigError, match=r"'data.options.mask_sufix': not an option of data.format 'mask_folder'; "
                                          r"did you mean 'mask_suffix'\?"):
        load_scenes(cfg.data)  # before looking at data.root
    cfg = config_lib.load(None, ["data.format=spacenet", "data.options.boundary_width=wide"])
    with pytest.raises(ConfigError, match=r"'data.options.boundary_width': expected int, got str 'wide'"):
        check_options(cfg.data)
    cfg = config_lib.load(None, ["data.options.products=[M]"])  # a dstl option on the synthetic format
    with pytest.raises(ConfigError, match=r"not an option of data.format 'synthetic' \(allowed: tile_overlap\)"):
        check_options(cfg.data)


def test_train_threshold_one_per_class_for_multilabel_only():
    ml = ["data.task=multilabel", "data.classes=[a, b, c]"]
    cfg = config_lib.load(None, [*ml, "train.threshold=[0.5, 0.3, 0.7]"])
    assert cfg.train.threshold == [0.5, 0.3, 0.7]
    assert config_lib.load(None, [*ml, "train.threshold=0.4"]).train.threshold == 0.4
    with pytest.raises(ConfigError, match=r"'train.threshold': a list needs data.task=multilabel and one value per "
                                          r"class \(3: \['a', 'b', 'c'\]\), got \[0.5, 0.3\]"):
        config_lib.load(None, [*ml, "train.threshold=[0.5, 0.3]"])
    with pytest.raises(ConfigError, match=r"'train.threshold': a list needs data.task=multilabel"):
        config_lib.load(None, ["data.classes=[a, b]", "train.threshold=[0.5, 0.5]"])
    with pytest.raises(ConfigError, match=r"'train.threshold': expected a value in \[0.0, 1.0\], got \[0.5, 1.5, 0.5\]"):
        config_lib.load(None, [*ml, "train.threshold=[0.5, 1.5, 0.5]"])
    with pytest.raises(ConfigError, match=r"'train.threshold\[1\]': expected float, got str 'x'"):
        config_lib.load(None, [*ml, "train.threshold=[0.5, x, 0.5]"])


@pytest.mark.parametrize("override,key", [
    ("train.learning_rate=nan", "train.learning_rate"), ("train.learning_rate=.nan", "train.learning_rate"),
    ("train.momentum=.nan", "train.momentum"), ("train.clipnorm=.inf", "train.clipnorm"),
    ("train.max_minutes=.inf", "train.max_minutes"), ("train.class_weights_max=.inf", "train.class_weights_max"),
    ("train.threshold=.nan", "train.threshold"), ("train.learning_rate=-inf", "train.learning_rate"),
    ("train.loss_weights.dice=.nan", "train.loss_weights.dice"),
    ("data.percentiles=[2, .inf]", r"data.percentiles\[1\]"),
])
def test_non_finite_numbers_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"config key '{key}': expected a finite number, got (nan|inf|-inf)"):
        config_lib.load(None, [override])


def test_non_finite_class_weights_are_refused():
    with pytest.raises(ConfigError, match=r"'train.class_weights': expected a list of finite non-negative numbers"):
        config_lib.load(None, ["train.class_weights=[.nan]"])
    with pytest.raises(ConfigError, match=r"'train.class_weights'"):
        config_lib.load(None, ["data.classes=[a, b]", "train.class_weights=[1, .inf]"])


def test_null_threshold_is_a_config_error():
    with pytest.raises(ConfigError, match=r"'train.threshold': expected float or list\[float\], got null"):
        config_lib.load(None, ["train.threshold=null"])


@pytest.mark.parametrize("key", ["train.seed", "data.seed", "data.synthetic.seed"])
def test_seeds_are_unsigned_32_bit(key):
    with pytest.raises(ConfigError, match=rf"'{key}': expected a value in \[0, 4294967295\], got -1"):
        config_lib.load(None, [f"{key}=-1"])
    with pytest.raises(ConfigError, match=rf"'{key}'"):
        config_lib.load(None, [f"{key}={2**32}"])
    assert config_lib._flatten(config_lib.load(None, [f"{key}={2**32 - 1}"]).to_dict())[key] == 2**32 - 1


def test_class_weights_length_is_checked_against_the_task():
    with pytest.raises(ConfigError, match=r"'train.class_weights': data.task=binary expects \[positive\] or "
                                          r"\[background, positive\] \(1 or 2 weights\), got 3"):
        config_lib.load(None, ["train.class_weights=[1, 2, 3]"])
    with pytest.raises(ConfigError, match=r"'train.class_weights': data.task=multiclass expects one weight per class "
                                          r"of data.classes \(3: \['a', 'b', 'c'\]\), got 2"):
        config_lib.load(None, ["data.classes=[a, b, c]", "train.class_weights=[1, 2]"])
    with pytest.raises(ConfigError, match=r"data.task=multilabel expects one weight per class"):
        config_lib.load(None, ["data.classes=[a, b]", "data.task=multilabel", "train.class_weights=[1, 2, 3]"])
    assert config_lib.load(None, ["train.class_weights=[1, 4]"]).train.class_weights == [1, 4]
    assert config_lib.load(None, ["train.class_weights=[4]"]).train.class_weights == [4]
    assert config_lib.load(None, ["data.classes=[a, b]", "train.class_weights=[1, 4]"]).train.class_weights == [1, 4]


def test_loss_weights_name_known_components():
    with pytest.raises(ConfigError, match=r"'train.loss_weights': unknown loss component\(s\) \['dcie'\]; "
                                          r"available: \['bce', 'cce', 'dice'"):
        config_lib.load(None, ["train.loss_weights={dcie: 1}"])
    with pytest.raises(ConfigError, match=r"'train.loss_weights': expected non-negative weights"):
        config_lib.load(None, ["train.loss_weights={bce: 1, dice: -1}"])
    with pytest.raises(ConfigError, match=r"'train.loss_weights': expected non-negative weights, at least one "
                                          r"positive"):
        config_lib.load(None, ["train.loss_weights={bce: 0}"])
    assert config_lib.load(None, ["train.loss_weights={focal: 1, lovasz: 0.5}"]).train.loss_weights == {
        "focal": 1.0, "lovasz": 0.5}


def test_ignore_index_must_not_be_a_label_value():
    for overrides in (["data.ignore_index=1"], ["data.ignore_index=0"],
                      ["data.classes=[a, b, c]", "data.ignore_index=2"],
                      ["data.classes=[a, b, c]", "data.task=multilabel", "data.ignore_index=1"]):
        with pytest.raises(ConfigError, match=r"config key 'data.ignore_index': \d is one of the .* every pixel of "
                                              r"that label would be ignored"):
            config_lib.load(None, overrides)
    assert config_lib.load(None, ["data.classes=[a, b, c]", "data.ignore_index=3"]).data.ignore_index == 3
    assert config_lib.load(None, ["data.ignore_index=2"]).data.ignore_index == 2
    assert config_lib.load(None, ["data.classes=[a, b, c]", "data.task=multilabel",
                                  "data.ignore_index=2"]).data.ignore_index == 2


def test_warmup_must_be_shorter_than_fixed_epochs():
    with pytest.raises(ConfigError, match=r"config keys 'train.warmup_epochs' and 'train.epochs': the warm-up \(10 "
                                          r"epochs\) must be shorter than the run \(4 epochs\)"):
        config_lib.load(None, ["train.epochs=4", "train.warmup_epochs=10"])
    with pytest.raises(ConfigError, match="train.warmup_epochs"):
        config_lib.load(None, ["train.epochs=4", "train.warmup_epochs=4"])
    assert config_lib.load(None, ["train.epochs=4", "train.warmup_epochs=3.5"]).train.warmup_epochs == 3.5
    # a budget lays the schedule out again (warm-up capped at half of it); onecycle has its own warm-up
    assert config_lib.load(None, ["train.epochs=4", "train.warmup_epochs=10", "train.max_minutes=5"])
    assert config_lib.load(None, ["train.epochs=4", "train.warmup_epochs=10", "train.schedule=onecycle"])


def test_plain_unet_refuses_encoder_and_decoder_fields():
    for override, key in (("model.encoder_weights=imagenet", "model.encoder_weights"),
                          ("model.encoder_freeze=true", "model.encoder_freeze"),
                          ("model.decoder_filters=[64, 32, 16, 8]", "model.decoder_filters")):
        with pytest.raises(ConfigError, match=rf"config key '{key}': a plain UNet \(model.name=unet"):
            config_lib.load(None, [override])
        with pytest.raises(ConfigError, match=rf"config key '{key}': a plain UNet\+\+"):
            config_lib.load(None, [override, "model.name=unetpp"])
        assert config_lib.load(None, [override, "model.backbone=resnet34"])


def test_deeplab_output_stride_must_be_an_int():
    base = ["model.name=deeplabv3plus", "model.backbone=resnet50", "data.window_size=512"]
    with pytest.raises(ConfigError, match=r"'model.options.output_stride': expected 8 or 16, got 16.0"):
        config_lib.load(None, [*base, "model.options.output_stride=16.0"])
    with pytest.raises(ConfigError, match=r"'model.options.output_stride': expected 8 or 16, got True"):
        config_lib.load(None, [*base, "model.options.output_stride=true"])
    assert config_lib.load(None, [*base, "model.options.output_stride=8"]).model.options == {"output_stride": 8}


def test_monitor_mode_must_match_the_metric():
    with pytest.raises(ConfigError, match=r"'train.monitor_mode': 'val_loss' is better when lower, so it needs "
                                          r"train.monitor_mode=min, got 'max'"):
        config_lib.load(None, ["train.monitor=val_loss"])
    with pytest.raises(ConfigError, match=r"'val_f1' is better when higher, so it needs train.monitor_mode=max"):
        config_lib.load(None, ["train.monitor=val_f1", "train.monitor_mode=min"])
    with pytest.raises(ConfigError, match=r"'train.monitor': expected a metric name"):
        config_lib.load(None, ["train.monitor="])
    assert config_lib.load(None, ["train.monitor=val_loss", "train.monitor_mode=min"]).train.monitor_mode == "min"
    assert config_lib.load(None, ["train.monitor=val_iou_building"]).train.monitor == "val_iou_building"
    assert config_lib.load(None, ["train.monitor=val_custom", "train.monitor_mode=min"])  # unknown: either way


def test_object_f1_needs_a_building_model():
    with pytest.raises(ConfigError, match=r"'train.object_f1': object scores need a building model .* got "
                                          r"data.task='multiclass'"):
        config_lib.load(None, ["data.classes=[a, b]", "train.object_f1=true"])
    assert config_lib.load(None, ["train.object_f1=true"]).train.object_f1
    assert config_lib.load(None, ["data.classes=[footprint, boundary]", "data.task=multilabel", "train.object_f1=true"])
