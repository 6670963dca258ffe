"""tfseg.data.colours: colour-coded masks (RGB, palette, grey; PNG and GeoTIFF) to class indices."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import rasterio
from PIL import Image

from tfseg.data.colours import ColourMaskError, decode_colour_mask, parse_hex, read_colour_mask, to_rgb_bands
from tfseg.data.raster import open_raster
from tfseg.errors import TfsegError

from .data.fixtures import write_geotiff

PALETTE = {"building": "#3C1098", "road": "#6EC1E4", "land": "#8429F6"}
RGB = np.array([parse_hex(c) for c in PALETTE.values()] + [(0, 0, 0)], np.uint8)  # index 3: not in the palette


def _labels():
    """A 6 x 5 class map over the palette's classes (0, 1, 2) with a few pixels of index 3 (black)."""
    labels = np.repeat(np.arange(3), 10).reshape(6, 5).astype(np.uint8)
    labels[5, 3:] = 3
    return labels


def _expected(labels, ignore_index=255):
    return np.where(labels == 3, ignore_index, labels).astype(np.uint8)


def test_parse_hex_accepts_both_spellings_and_names_the_key():
    assert parse_hex("#3C1098") == parse_hex("3c1098") == parse_hex("  #3c1098 ") == (60, 16, 152)
    for bad in ("#3C109", "#GG1098", "#3C10988", "", None):
        with pytest.raises(ColourMaskError, match=rf"config key 'data.palette.road': expected a colour '#RRGGBB', "
                                                  rf"got {repr(bad).replace('(', '[(]')}"):
            parse_hex(bad, "data.palette.road")
    assert issubclass(ColourMaskError, TfsegError)


def test_decode_the_docstring_example_and_class_order():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (60, 16, 152)
    labels, unknown = decode_colour_mask(rgb, {"building": "#3C1098", "land": "#000000"})
    np.testing.assert_array_equal(labels, [[0, 1], [1, 1]])
    assert labels.dtype == np.uint8 and unknown == {}
    # indices follow ``classes``, not the palette's order; a palette name outside them is ignored
    labels, _ = decode_colour_mask(rgb, {"building": "#3C1098", "land": "#000000"}, ignore_index=9,
                                   classes=["land", "building"])
    np.testing.assert_array_equal(labels, [[1, 0], [0, 0]])
    labels, _ = decode_colour_mask(rgb, {"building": "#3C1098", "land": "#000000"}, ignore_index=9,
                                   classes=["building"])
    np.testing.assert_array_equal(labels, [[0, 9], [9, 9]])


def test_unknown_colours_are_named_counted_and_reported(caplog):
    rgb = RGB[_labels()]
    rgb[0, 0] = (0, 0, 255)
    with caplog.at_level(logging.WARNING, logger="tfseg.data.colours"):
        labels, unknown = decode_colour_mask(rgb, PALETTE, ignore_index=200, source="tile_7.png")
    assert unknown == {"#000000": 2, "#0000FF": 1}
    expected = _expected(_labels(), 200)
    expected[0, 0] = 200
    np.testing.assert_array_equal(labels, expected)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert message.startswith("tile_7.png: 3 pixel(s) in colours not in data.palette -> ignore (200)")
    assert "'#0000FF': 1" in message and "'#000000': 2" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tfseg.data.colours"):
        assert decode_colour_mask(rgb, PALETTE, report=False)[1] == unknown
    assert caplog.records == []


def test_alpha_is_ignored_and_an_empty_palette_ignores_everything():
    rgba = np.concatenate([RGB[_labels()], np.full((6, 5, 1), 128, np.uint8)], axis=-1)
    labels, unknown = decode_colour_mask(rgba, PALETTE, report=False)
    np.testing.assert_array_equal(labels, _expected(_labels()))
    assert unknown == {"#000000": 2}
    labels, unknown = decode_colour_mask(RGB[_labels()], {}, ignore_index=7, report=False)
    assert (labels == 7).all() and sum(unknown.values()) == 30 and len(unknown) == 4


def test_unusable_masks_and_palettes_name_the_source():
    with pytest.raises(ColourMaskError, match=r"colour mask m.png: expected HxWx3 RGB, got shape \(4, 5\)"):
        decode_colour_mask(np.zeros((4, 5), np.uint8), PALETTE, source="m.png")
    with pytest.raises(ColourMaskError, match=r"<array>: expected HxWx3 RGB, got shape \(4, 5, 2\)"):
        decode_colour_mask(np.zeros((4, 5, 2), np.uint8), PALETTE)
    with pytest.raises(ColourMaskError, match="'data.palette': two class names share a colour"):
        decode_colour_mask(np.zeros((2, 2, 3), np.uint8), {"road": "#6EC1E4", "path": "#6ec1e4"})


