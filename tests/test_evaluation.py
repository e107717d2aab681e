"""Tests of coat_hf.evaluation: metrics on cases with known answers, every method, pairs, and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image, ImageDraw

from conftest import make_shape_image, to_pixel_values
from coat_hf.evaluation import (
    COATTransfer,
    ColorMatched,
    ColorTransfer,
    FeatureWarp,
    InputImage,
    TransferMetrics,
    build_methods,
    psnr,
    sliced_wasserstein_distance,
    structure_distance,
)
from coat_hf.evaluation.__main__ import main
from coat_hf.color import match_color, rgb_to_lab
from coat_hf import COATConfig
from coat_hf.evaluation.pairs import ImageLoader, list_images, sample_images, sample_pairs
from coat_hf.evaluation.report import plot_tradeoff
from coat_hf.evaluation.runner import OUTPUT_FILES
from coat_hf.pretrained import default_model

SIZE = 64


@pytest.fixture(scope="module")
def metrics() -> TransferMetrics:
    return TransferMetrics(grid_size=32, structure_grid=16)


# --- metrics ------------------------------------------------------------------------------------


def test_swd_known_answers():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    assert sliced_wasserstein_distance(x, x).item() == 0.0
    assert sliced_wasserstein_distance(x, x[torch.randperm(500)]).item() == 0.0  # a set, not a sequence
    # 1-d translation: every direction is ±1, so SW_2 is the shift itself.
    line = torch.linspace(0, 1, 300)[:, None]
    assert sliced_wasserstein_distance(line, line + 3.0).item() == pytest.approx(3.0, rel=1e-5)
    # Shift by v in R^C: E_θ (θ·v)^2 = |v|^2 / C for uniform unit directions θ.
    v = torch.tensor([3.0, -1.0, 2.0, 0.0, 1.0, 0.5, -2.0, 1.0])
    expected = v.norm().item() / math.sqrt(8)
    assert sliced_wasserstein_distance(x, x + v, num_projections=4096).item() == pytest.approx(expected, rel=0.05)
    # Unequal counts of the same distribution are compared through their quantile functions.
    assert sliced_wasserstein_distance(torch.linspace(0, 1, 1000)[:, None], torch.linspace(0, 1, 1500)[:, None]).item() < 1e-3
    with pytest.raises(ValueError, match="point sets"):
        sliced_wasserstein_distance(x, torch.randn(10, 3))


def test_psnr_known_answers():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert psnr(x, x).tolist() == [100.0, 100.0]  # identical images: the documented cap
    y = torch.full_like(x, -1.0)
    # On [0, 1] an error of 0.1 everywhere is MSE 0.01, i.e. 20 dB.
    assert psnr(y + 0.2, y).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)


def test_structure_distance_identical_and_bounded():
    f = torch.randn(2, 16, 8, 8)
    assert structure_distance(f, f).abs().max().item() < 1e-6
    d = structure_distance(f, torch.randn(2, 16, 8, 8))
    assert (d > 0).all() and (d <= 2).all()


def test_metrics_identical_images_give_zero(metrics):
    image = to_pixel_values(make_shape_image(SIZE, 0))
    ref = metrics.reference(image)
    scores = metrics.transfer(image, ref, ref)
    assert scores["structure_distance"] < 1e-5
    assert scores["swd_vgg"] < 1e-5 and scores["swd_lab"] < 1e-5
    rec = metrics.reconstruction(image, image)
    assert rec["psnr"] == pytest.approx(100.0) and rec["lpips"] < 1e-6


def test_colour_shift_moves_appearance_not_structure(metrics):
    image = to_pixel_values(make_shape_image(SIZE, 1))
    shifted = (image + torch.tensor([0.35, -0.05, -0.35]).view(1, 3, 1, 1)).clamp(-1, 1)
    other = to_pixel_values(make_shape_image(SIZE, 2))
    ref = metrics.reference(image)
    shift_scores = metrics.transfer(shifted, ref, ref)
    other_scores = metrics.transfer(other, ref, ref)
    assert shift_scores["swd_lab"] > 10.0  # a strong colour cast, in ΔE units
    assert shift_scores["structure_distance"] < 0.25 * other_scores["structure_distance"]


def test_masks_restrict_appearance_to_the_object(metrics):
    style = to_pixel_values(make_shape_image(SIZE, 3))
    result = style.clone()
    result[..., SIZE // 2 :] = torch.tensor([-1.0, 1.0, -1.0]).view(1, 3, 1, 1)  # background changed
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., : SIZE // 2] = 1  # the object: the left half, equal in both
    masked = metrics.transfer(result, metrics.reference(style, mask), metrics.reference(style, mask))
    unmasked = metrics.transfer(result, metrics.reference(style), metrics.reference(style))
    assert masked["swd_lab"] < 1e-4 and unmasked["swd_lab"] > 10.0
    # Only object positions count, but deep VGG features see across the border: smaller, not zero.
    assert masked["swd_vgg"] < unmasked["swd_vgg"]


# --- methods ------------------------------------------------------------------------------------


def test_every_method_runs_on_tiny_images(tiny_model):
    content, style = to_pixel_values(make_shape_image(SIZE, 4)), to_pixel_values(make_shape_image(SIZE, 5))
    k = tiny_model.num_modulation_layers
    assert [m.name for m in build_methods(tiny_model)] == [  # by default, the whole sweep over n
        *(f"coat n={n}" for n in range(k + 1)), "latent-swap", "warp", "color-transfer", "content", "style"
    ]
    for method in build_methods(tiny_model, n_values=[0, k]):
        with torch.no_grad():
            result = method(content, style, generator=torch.Generator().manual_seed(0))
        assert result.shape == (1, 3, SIZE, SIZE) and torch.isfinite(result).all(), method.name
    with pytest.raises(ValueError, match="n_values"):
        build_methods(tiny_model, n_values=[99])


def test_color_match_adds_the_sweep_with_the_styles_colours(tiny_model):
    content, style = to_pixel_values(make_shape_image(SIZE, 4)), to_pixel_values(make_shape_image(SIZE, 5))
    methods = build_methods(tiny_model, n_values=[0, 3], color_match=True)
    matched = [m for m in methods if isinstance(m, ColorMatched)]
    assert [m.name for m in matched] == ["coat n=0 + color match", "coat n=3 + color match"]
    assert [m.n for m in matched] == [0, 3] and {m.family for m in matched} == {"coat + color match"}
    with torch.no_grad():
        plain = methods[1](content, style, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(matched[1](content, style, generator=torch.Generator().manual_seed(0)),
                                   match_color(plain, style))


def test_coat_methods_match_the_model(tiny_model):
    content, style = to_pixel_values(make_shape_image(SIZE, 6)), to_pixel_values(make_shape_image(SIZE, 7))
    with torch.no_grad():
        for method, alignment in ((COATTransfer(tiny_model, 3), True), (COATTransfer(tiny_model, 3, use_alignment=False), False)):
            expected = tiny_model(content, style, n=3, use_alignment=alignment, generator=torch.Generator().manual_seed(1)).images
            torch.testing.assert_close(method(content, style, torch.Generator().manual_seed(1)), expected)


def test_warp_copies_style_blocks(tiny_model):
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        warp = FeatureWarp(tiny_model, scale=1)
        torch.testing.assert_close(warp(image, image), image)  # every position is its own nearest neighbour
        result = warp(to_pixel_values(make_shape_image(SIZE, 8)), image)
    blocks = torch.nn.functional.pixel_unshuffle(result, 4).flatten(2)[0].T  # (N, 48) result blocks
    style_blocks = torch.nn.functional.pixel_unshuffle(image, 4).flatten(2)[0].T
    assert (blocks[:, None] == style_blocks[None]).all(dim=2).any(dim=1).all()  # each block is a style block
    with pytest.raises(ValueError, match="scale"):
        FeatureWarp(tiny_model, scale=3)


def test_color_transfer_matches_lab_statistics():
    content, style = to_pixel_values(make_shape_image(SIZE, 9)) * 0.5, to_pixel_values(make_shape_image(SIZE, 10)) * 0.5  # away from gamut edges
    result_lab = rgb_to_lab((ColorTransfer()(content, style) + 1) / 2)
    style_lab = rgb_to_lab((style + 1) / 2)
    torch.testing.assert_close(result_lab.mean(dim=(2, 3)), style_lab.mean(dim=(2, 3)), atol=0.5, rtol=0)
    torch.testing.assert_close(result_lab.std(dim=(2, 3)), style_lab.std(dim=(2, 3)), atol=0.5, rtol=0)


def test_input_bounds():
    content, style = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    assert InputImage("content")(content, style) is content and InputImage("style")(content, style) is style
    with pytest.raises(ValueError, match="which"):
        InputImage("both")


# --- pairs and loading --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Six drawn non-square photos and smaller masks with the same names."""
    root = tmp_path_factory.mktemp("photos")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i in range(6):
        make_shape_image(96, i).resize((96, 80)).save(root / "images" / f"img{i:02d}.jpg")
        mask = Image.new("L", (48, 40))
        ImageDraw.Draw(mask).rectangle([10, 8, 38, 32], fill=255)
        mask.save(root / "masks" / f"img{i:02d}.png")
    return root


