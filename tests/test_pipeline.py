"""The coat-appearance-transfer pipeline: registration, bundled models, every input kind, parameter and error."""

from __future__ import annotations

import functools
import http.server
import io
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageFile
import pytest
import torch
from conftest import make_shape_image, to_pixel_values
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY

import coat_hf
from coat_hf import COATAppearanceTransferPipeline, COATImageProcessor, COATModel, image_io, pretrained
from coat_hf.image_io import MIN_IMAGE_SIDE, load_image, to_rgb
from coat_hf.pipeline_coat import TASK, _as_pairs
from coat_hf.visualization import confidence_heatmap, default_scale, draw_matches

UNTRAINED = pretrained.resolve_model(pretrained.UNTRAINED_MODEL)


@pytest.fixture(scope="module")
def pipe() -> COATAppearanceTransferPipeline:
    return pipeline(TASK, model=UNTRAINED, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Small generated pictures on disk, non-square so that output sizes are telling."""
    folder = tmp_path_factory.mktemp("images")
    paths = {"content": folder / "content.png", "style": folder / "style.jpg", "other": folder / "other.png"}
    make_shape_image(64, 1).resize((48, 40)).save(paths["content"])
    make_shape_image(64, 2).resize((36, 52)).save(paths["style"])
    make_shape_image(64, 3).save(paths["other"])
    return paths


def pixels(image: PIL.Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# --- registration and bundled models -------------------------------------------------------------------------


def test_task_is_registered_and_uses_the_saved_image_processor(pipe, tmp_path):
    assert TASK in PIPELINE_REGISTRY.get_supported_tasks()
    assert isinstance(pipe, COATAppearanceTransferPipeline) and isinstance(pipe.model, COATModel)
    assert pipe.tokenizer is None and pipe.processor is None
    assert isinstance(pipe.image_processor, COATImageProcessor)  # from the folder's preprocessor_config.json
    assert pipe.image_processor.to_dict() == COATImageProcessor.from_pretrained(UNTRAINED).to_dict()
    # A folder without one (as training exports) gets the processor its config implies.
    pipe.model.save_pretrained(tmp_path)
    plain = pipeline(TASK, model=str(tmp_path), device="cpu", dtype=torch.float32)
    assert plain.image_processor.to_dict() == COATImageProcessor.from_model_config(pipe.model.config).to_dict()
    # One saved beside the model is the one used.
    COATImageProcessor.from_model_config(pipe.model.config, "crop").save_pretrained(tmp_path)
    cropping = pipeline(TASK, model=str(tmp_path), device="cpu", dtype=torch.float32)
    assert cropping.image_processor.do_center_crop and cropping.image_processor.crop_size.height == 64
    with pytest.raises(ValueError, match="image_processor: .* needs a COATImageProcessor"):
        COATAppearanceTransferPipeline(pipe.model, image_processor=object())
    assert PIPELINE_REGISTRY.supported_tasks[TASK]["default"]["model"] == (pretrained.resolve_model(None), None)


def test_no_model_argument_loads_the_bundled_default_offline(monkeypatch, images, caplog):
    import huggingface_hub.constants

    real_connect = socket.socket.connect

    def loopback_only(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"network access attempted: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    p = pipeline(TASK)
    assert Path(p.model.name_or_path) == Path(pretrained.resolve_model(None))
    result = p(str(images["content"]), str(images["style"]))
    assert result["image"].size == (48, 40)
    if pretrained.default_model() == pretrained.UNTRAINED_MODEL:
        assert "UNTRAINED" in caplog.text


def test_bundled_models_are_found_by_name_and_a_dropped_in_folder_becomes_the_default(monkeypatch, tmp_path):
    assert pretrained.UNTRAINED_MODEL in pretrained.available_models()
    assert pretrained.resolve_model(pretrained.UNTRAINED_MODEL) == UNTRAINED
    assert pretrained.resolve_model(tmp_path) == str(tmp_path)  # a local folder as is
    assert pretrained.resolve_model("someone/coat-model") == "someone/coat-model"  # a Hub id, passed through
    assert pretrained.is_untrained(pretrained.UNTRAINED_MODEL) and not pretrained.is_untrained(tmp_path)

    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    pretrained.make_placeholder(tmp_path / pretrained.UNTRAINED_MODEL)
    assert pretrained.default_model() == pretrained.UNTRAINED_MODEL
    pretrained.make_placeholder(tmp_path / pretrained.DEFAULT_MODEL)  # stands in for the trained model's folder
    assert pretrained.default_model() == pretrained.DEFAULT_MODEL
    assert pretrained.resolve_model(None) == str(tmp_path / pretrained.DEFAULT_MODEL)
    p = pipeline(TASK, model=pretrained.resolve_model("coat-celeba-128"), device="cpu")
    assert Path(p.model.name_or_path) == tmp_path / pretrained.DEFAULT_MODEL


def test_dtype_choices_and_float16_weights_run_in_float32_on_cpu(tmp_path, images):
    COATModel.from_pretrained(UNTRAINED).half().save_pretrained(tmp_path)
    assert pipeline(TASK, model=str(tmp_path), device="cpu").model.dtype == torch.float32
    assert pipeline(TASK, model=str(tmp_path), device="cpu", dtype=torch.float16).model.dtype == torch.float16
    p = pipeline(TASK, model=UNTRAINED, device="cpu", dtype=torch.bfloat16)
    assert p.model.dtype == torch.bfloat16 and p.device == torch.device("cpu")
    assert p(images["content"], images["style"])["image"].size == (48, 40)


def test_model_must_be_a_coat_model():
    with pytest.raises(ValueError, match="^model: "):
        COATAppearanceTransferPipeline(model=torch.nn.Linear(2, 2))


# --- input kinds ----------------------------------------------------------------------------------------------


def test_positional_pair_of_pil_images(pipe):
    content, style = make_shape_image(64, 1).resize((50, 30)), make_shape_image(64, 2)
    result = pipe(content, style)
    assert set(result) == {"image"}
    assert result["image"].mode == "RGB" and result["image"].size == (50, 30)


def test_paths_as_str_and_pathlib(pipe, images):
    a = pipe(str(images["content"]), str(images["style"]), seed=0)["image"]
    b = pipe(images["content"], images["style"], seed=0)["image"]
    assert a.size == (48, 40) and np.array_equal(pixels(a), pixels(b))


def test_numpy_arrays(pipe, images):
    rgb = np.asarray(PIL.Image.open(images["content"]))  # (40, 48, 3) uint8
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    for array, expected in ((rgb, rgb), (rgba, rgb), (rgb[..., 0], rgb[..., :1]), (rgb[..., :1], rgb[..., :1])):
        assert np.array_equal(np.asarray(load_image(array)), np.broadcast_to(expected, rgb.shape))
    # The array and the file it came from give the same result.
    from_array = pipe(rgb, images["style"], seed=3)["image"]
    assert np.array_equal(pixels(from_array), pixels(pipe(images["content"], images["style"], seed=3)["image"]))


def test_dict_list_of_dicts_list_of_tuples_and_two_lists(pipe, images):
    c, s, o = images["content"], images["style"], images["other"]
    single = pipe({"content": c, "style": s}, seed=1)
    assert isinstance(single, dict) and single["image"].size == (48, 40)
    results = pipe([{"content": c, "style": s}, {"content": o, "style": c}], seed=1)
    assert isinstance(results, list) and [r["image"].size for r in results] == [(48, 40), (64, 64)]
    assert np.array_equal(pixels(results[0]["image"]), pixels(single["image"]))
    # Tuples and two parallel lists are the same pairs.
    expected = [{"content": c, "style": s, "index": 0}, {"content": o, "style": c, "index": 1}]
    assert _as_pairs([(c, s), (o, c)], None) == _as_pairs([c, o], [s, c]) == (expected, False)
    assert [r["image"].size for r in pipe([c, o], [s, c])] == [(48, 40), (64, 64)]
    assert pipe([]) == []


def test_transparent_palette_greyscale_and_16_bit_images_become_rgb(pipe, tmp_path):
    rgba = PIL.Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    assert load_image(rgba).getpixel((5, 5)) == (255, 255, 255)  # composited onto white
    palette = PIL.Image.new("P", (20, 20), 0)
    palette.putpalette([0, 0, 255] * 256)
    palette.info["transparency"] = 0
    assert load_image(palette).getpixel((5, 5)) == (255, 255, 255)
    palette.info.pop("transparency")
    assert load_image(palette).getpixel((5, 5)) == (0, 0, 255)

    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (24, 1))  # (24, 32) 16-bit
    PIL.Image.fromarray(ramp).save(tmp_path / "sixteen.png")
    assert PIL.Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    loaded = np.asarray(load_image(tmp_path / "sixteen.png"))
    assert loaded.shape == (24, 32, 3) and loaded[0, 0, 0] == 0 and loaded[0, -1, 0] == 255
    assert 100 < loaded[0, 16, 0] < 155  # scaled, not clipped to white

    grey = make_shape_image(40, 5).convert("L")
    assert np.array_equal(np.asarray(load_image(grey))[..., 1], np.asarray(grey))
    assert load_image(grey.convert("1")).mode == "RGB" and to_rgb(PIL.Image.new("CMYK", (20, 20))).mode == "RGB"
    result = pipe(palette, tmp_path / "sixteen.png")
    assert result["image"].mode == "RGB" and result["image"].size == (20, 20)


def test_exif_rotated_jpeg_gives_an_upright_result(pipe, tmp_path):
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    make_shape_image(64, 1).resize((60, 36)).save(tmp_path / "rotated.jpg", exif=exif)
    assert PIL.Image.open(tmp_path / "rotated.jpg").size == (60, 36)
    assert load_image(tmp_path / "rotated.jpg").size == (36, 60)
    assert pipe(tmp_path / "rotated.jpg", make_shape_image(32, 2))["image"].size == (36, 60)


@pytest.fixture
def http_folder(tmp_path, monkeypatch):
    """A loopback HTTP server on 127.0.0.1 serving ``tmp_path``; yields its base URL."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=tmp_path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_urls(pipe, http_folder):
    folder, url = http_folder
    make_shape_image(64, 1).resize((40, 32)).save(folder / "a.png")
    make_shape_image(64, 2).save(folder / "b.jpg")
    assert pipe(f"{url}/a.png", f"{url}/b.jpg")["image"].size == (40, 32)
    with pytest.raises(ValueError, match="^style: could not download .*404"):
        pipe(f"{url}/a.png", f"{url}/missing.jpg")
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="^content: .* is not an image"):
        pipe(f"{url}/notes.txt", f"{url}/b.jpg")


