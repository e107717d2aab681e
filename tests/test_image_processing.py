"""COATImageProcessor (the model's preprocessing, saved with it) and the image/data layer of coat_hf.image_io."""

from __future__ import annotations

import PIL.Image
import pytest
import torch
from conftest import make_shape_image
from transformers import AutoImageProcessor

from coat_hf import COATConfig, COATImageProcessor
from coat_hf.image_io import (
    IMAGE_EXTENSIONS,
    find_images,
    find_mask,
    image_and_mask_folders,
    image_class,
    load_image,
    read_pairs_csv,
)


@pytest.fixture
def config() -> COATConfig:
    return COATConfig.preset("tiny")  # 64 px


def test_resize_geometry_keeps_the_whole_image(config):
    processor = COATImageProcessor.from_model_config(config)
    image = PIL.Image.new("RGB", (120, 60), "white")
    image.paste((0, 0, 0), (0, 0, 60, 60))  # left half black
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 64, 64) and pixels.dtype == torch.float32
    assert pixels[0, :, :, :30].max() == -1 and pixels[0, :, :, 34:].min() == 1  # both halves, squeezed


def test_crop_geometry_keeps_the_aspect_ratio(config):
    processor = COATImageProcessor.from_model_config(config, "crop")
    image = PIL.Image.new("RGB", (120, 60), "white")
    image.paste((0, 0, 0), (0, 0, 24, 60))  # the left fifth, outside the centre square
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 64, 64) and pixels.min() == 1  # only the white centre is left
    mask = PIL.Image.new("L", (120, 60), 0)
    mask.paste(255, (60, 0, 120, 60))  # right half
    resized = processor.preprocess_mask(mask, return_tensors="pt")
    assert resized.shape == (1, 1, 64, 64) and set(resized.unique().tolist()) == {0, 255}
    assert (resized[0, 0, :, 32:] == 255).all() and (resized[0, 0, :, :32] == 0).all()
    with pytest.raises(ValueError, match="geometry must be one of"):
        COATImageProcessor.from_model_config(config, "pad")


@pytest.mark.parametrize("geometry", ["resize", "crop"])
def test_save_and_load_round_trip(config, tmp_path, geometry):
    processor = COATImageProcessor.from_model_config(config, geometry)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    image = make_shape_image(64, 1).resize((90, 70))
    for loaded in (COATImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is COATImageProcessor and loaded.to_dict() == processor.to_dict()
        torch.testing.assert_close(loaded(image, return_tensors="pt")["pixel_values"],
                                   processor(image, return_tensors="pt")["pixel_values"], rtol=0, atol=0)


# --- the image/data layer -----------------------------------------------------------------------------------


def test_find_images_with_class_folders_masks_and_one_extension_list(tmp_path):
    names = ["b.png", "cat/2.jpg", "cat/1.GIF", "dog/1.webp", "notes.txt", ".hidden/x.png", "dog/.x.png"]
    for name in names:
        (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / name).write_bytes(b"")
    images = find_images(tmp_path / "images")
    assert [p.relative_to(tmp_path / "images").as_posix() for p in images] == ["b.png", "cat/1.GIF", "cat/2.jpg",
                                                                               "dog/1.webp"]
    assert [image_class(p, tmp_path / "images") for p in images] == [None, "cat", "cat", "dog"]
    assert ".gif" in IMAGE_EXTENSIONS
    with pytest.raises(ValueError, match="--data: not a folder"):
        find_images(tmp_path / "nope", "--data")

    (tmp_path / "masks" / "cat").mkdir(parents=True)
    for name in ("b.png", "1.png", "cat/1.png"):
        (tmp_path / "masks" / name).write_bytes(b"")
    assert image_and_mask_folders(tmp_path) == (tmp_path / "images", tmp_path / "masks")
    assert image_and_mask_folders(tmp_path / "images") == (tmp_path / "images", None)
    images_dir, masks_dir = tmp_path / "images", tmp_path / "masks"
    assert find_mask(masks_dir, images_dir / "b.png") == masks_dir / "b.png"
    assert find_mask(masks_dir, images_dir / "cat/1.GIF", images_dir) == masks_dir / "cat/1.png"  # its class first
    assert find_mask(masks_dir, images_dir / "dog/1.webp", images_dir) == masks_dir / "1.png"  # then the top
    with pytest.raises(FileNotFoundError, match="no mask for 2.jpg"):
        find_mask(masks_dir, images_dir / "cat/2.jpg", images_dir)


def test_load_image_raises_a_value_error_for_unreadable_files(tmp_path, monkeypatch):
    good, broken = tmp_path / "good.png", tmp_path / "broken.jpg"
    make_shape_image(32, 0).save(good)
    broken.write_bytes(good.read_bytes()[:40])
    assert load_image(good.read_bytes()).size == (32, 32)  # bytes, as 🤗 datasets hold images
    with pytest.raises(ValueError, match="broken"):
        load_image(broken, "broken")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)  # PIL raises DecompressionBombError above 2x this
    with pytest.raises(ValueError, match="too large to decode safely"):
        load_image(good)


def test_pairs_csv(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("\ufeffcontent,style,output\na.png,https://x.org/b.jpg,o.png\n/abs/c.png,d.png,\n",
                    encoding="utf-8")
    rows = read_pairs_csv(path)
    assert [(r.line, r.content, r.style, r.output) for r in rows] == [
        (2, str(tmp_path / "a.png"), "https://x.org/b.jpg", "o.png"), (3, "/abs/c.png", str(tmp_path / "d.png"), None)]
    for text, message in [("content\na.png\n", "needs the columns content,style"), ("content,style\n", "no pairs"),
                          ("content,style\na.png, \n", "line 2: empty content or style")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=f"^--pairs: .*{message}"):
            read_pairs_csv(path, "--pairs")
    with pytest.raises(ValueError, match="--pairs: file not found"):
        read_pairs_csv(tmp_path / "missing.csv", "--pairs")