def test_pairs_are_seeded_and_filtered(photo_folder):
    images = list_images(photo_folder / "images")
    assert [p.name for p in images] == [f"img{i:02d}.jpg" for i in range(6)]
    pairs = sample_pairs(images, 30, seed=3)  # all 6·5 ordered pairs
    assert len(set(pairs)) == 30 and all(c != s for c, s in pairs)
    assert sample_pairs(images, 5, seed=3) == sample_pairs(images, 5, seed=3) != sample_pairs(images, 5, seed=4)
    assert [p.name for p in list_images(photo_folder / "images", holdout_last=2)] == ["img04.jpg", "img05.jpg"]
    assert [p.name for p in list_images(photo_folder / "images", include="img0[13]*|img05*")] == [
        "img01.jpg", "img03.jpg", "img05.jpg"
    ]
    assert len(set(sample_images(images, 4, seed=0))) == 4
    with pytest.raises(ValueError, match="num_pairs"):
        sample_pairs(images, 31)


def test_loader_resizes_photo_and_mask(photo_folder):
    config = COATConfig(image_size=32)
    image, mask = ImageLoader(config, photo_folder / "masks")(photo_folder / "images" / "img00.jpg")
    assert image.shape == (1, 3, 32, 32) and image.min() >= -1 and image.max() <= 1
    assert mask.shape == (1, 1, 32, 32) and set(mask.unique().tolist()) == {0.0, 1.0}