def test_downloads_are_capped_in_size(pipe, images, http_folder, monkeypatch):
    folder, url = http_folder
    make_shape_image(64, 1).save(folder / "a.png")
    size = (folder / "a.png").stat().st_size
    monkeypatch.setattr(image_io, "MAX_DOWNLOAD_BYTES", size - 1)
    with pytest.raises(ValueError, match=f"^content: {url}/a.png is larger than {size - 1:,} bytes"):
        pipe(f"{url}/a.png", images["style"])
    monkeypatch.setattr(image_io, "MAX_DOWNLOAD_BYTES", size)
    assert pipe(f"{url}/a.png", images["style"])["image"].size == (64, 64)


def serve_forever(handler: type[http.server.BaseHTTPRequestHandler]) -> tuple[http.server.HTTPServer, str]:
    """A loopback HTTP server with ``handler`` on a daemon thread, and its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class DripHandler(http.server.BaseHTTPRequestHandler):
    """Sends a valid PNG's bytes one every 0.2 s, without a Content-Length (or, at /headers, drips the headers)."""

    def do_GET(self):
        body = io.BytesIO()
        make_shape_image(64, 1).save(body, "PNG")
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Padding: " + b"x" * 50 + b"\r\n\r\n"
        data = head + body.getvalue() if self.path == "/headers" else head[:-2] + b"\r\n" + body.getvalue()
        sent = data.index(b"X-Padding") if self.path == "/headers" else len(head)
        try:
            self.wfile.write(data[:sent])
            for i in range(sent, len(data)):
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_slow_download_is_cut_off_at_the_deadline(pipe, images, monkeypatch, where):
    """A server that drips bytes (each read succeeds quickly) still meets the total deadline."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(image_io, "DOWNLOAD_TIMEOUT", 1.5)
    server, url = serve_forever(DripHandler)
    try:
        start = time.monotonic()
        with pytest.raises(ValueError, match=rf"^content: downloading {url}/{where} took longer than 1.5 s"):
            pipe(f"{url}/{where}", images["style"])
        assert time.monotonic() - start < 1.5 + 5  # generous margin on a busy machine
    finally:
        server.shutdown()
        server.server_close()


def test_download_limits_come_from_the_environment():
    code = "from coat_hf import image_io; print(image_io.DOWNLOAD_TIMEOUT, image_io.MAX_DOWNLOAD_BYTES)"
    env = {**os.environ, "COAT_DOWNLOAD_TIMEOUT": "2.5", "COAT_MAX_DOWNLOAD_BYTES": "1000"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2.5", "1000"], done.stderr
    done = subprocess.run([sys.executable, "-c", code], env={**env, "COAT_DOWNLOAD_TIMEOUT": "soon"},
                          capture_output=True, text=True, timeout=120)
    assert "COAT_DOWNLOAD_TIMEOUT must be a positive float, got 'soon'" in done.stderr


# --- parameters ---------------------------------------------------------------------------------------------


def test_n_at_both_ends(pipe, images):
    k = pipe.model.num_modulation_layers
    content, style, other = images["content"], images["style"], images["other"]
    # n = K keeps only the content's style vectors: the style image no longer matters.
    keep_content = [pixels(pipe(content, s, n=k, seed=0)["image"]) for s in (style, other)]
    assert np.array_equal(*keep_content)
    all_style = [pixels(pipe(content, s, n=0, seed=0)["image"]) for s in (style, other)]
    assert not np.array_equal(*all_style)
    assert not np.array_equal(keep_content[0], all_style[0])


@pytest.mark.parametrize("n", [-1, 11, 2.5, True, "3"])
def test_bad_n(pipe, images, n):
    with pytest.raises(ValueError, match=r"^n must be an integer in \[0, 10\]"):
        pipe(images["content"], images["style"], n=n)


def test_numpy_integers_are_accepted(pipe, images):
    k = pipe.model.num_modulation_layers
    expected = pixels(pipe(images["content"], images["style"], n=3, seed=1, correspondence_scale=1)["image"])
    result = pipe(images["content"], images["style"], n=np.int64(3), seed=np.uint32(1),
                  correspondence_scale=np.int8(1))["image"]
    assert np.array_equal(pixels(result), expected)
    assert pipe(images["content"], images["style"], n=np.int32(k))["image"].size == (48, 40)


def test_bad_n_at_construction():
    with pytest.raises(ValueError, match="^n must be"):
        pipeline(TASK, model=UNTRAINED, device="cpu", n=99)


def test_output_size(pipe, images):
    assert pipe(images["content"], images["style"])["image"].size == (48, 40)
    assert pipe(images["content"], images["style"], output_size="content")["image"].size == (48, 40)
    size = pipe.model.config.image_size
    assert pipe(images["content"], images["style"], output_size="model")["image"].size == (size, size)
    with pytest.raises(ValueError, match="^output_size must be one of"):
        pipe(images["content"], images["style"], output_size="style")


def test_return_correspondence(pipe, images):
    result = pipe(images["content"], images["style"], return_correspondence=True, seed=0)
    corr = result["correspondence"]
    assert set(corr) == {"image", "matches", "confidence"}
    config = pipe.model.config
    assert [m["content_size"] for m in corr["matches"]] == [(s, s) for s in config.feature_sizes]
    for m in corr["matches"]:
        (h1, w1), (h2, w2) = m["content_size"], m["style_size"]
        count = m["content_index"].numel()
        assert m["style_index"].shape == m["score"].shape == (count,)
        assert count >= 1 and int(m["content_index"].max()) < h1 * w1 and int(m["style_index"].max()) < h2 * w2
        assert m["confidence"].shape == (h1, w1) and float(m["confidence"].max()) <= 1 + 1e-5
        # Mutual matches have confidence Q = 1 (Eq. 2).
        assert torch.allclose(m["confidence"].flatten()[m["content_index"]], torch.ones(count), atol=1e-5)
    assert corr["confidence"].shape == (40, 48)  # the result's (H, W)
    assert isinstance(corr["image"], PIL.Image.Image) and corr["image"].height > 64
    # The same image as without correspondences.
    plain = pipe(images["content"], images["style"], seed=0)["image"]
    assert np.array_equal(pixels(plain), pixels(result["image"]))
    assert "correspondence" not in pipe(images["content"], images["style"], return_correspondence=False)
    with pytest.raises(ValueError, match="^return_correspondence must be"):
        pipe(images["content"], images["style"], return_correspondence="yes")
    with pytest.raises(ValueError, match="^correspondence_scale must be"):
        pipe(images["content"], images["style"], return_correspondence=True, correspondence_scale=3)


def test_visualization_functions(pipe, images):
    content, style = PIL.Image.open(images["content"]), PIL.Image.open(images["style"])
    matches = pipe(content, style, return_correspondence=True)["correspondence"]["matches"]
    assert default_scale(matches) == 0  # 32 x 32 at 64 px
    picture = draw_matches(content, style, matches, scale=2, max_lines=5, height=100)
    assert picture.height > 100 and picture.width == round(100 * 48 / 40) + 4 + round(100 * 36 / 52)
    assert len(np.unique(np.asarray(picture).reshape(-1, 3), axis=0)) > 10
    heatmap = confidence_heatmap(matches, (30, 20))
    assert heatmap.size == (30, 20) and heatmap.mode == "RGB"
    assert confidence_heatmap(matches, (30, 20), image=content, alpha=0.4).size == (30, 20)
    empty = [dict(m, content_index=m["content_index"][:0], style_index=m["style_index"][:0], score=m["score"][:0])
             for m in matches]
    assert draw_matches(content, style, empty).height > 0
    with pytest.raises(ValueError, match="^scale must be"):
        draw_matches(content, style, matches, scale=5)


def test_seed_is_reproducible_and_matters(pipe, images):
    run = lambda **kw: pixels(pipe(images["content"], images["style"], **kw)["image"])  # noqa: E731
    assert np.array_equal(run(seed=7), run(seed=7))
    assert not np.array_equal(run(seed=7), run(seed=8))
    assert not np.array_equal(run(), run())  # fresh noise without a seed
    with pytest.raises(ValueError, match="^seed must be an integer"):
        run(seed="7")
    for seed in (2**70, 2**64, -(2**63) - 1):
        with pytest.raises(ValueError, match=rf"^seed must be an integer from -2\*\*63 to 2\*\*64 - 1, got {seed}"):
            run(seed=seed)
    assert np.array_equal(run(seed=2**64 - 1), run(seed=np.uint64(2**64 - 1)))


def test_model_takes_one_generator_per_sample(pipe):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        pair = pipe.model(x, x.flip(0), generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images
        first = pipe.model(x[:1], x[1:], generator=[torch.Generator().manual_seed(1)]).images
    assert torch.allclose(pair[:1], first, atol=1e-4)
    with pytest.raises(ValueError, match="^generator: got 1 generators for a batch of 2"):
        pipe.model(x, x, generator=[torch.Generator()])


def test_batch_size_gives_the_same_results_as_one_by_one(pipe, images):
    c, s, o = images["content"], images["style"], images["other"]
    pairs = [(c, s), (o, c), (s, o)]
    batched = pipe(pairs, batch_size=2, seed=5, return_correspondence=True)
    one_by_one = [pipe(c, s, seed=5, return_correspondence=True) for c, s in pairs]
    assert [r["image"].size for r in batched] == [(48, 40), (64, 64), (36, 52)]
    for b, o in zip(batched, one_by_one):
        assert np.abs(pixels(b["image"]) - pixels(o["image"])).max() <= 1  # batched convs may round differently
        for mb, mo in zip(b["correspondence"]["matches"], o["correspondence"]["matches"]):
            assert torch.equal(mb["content_index"], mo["content_index"])
    with pytest.raises(ValueError, match="batch_size"):
        pipe(pairs, batch_size=0)


# --- errors -------------------------------------------------------------------------------------------------


def test_missing_directory_and_empty_files(pipe, images, tmp_path):
    with pytest.raises(ValueError, match="^content: file not found"):
        pipe(tmp_path / "missing.png", images["style"])
    with pytest.raises(ValueError, match="^style: not a file"):
        pipe(images["content"], tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="^style: the file is empty"):
        pipe(images["content"], tmp_path / "empty.png")


def test_truncated_and_non_image_files(pipe, images, tmp_path):
    data = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data, "PNG")
    (tmp_path / "truncated.png").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    with pytest.raises(ValueError, match="^content: the image is truncated or corrupt"):
        pipe(tmp_path / "truncated.png", images["style"])
    (tmp_path / "text.png").write_text("hello, not a picture")
    with pytest.raises(ValueError, match="^style: .*text.png is not an image"):
        pipe(images["content"], tmp_path / "text.png")


def test_too_small_images(pipe, images):
    small = make_shape_image(64, 1).resize((MIN_IMAGE_SIDE - 1, 40))
    for content in (small, np.asarray(small)):
        with pytest.raises(ValueError, match=r"^content: the image is 15x40; both sides must be at least 16 px"):
            pipe(content, images["style"])
    assert pipe(small.resize((MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)), images["style"])["image"].size == (16, 16)


def test_pixel_limit_is_checked_before_decoding(pipe, images, tmp_path, monkeypatch):
    monkeypatch.setattr(image_io, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match="^content: the image is 48x40 = 1,920 pixels, above the limit of 1,000"):
        pipe(images["content"], images["style"])
    # A truncated file whose header announces too many pixels is refused for its size: nothing was decoded.
    data = images["other"].read_bytes()
    (tmp_path / "bomb.png").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="above the limit"):
        pipe(tmp_path / "bomb.png", images["style"])
    # PIL's own decompression-bomb error becomes a ValueError too.
    monkeypatch.setattr(image_io, "MAX_IMAGE_PIXELS", 10**9)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match="^content: .* too large to decode safely"):
        pipe(images["content"], images["style"])


def test_an_ico_that_understates_its_frame_is_refused_before_decoding(pipe, images, tmp_path, monkeypatch):
    """An ICO directory that says 256x256 around a PNG frame of 81 MP: the frame's own header counts."""
    frame = io.BytesIO()
    PIL.Image.new("1", (9000, 9000)).save(frame, "PNG")  # a small file, 81 million pixels
    ico = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(frame.getvalue()), 22)
    (tmp_path / "bomb.ico").write_bytes(ico + frame.getvalue())
    decoded = []
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", lambda self: decoded.append(self) or None)
    with pytest.raises(ValueError, match="^content: the image is 9000x9000 = 81,000,000 pixels, above the limit"):
        pipe(tmp_path / "bomb.ico", images["style"])
    assert decoded == []
    # An honest icon still loads.
    monkeypatch.undo()
    make_shape_image(64, 1).save(tmp_path / "fine.ico", sizes=[(64, 64), (32, 32)])
    assert pipe(tmp_path / "fine.ico", images["style"])["image"].size == (64, 64)


