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