def test_nested_class_folders_and_their_masks(tmp_path):
    """Class sub-folders (as training reads them): every image, sorted by relative path; masks from the same
    class sub-folder of the mask folder."""
    for i, name in enumerate(["cat/b.png", "cat/a.png", "dog/a.png", "top.png"]):
        for root, image in (("images", make_shape_image(48, i)), ("masks", Image.new("L", (48, 48), 255 * (i % 2)))):
            (tmp_path / root / name).parent.mkdir(parents=True, exist_ok=True)
            image.save(tmp_path / root / name)
    images = list_images(tmp_path / "images")
    assert [p.relative_to(tmp_path / "images").as_posix() for p in images] == [
        "cat/a.png", "cat/b.png", "dog/a.png", "top.png"]
    loader = ImageLoader(COATConfig(image_size=32), tmp_path / "masks", tmp_path / "images")
    assert [loader(path)[1].mean().item() for path in images] == [1.0, 0.0, 0.0, 1.0]


def test_tradeoff_labels_do_not_overlap(tmp_path):
    """Twelve COAT points within a pixel of each other: the labels left are apart, both ends among them."""
    def method(name, family, n, structure, vgg, lab):
        return {"name": name, "family": family, "n": n, "transfer": {
            "structure_distance": {"mean": structure}, "swd_vgg": {"mean": vgg}, "swd_lab": {"mean": lab}}}

    methods = [method(f"coat n={n}", "coat", n, 0.098 + 1e-5 * n, 0.937, 13.2 + 1e-3 * n) for n in range(13)]
    methods += [method("content", "content", None, 0.0, 0.74, 14.9), method("style", "style", None, 0.1, 0.0, 0.0)]
    figure = plot_tradeoff({"methods": methods, "pairs": [None] * 50}, tmp_path / "tradeoff.png")
    for ax in figure.axes[:2]:
        labels = [text for text in ax.texts if text.get_text().startswith("n=")]
        assert {"n=0", "n=12"} <= {text.get_text() for text in labels}
        boxes = [text.get_window_extent() for text in labels]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert (tmp_path / "tradeoff.png").is_file()