def test_wrong_types_and_shapes_of_inputs(pipe, images):
    with pytest.raises(ValueError, match="^content: expected a PIL image"):
        pipe(torch.zeros(3, 32, 32), images["style"])
    with pytest.raises(ValueError, match="^style: numpy arrays must be uint8"):
        pipe(images["content"], np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="^style: missing"):
        pipe(images["content"])
    with pytest.raises(ValueError, match="^style: pass either"):
        pipe({"content": images["content"], "style": images["style"]}, images["style"])
    with pytest.raises(ValueError, match="^style: with a list of content images"):
        pipe([images["content"], images["other"]], [images["style"]])
    with pytest.raises(ValueError, match=r"^inputs\[1\]: a pair is a dict with exactly the keys"):
        pipe([{"content": images["content"], "style": images["style"]}, {"content": images["content"]}])
    with pytest.raises(ValueError, match=r"^content \(inputs\[1\]\): file not found"):
        pipe([(images["content"], images["style"]), ("nowhere.png", images["style"])])


def test_package_exports():
    assert coat_hf.COATAppearanceTransferPipeline is COATAppearanceTransferPipeline


def test_alignment_rule_is_chosen_per_call(pipe, images):
    results = {rule: pixels(pipe(images["content"], images["style"], n=0, seed=1, alignment=rule)["image"])
               for rule in ("mutual", "nearest", "soft")}
    assert not np.array_equal(results["mutual"], results["nearest"])
    default = pixels(pipe(images["content"], images["style"], n=0, seed=1)["image"])
    assert np.array_equal(default, results[pipe.model.config.alignment])
    with pytest.raises(ValueError, match="alignment must be one of"):
        pipe(images["content"], images["style"], alignment="closest")


def test_color_match_gives_the_result_the_styles_colours(pipe, images):
    from coat_hf.color import rgb_to_lab

    def lab_mean(image: PIL.Image.Image) -> torch.Tensor:
        return rgb_to_lab((to_pixel_values(image) + 1) / 2).mean(dim=(2, 3))

    size = pipe.model.config.image_size
    style = PIL.Image.open(images["style"]).convert("RGB").resize((size, size))
    plain = pipe(images["content"], style, n=0, seed=1, output_size="model")["image"]
    matched = pipe(images["content"], style, n=0, seed=1, output_size="model", color_match=True)["image"]
    assert (lab_mean(matched) - lab_mean(style)).norm() < 0.5 * (lab_mean(plain) - lab_mean(style)).norm()
    assert np.array_equal(pixels(plain), pixels(pipe(images["content"], style, n=0, seed=1, output_size="model",
                                                      color_match=False)["image"]))
    with pytest.raises(ValueError, match="color_match must be True or False, got 'yes'"):
        pipe(images["content"], style, color_match="yes")