@pytest.mark.parametrize("kind", ["rgb.png", "palette.png", "rgba.png", "rgb.tif"])
def test_encoded_mask_files_read_and_decode_back_to_the_classes(tmp_path, kind):
    labels = _labels()
    path = tmp_path / kind
    if kind == "palette.png":  # "P" mode: the class index is the pixel value, the colours its palette
        image = Image.fromarray(labels, mode="P")
        image.putpalette(RGB.reshape(-1).tolist())
        image.save(path)
    elif kind == "rgba.png":
        Image.fromarray(np.concatenate([RGB[labels], np.full(labels.shape + (1,), 255, np.uint8)], -1)).save(path)
    elif kind == "rgb.tif":
        write_geotiff(path, RGB[labels].transpose(2, 0, 1))
    else:
        Image.fromarray(RGB[labels]).save(path)
    rgb = read_colour_mask(path)
    assert rgb.shape == (6, 5, 3) and rgb.dtype == np.uint8
    decoded, unknown = decode_colour_mask(rgb, PALETTE, report=False, source=str(path))
    np.testing.assert_array_equal(decoded, _expected(labels))
    assert unknown == {"#000000": 2}


def test_grey_mask_reads_as_grey_colours(tmp_path):
    Image.fromarray(np.array([[0, 128], [255, 128]], np.uint8), mode="L").save(tmp_path / "grey.png")
    labels, unknown = decode_colour_mask(read_colour_mask(tmp_path / "grey.png"),
                                         {"background": "#000000", "water": "#808080"}, report=False)
    np.testing.assert_array_equal(labels, [[0, 1], [255, 1]])
    assert unknown == {"#FFFFFF": 1}


def test_read_colour_mask_missing_or_corrupt_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"colour mask not found: .*absent.png"):
        read_colour_mask(tmp_path / "absent.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ColourMaskError, match=r"cannot read colour mask .*broken.png \(corrupt\?\)"):
        read_colour_mask(tmp_path / "broken.png")


def test_to_rgb_bands_palette_geotiff_grey_and_rgb(tmp_path):
    labels = _labels()
    palette = write_geotiff(tmp_path / "palette.tif", labels)
    with rasterio.open(palette, "r+") as dst:
        dst.write_colormap(1, {i: tuple(int(v) for v in RGB[i]) + (255,) for i in range(4)})
    data = labels[..., None]
    np.testing.assert_array_equal(to_rgb_bands(data, open_raster(palette)), RGB[labels])
    grey = write_geotiff(tmp_path / "grey.tif", labels)  # no colour map: the value in all three bands
    np.testing.assert_array_equal(to_rgb_bands(data, open_raster(grey)), np.repeat(data, 3, axis=-1))
    four = np.concatenate([RGB[labels], np.zeros((6, 5, 1), np.uint8)], -1)  # 3+ bands: the first three
    np.testing.assert_array_equal(to_rgb_bands(four, None), RGB[labels])


def test_16bit_colour_masks_are_refused_at_load_time_and_when_read(tmp_path):
    """A 16-bit RGB mask decodes (PIL's 8-bit view) to the palette colours but to no colour in
    training (rasterio's 16-bit values): it is an error naming the file wherever it is read, and
    the load-time check decodes exactly as training does."""
    from rasterio.windows import Window

    from tfseg import config as config_module
    from tfseg.data.formats import load_scenes
    from tfseg.data.labels import ColourMaskLabels

    mask = np.zeros((3, 4, 4), np.uint16)
    mask[:, :, :2] = np.array(parse_hex(PALETTE["building"]), np.uint16)[:, None, None] * 257
    write_geotiff(tmp_path / "images" / "t.tif", np.ones((3, 4, 4), np.uint8))
    write_geotiff(tmp_path / "masks" / "t.tif", mask)
    path = tmp_path / "masks" / "t.tif"
    with pytest.raises(ColourMaskError, match=r"colour mask .*masks/t.tif: uint16 pixels, but colour masks must be "
                                              r"8-bit"):
        read_colour_mask(path)
    with pytest.raises(ColourMaskError, match=r"masks/t.tif: uint16 pixels"):
        ColourMaskLabels(open_raster(path), PALETTE, list(PALETTE))
    cfg = config_module.from_dict({"data": {"format": "colour_mask", "root": str(tmp_path), "classes": list(PALETTE),
                                            "palette": PALETTE, "val_fraction": 0.0}}).data
    with pytest.raises(ColourMaskError, match=r"masks/t.tif: uint16 pixels"):
        load_scenes(cfg)
    # an 8-bit mask: the load-time decoding is the training decoding (and read_colour_mask's)
    write_geotiff(path, (mask // 257).astype(np.uint8))
    labels = ColourMaskLabels(open_raster(path), PALETTE, list(PALETTE))
    decoded, unknown = labels.decode(Window(0, 0, 4, 4))
    assert unknown == {"#000000": 8} and (decoded[:, :2] == 0).all() and (decoded[:, 2:] == 255).all()
    np.testing.assert_array_equal(decode_colour_mask(read_colour_mask(path), PALETTE, report=False)[0], decoded)