def test_tradeoff_end_labels_sit_beyond_their_own_end(tmp_path):
    """Whichever way the sweep runs (here n = 0 at the lower right, n = 12 at the upper left, as a model whose
    reconstruction keeps the most structure draws it), each end's label lies on the far side of its own point from
    the other end, not by the other end."""
    def method(n, structure, vgg, lab):
        return {"name": f"coat n={n}", "family": "coat", "n": n, "transfer": {
            "structure_distance": {"mean": structure}, "swd_vgg": {"mean": vgg}, "swd_lab": {"mean": lab}}}

    methods = [method(n, 0.093 - 0.0006 * n, 0.826 + 0.002 * n, 6.8 + 0.6 * n) for n in range(13)]
    figure = plot_tradeoff({"methods": methods, "pairs": [None] * 50}, tmp_path / "tradeoff.png")
    for ax, key in zip(figure.axes[:2], ("swd_vgg", "swd_lab")):
        ends = {m["n"]: ax.transData.transform((m["transfer"]["structure_distance"]["mean"],
                                                m["transfer"][key]["mean"])) for m in methods if m["n"] in (0, 12)}
        for text in ax.texts:
            if text.get_text() in ("n=0", "n=12"):
                own, other = (ends[0], ends[12]) if text.get_text() == "n=0" else (ends[12], ends[0])
                box = text.get_window_extent()
                centre = ((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)
                assert sum((c - o) ** 2 for c, o in zip(centre, other)) > sum((a - o) ** 2 for a, o in zip(own, other))


# --- command line -------------------------------------------------------------------------------


def test_cli_writes_all_outputs(photo_folder, tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    out, threads = tmp_path / "eval", torch.get_num_threads()
    main([
        "--model", str(tmp_path / "model"), "--data", str(photo_folder), "--out", str(out), "--num-pairs", "2",
        "--num-reconstruction", "1", "--n", "0,10", "--grid-pairs", "2", "--grid-size", "32",
        "--structure-grid", "16", "--device", "cpu", "--threads", "1", "--color-match",
    ])
    assert all((out / name).is_file() for name in OUTPUT_FILES)
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["masks"].endswith("masks")  # images/ + masks/ found from --data
    names = [m["name"] for m in results["methods"]]
    assert names == ["coat n=0", "coat n=10", "latent-swap", "warp", "color-transfer", "content", "style",
                     "coat n=0 + color match", "coat n=10 + color match"]
    for method in results["methods"]:
        assert len(method["transfer"]["swd_lab"]["values"]) == 2
        assert len(method["reconstruction"]["psnr"]["values"]) == 1
    content = results["methods"][names.index("content")]
    assert content["transfer"]["structure_distance"]["mean"] < 1e-5
    assert content["reconstruction"]["psnr"]["mean"] == pytest.approx(100.0)
    assert "| coat n=10 |" in (out / "results.md").read_text()
    assert results["machine"]["torch_threads"] == 1 and torch.get_num_threads() == threads  # restored
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (9 * SIZE, 3 * SIZE)  # header + 2 pairs; content, style and 7 methods


def test_cli_defaults_to_the_bundled_model_and_reads_class_folders(tmp_path):
    for i, name in enumerate(["cat/a.png", "cat/b.png", "dog/c.png"]):
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        make_shape_image(64, i).save(tmp_path / "data" / name)
    out = tmp_path / "eval"
    assert main(["--data", str(tmp_path / "data"), "--out", str(out), "--num-pairs", "2", "--num-reconstruction", "1",
                 "--n", "0", "--grid-pairs", "1", "--grid-size", "16", "--structure-grid", "8", "--device", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["model"] == default_model()
    assert {name for pair in results["pairs"] for name in pair.values()} <= {"cat/a.png", "cat/b.png", "dog/c.png"}


@pytest.mark.parametrize("case, message", [
    ("missing", "--data: not a folder"),
    ("one image", "--data: need at least 2 images"),
    ("bad model", "--model: cannot load"),
])
def test_cli_user_errors_print_one_line_and_exit_2(tmp_path, capsys, case, message):
    data = tmp_path / "data"
    if case != "missing":
        data.mkdir()
        for i in range(1 if case == "one image" else 3):
            make_shape_image(32, i).save(data / f"{i}.png")
    model = ["--model", str(tmp_path)] if case == "bad model" else []  # a folder without a model
    assert main(["--data", str(data), "--out", str(tmp_path / "out"), "--num-pairs", "2", *model]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m coat_hf.evaluation: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# --- benchmark script ---------------------------------------------------------------------------


def test_benchmark_naive_alignment_and_configs():
    import importlib.util
    from pathlib import Path

    from coat_hf import align_features

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_inference.py"
    spec = importlib.util.spec_from_file_location("benchmark_inference", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    content, style = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 5, 5)
    aligned, confidence = benchmark.naive_align(content, style)
    expected, matches = align_features(content, style, block_size=7)
    torch.testing.assert_close(aligned, expected)
    torch.testing.assert_close(confidence, matches.confidence)
    for size in (64, 128, 256, 512, 1024):
        config = benchmark.benchmark_config(size)
        assert config.image_size == size and config.decoder_channels[-1] == 32
    assert benchmark.benchmark_config(128).decoder_channels == [256, 256, 256, 128, 64, 32]


def test_local_color_ratio_is_one_for_the_content_and_zero_for_the_style():
    from coat_hf.evaluation.metrics import local_color_ratio

    content, style = torch.rand(16, 3) * 50, torch.rand(16, 3) * 50
    assert local_color_ratio(content, content, style) == pytest.approx(1.0)
    assert local_color_ratio(style, content, style) == pytest.approx(0.0)
    halfway = (content + style) / 2
    assert local_color_ratio(halfway, content, style) == pytest.approx(0.5, rel=1e-5)
    missing = style.clone()
    missing[:8] = float("nan")  # cells outside the object take no part
    assert local_color_ratio(halfway, content, missing) == pytest.approx(0.5, rel=1e-5)


def _results(shift: float, pairs: list[dict] | None = None) -> dict:
    """An evaluation's results.json with two COAT rows and a baseline row; ``shift`` moves COAT's metrics toward
    better (positive) for every image."""
    from coat_hf.evaluation.report import summarize

    transfer = {"structure_distance": [0.10, 0.12, 0.11], "swd_lab": [9.0, 8.0, 10.0]}
    better = {name: summarize([v - shift * 0.01 * (1 + i) for i, v in enumerate(values)])
              for name, values in transfer.items()}
    reconstruction = {"psnr": summarize([18.0 + shift, 19.0 + shift]), "lpips": summarize([0.2 - shift / 100] * 2)}
    methods = [{"name": f"coat n={n}", "family": "coat", "n": n, "transfer": better,
                "reconstruction": reconstruction} for n in (0, 5)]
    methods.append({"name": "color-transfer", "family": "color-transfer", "n": None,
                    "transfer": {name: summarize(values) for name, values in transfer.items()}, "reconstruction": {}})
    return {"pairs": pairs or [{"content": "a.jpg", "style": "b.jpg"}] * 3, "reconstruction_images": ["a.jpg", "b.jpg"],
            "methods": methods}


def test_compare_says_whether_a_candidate_beats_the_baseline_everywhere(tmp_path, capsys):
    from coat_hf.evaluation.compare import compare, main as compare_main

    for name, shift in (("baseline", 0.0), ("better", 1.0), ("worse", -1.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_results(shift)))
    rows = compare(_results(0.0), _results(1.0))
    assert len(rows) == 2 * 2 + 2  # two transfer metrics per COAT row, reconstruction once, no baseline rows
    swd = rows[1]
    assert swd["method"] == "coat n=0" and swd["metric"] == "swd_lab" and swd["candidate_better"]
    assert swd["difference"] == pytest.approx(-0.02) and swd["standard_error"] == pytest.approx(0.01 / math.sqrt(3))
    assert compare_main([str(tmp_path / "baseline"), str(tmp_path / "better")]) == 0
    assert "better on all 6 metrics" in capsys.readouterr().out
    assert compare_main([str(tmp_path / "baseline"), str(tmp_path / "worse" / "results.json")]) == 1
    assert "not better on 6 of 6" in capsys.readouterr().out


def test_compare_lists_but_does_not_count_style_distances_at_n_equal_k(tmp_path, capsys):
    """At n = K the output is the content's reconstruction: its distances to the style are shown, not counted."""
    from coat_hf.evaluation.compare import main as compare_main

    def results(shift: float, style_shift_at_k: float) -> dict:
        out = json.loads(json.dumps(_results(shift)))  # the rows share their summaries: copy them apart
        out["config"] = {"num_modulation_layers": 5}  # so the "coat n=5" row is n = K
        at_k = out["methods"][1]["transfer"]["swd_lab"]
        at_k["values"] = [v + style_shift_at_k for v in at_k["values"]]
        at_k["mean"] += style_shift_at_k
        return out

    (tmp_path / "baseline.json").write_text(json.dumps(results(0.0, 0.0)))
    (tmp_path / "further.json").write_text(json.dumps(results(1.0, 1.0)))  # better everywhere but n = K's SWD Lab
    assert compare_main([str(tmp_path / "baseline.json"), str(tmp_path / "further.json")]) == 0
    out = capsys.readouterr().out
    assert "| coat n=5 | SWD Lab ↓ |" in out and "baseline (not counted: n = K) |" in out
    assert "better on all 5 metrics" in out
    (tmp_path / "worse_structure.json").write_text(json.dumps(results(-1.0, -3.0)))  # structure at n = K counts
    assert compare_main([str(tmp_path / "baseline.json"), str(tmp_path / "worse_structure.json")]) == 1
    assert "coat n=5 structure" in capsys.readouterr().out


def test_compare_refuses_evaluations_of_different_photos(tmp_path, capsys):
    from coat_hf.evaluation.compare import main as compare_main

    (tmp_path / "a.json").write_text(json.dumps(_results(0.0)))
    (tmp_path / "b.json").write_text(json.dumps(_results(1.0, pairs=[{"content": "c.jpg", "style": "b.jpg"}] * 3)))
    (tmp_path / "bad.json").write_text("{}")
    for other in ("b.json", "bad.json", "missing.json"):
        assert compare_main([str(tmp_path / "a.json"), str(tmp_path / other)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("python -m coat_hf.evaluation.compare: error:"), err
