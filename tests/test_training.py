"""The training package (coat_hf.training) on generated images: data, schedule, objective, bad input, resume, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from coat_hf import COATConfig, COATModel
from coat_hf.losses import correspondence_contrastive_loss
from coat_hf.training import main
from coat_hf.training.arguments import parse_arguments
from coat_hf.training.compile_cache import load_compile_cache
from coat_hf.training.data import DataOptions, PhotoSource, SampleSchedule, TrainingData
from coat_hf.training.objective import COATTrainingObjective, ObjectiveConfig
from coat_hf.training.pseudo_pairs import PseudoPairOptions, augment_geometry, pseudo_exemplar_pair, structure_view
from coat_hf.training.random import hash32, normal, sample_keys, uniform
from coat_hf.training.trainer import Trainer, checkpoints

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "training" / "train.py"
CONFIG_32 = COATConfig.preset("tiny", image_size=32, decoder_channels=[64, 64, 32, 16])


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Two class folders of coloured shapes (varied sizes), a corrupt file and a decompression bomb."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for label in ("circles", "squares"):
        (root / label).mkdir()
        for i in range(6):
            w, h = int(rng.integers(56, 96)), int(rng.integers(56, 96))
            image = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 255, 3)))
            draw = ImageDraw.Draw(image)
            box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            (draw.ellipse if label == "circles" else draw.rectangle)(box, fill=colour)
            image.save(root / label / f"{label}_{i:02d}.png")
    (root / "squares" / "squares_98.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    Image.new("1", (12_000, 12_000)).save(root / "circles" / "circles_99.png")  # 144 MP: a bomb to PIL
    return root


def _metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------
# Randomness, schedule, data.


def test_counter_based_draws_depend_only_on_the_key():
    keys = sample_keys(7, torch.arange(6))
    alone = torch.cat([uniform(keys[i : i + 1], 3, 5) for i in range(6)])
    assert torch.equal(uniform(keys, 3, 5), alone)  # batch composition does not matter
    assert not torch.equal(uniform(keys, 3, 5), uniform(keys, 4, 5))  # streams differ
    assert len(set(keys.tolist())) == 6
    x = torch.tensor([0, 1, 2**31, 2**32 - 1])
    reference = []  # lowbias32 in Python's unbounded integers
    for v in x.tolist():
        v ^= v >> 16
        v = (v * 0x7FEB352D) & 0xFFFFFFFF
        v ^= v >> 15
        v = (v * 0x846CA68B) & 0xFFFFFFFF
        reference.append(v ^ (v >> 16))
    assert hash32(x).tolist() == reference
    draws = normal(sample_keys(0, torch.arange(64)), 1, 512)
    assert abs(draws.mean().item()) < 0.02 and abs(draws.std().item() - 1) < 0.02
    streams = torch.tensor([[3, 9], [4, 70000]])  # several streams in one pass: the same as one by one
    together = normal(keys, streams, 5)  # (B, 2, 2, 5)
    assert together.shape == (6, 2, 2, 5)
    for (i, j), stream in zip([(0, 0), (0, 1), (1, 0), (1, 1)], streams.flatten().tolist()):
        assert torch.equal(together[:, i, j], normal(keys, stream, 5))
        assert torch.equal(uniform(keys, streams, 5)[:, i, j], uniform(keys, stream, 5))


def test_schedule_is_a_function_of_the_step_and_splits_over_processes():
    labels = np.array([0] * 5 + [1] * 6)
    one = SampleSchedule(labels, seed=3, batch_size=4)
    two = [SampleSchedule(labels, seed=3, batch_size=2, num_processes=2) for _ in range(2)]
    for step in range(7):  # 28 samples: more than two epochs of 11
        content, style, keys = one.samples(one.positions(step))
        halves = [s.samples(s.positions(step, rank=r)) for r, s in enumerate(two)]
        assert torch.equal(content, torch.cat([h[0] for h in halves]))
        assert torch.equal(keys, torch.cat([h[2] for h in halves]))
        assert (style != content).all() and (torch.from_numpy(labels)[style] == torch.from_numpy(labels)[content]).all()
    epoch = torch.cat([one.samples(one.positions(s))[0] for s in range(3)])[:11]
    assert sorted(epoch.tolist()) == list(range(11))  # each epoch is a permutation


def test_unreadable_files_are_skipped_and_counted_once(image_folder):
    options = DataOptions(data_dir=str(image_folder), cache_images=True)
    source = PhotoSource(options, CONFIG_32)
    assert len(source) == 14
    data = TrainingData(source, options, seed=0, batch_size=4, device=torch.device("cpu"))
    assert data.skipped == 2 and len(data.index) == 12
    batch = data.batch(5)
    assert batch.content.shape == (4, 3, 32, 32) and batch.mask is None
    assert batch.content.min() >= -1 and batch.content.max() <= 1
    uncached = TrainingData(source, DataOptions(data_dir=str(image_folder)), seed=0, batch_size=4,
                            device=torch.device("cpu"))
    for step in range(8):  # both bad files are met (and replaced) at least once over 32 samples
        uncached.batch(step)
    assert uncached.skipped == 2


def test_masks_follow_the_photo(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(4):
        photo = Image.new("RGB", (80, 60), (20, 20, 20))
        ImageDraw.Draw(photo).rectangle((5, 5, 30, 50), fill=(250, 250, 250))  # bright where the mask is on
        photo.save(tmp_path / "images" / f"h{i}.jpg", quality=95)
        mask = Image.new("L", (40, 30), 0)
        ImageDraw.Draw(mask).rectangle((2, 2, 15, 25), fill=255)  # half size, as the horse masks
        mask.save(tmp_path / "masks" / f"h{i}.png")
    options = DataOptions(data_dir=str(tmp_path), crop_scale=0.6, cache_images=True)
    data = TrainingData(PhotoSource(options, CONFIG_32), options, seed=0, batch_size=4, device=torch.device("cpu"))
    for step in range(3):
        batch = data.batch(step)
        on = batch.mask[:, 0] > 0.5
        bright = batch.content.mean(1) > 0.5
        assert (on == bright).float().mean() > 0.9


def test_pseudo_pairs_differ_from_their_target_by_the_warp_alone(image_pair):
    content, reference = image_pair
    keys = sample_keys(0, torch.arange(2))
    still = PseudoPairOptions(rotation_degrees=0, scale=0, translation=0, elastic=0)
    style, target = pseudo_exemplar_pair(content, reference, keys, still)
    for s, t in zip(style, target):  # no warp: the target itself or its mirror image
        assert torch.allclose(s, t, atol=1e-5) or torch.allclose(s, t.flip(-1), atol=1e-5)
    plain = PseudoPairOptions(reference_strength=0, color_cast=0, brightness=0, contrast=0, saturation=0, gamma=0)
    _, unchanged = pseudo_exemplar_pair(content, reference, keys, plain)
    torch.testing.assert_close(unchanged, content.clamp(-1 + 2e-4, 1), atol=1e-5, rtol=0)
    style, target = pseudo_exemplar_pair(content, reference, keys, PseudoPairOptions())
    assert (target - content).abs().mean() > 0.02 and (style - target).abs().mean() > 0.02
    flipped = augment_geometry(content, keys, hflip=True, crop_scale=1.0)
    assert all(torch.equal(f, c) or torch.equal(f, c.flip(-1)) for f, c in zip(flipped, content))


# ---------------------------------------------------------------------------------------------------
# The objective.


def test_batched_ccl_equals_the_per_image_loss(tiny_model, image_pair):
    objective = COATTrainingObjective(tiny_model, ObjectiveConfig(lambda_lpips=0, ccl_num_positions=24))
    content, style = image_pair
    keys = sample_keys(1, torch.arange(2))
    with torch.no_grad():
        f1, f2 = tiny_model.encoder(content), tiny_model.encoder(style)
        _, matches = tiny_model.align(f1, f2)
        out = tiny_model.encoder(style.flip(-1))
        batched = objective.contrastive_loss(out, f1, [m.mutual for m in matches], None, keys)
        per_scale = []
        for scale in range(len(f1)):
            index, valid = objective._sample_positions(matches[scale].mutual, None, keys, scale)
            gather = index[:, :, None].expand(-1, -1, f1[scale].shape[1])
            q = out[scale].flatten(2).transpose(1, 2).gather(1, gather)
            k = f1[scale].flatten(2).transpose(1, 2).gather(1, gather)
            per_scale.append(torch.stack([correspondence_contrastive_loss(q[i : i + 1], k[i : i + 1], 0.07, 0.5,
                                                                          "hardest", valid[i : i + 1])
                                          for i in range(2)]).mean())
    torch.testing.assert_close(batched, torch.stack(per_scale).mean(), atol=1e-5, rtol=1e-5)


def test_objective_terms_and_their_gradients(image_pair):
    model = COATModel(COATConfig.preset("tiny", alignment="soft", modulation_pyramid=True))
    objective = COATTrainingObjective(model, ObjectiveConfig(lambda_lpips=0, transfer_weight=1.0))
    content, style = image_pair
    out = objective(content, style, sample_keys(0, torch.arange(2)))
    assert {"loss", "rec", "reg", "ccl", "transfer"} <= set(out)
    out["loss"].backward()
    assert model.modulation_encoder.laterals[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert not any("lpips" in name for name in objective.state_dict())
    with pytest.raises(ValueError, match="reg_type"):
        ObjectiveConfig(reg_type="l1")
    with pytest.raises(ValueError, match="transfer_weight"):
        ObjectiveConfig(transfer_weight=-1)


def test_objective_matches_on_vgg16_maps_when_configured(image_pair, monkeypatch):
    """``match_features="vgg16"``: both alignments of the objective (the real pair and the pseudo-exemplar) compare
    frozen VGG16 maps, and the gradients still reach E through the features that Eq. 3 moves."""
    model = COATModel(COATConfig.preset("tiny", match_features="vgg16", modulation_pyramid=True))
    objective = COATTrainingObjective(model, ObjectiveConfig(lambda_lpips=0, transfer_weight=1.0))
    seen = []
    matching_maps = model.matching_maps
    monkeypatch.setattr(model, "matching_maps", lambda images, features: seen.append(images) or matching_maps(
        images, features))
    content, style = image_pair
    out = objective(content, style, sample_keys(0, torch.arange(2)))
    assert len(seen) == 3 and seen[0] is content and seen[1] is style  # content, style, then the pseudo-exemplar
    out["loss"].backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert not any("vgg" in name or "features." in name for name in objective.state_dict())


@pytest.mark.parametrize("batch_branches", [False, True])
def test_the_objective_traces_as_one_graph(image_pair, batch_branches):
    """The whole training objective (both alignments with their blocked searches, L_CCL, the pseudo-exemplar pairs,
    style mixing) is one graph for ``torch.compile``: no graph break, so a compiled step can fuse across networks."""
    model = COATModel(COATConfig.preset("tiny", alignment="nearest", modulation_pyramid=True, structure_channels=4))
    objective = COATTrainingObjective(model, ObjectiveConfig(lambda_lpips=0, transfer_weight=1.0, style_mixing_prob=0.9,
                                                             train_alignment="mutual", batch_branches=batch_branches))
    content, style = image_pair
    explanation = torch._dynamo.explain(objective)(content, style, sample_keys(0, torch.arange(2)), None)
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, [b.reason.splitlines()[0] for b in explanation.break_reasons]


@pytest.mark.parametrize("masked, structure_channels, view", [(False, 0, False), (True, 0, False), (False, 4, False),
                                                             (False, 4, True)])
def test_branches_in_one_batch_equal_the_branches_one_by_one(image_pair, masked, structure_channels, view):
    """``batch_branches`` (the default on accelerators) gives each network one call on the branches' concatenated
    batches: the losses and gradients of one call per branch (the default on CPUs), with a structure code (and its
    recoloured view) too."""
    torch.manual_seed(0)
    model = COATModel(COATConfig.preset("tiny", alignment="nearest", modulation_pyramid=True,
                                        structure_channels=structure_channels))
    if structure_channels:
        torch.nn.init.normal_(model.structure_codes[0].weight)  # not the zero it starts from
    content, style = image_pair
    mask = (torch.rand(2, 1, *content.shape[-2:]) > 0.3).float() if masked else None
    runs = []
    for batch_branches in (False, True):
        objective = COATTrainingObjective(model, ObjectiveConfig(
            lambda_lpips=0, transfer_weight=1.0, style_mixing_prob=0.9, train_alignment="mutual",
            batch_branches=batch_branches, structure_view=view))
        model.zero_grad()
        out = objective(content, style, sample_keys(0, torch.arange(2)), mask)
        out["loss"].backward()
        runs.append((out, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    (one_by_one, gradient), (batched, batched_gradient) = runs
    for name in ("loss", "rec", "reg", "ccl", "transfer"):
        torch.testing.assert_close(batched[name], one_by_one[name], atol=1e-5, rtol=1e-5)
    assert (batched_gradient - gradient).norm() <= 1e-4 * gradient.norm()


def _with_and_without(image_pair, weight_name: str, weight: float):
    """The tiny model's objective on ``image_pair`` with one term's weight set and at 0 (same model, draws and
    decoder noise): the objective with the term, the keys, and both outputs."""
    model = COATModel(COATConfig.preset("tiny"))
    keys = sample_keys(0, torch.arange(2))
    runs = []
    for value in (weight, 0.0):
        torch.manual_seed(0)
        objective = COATTrainingObjective(model, ObjectiveConfig(lambda_lpips=0, **{weight_name: value}))
        runs.append((objective, objective(*image_pair, keys, None)))
    (objective, with_term), (_, without) = runs
    return objective, keys, with_term, without


def test_the_color_term_weighs_each_transfer_by_the_styles_share_of_layers(image_pair):
    from coat_hf.losses import color_statistics_loss

    content, style = image_pair
    objective, keys, with_color, without = _with_and_without(image_pair, "color_weight", 2.0)
    k = objective.model.config.num_modulation_layers
    assert "color" in with_color and "color" not in without and with_color["color"] > 0
    n = objective._transfer_n(keys)
    expected = color_statistics_loss(with_color["transfer_images"], style, (k - n).float() / k)
    torch.testing.assert_close(with_color["color"], expected.detach())
    torch.testing.assert_close(with_color["loss"], without["loss"] + 2.0 * expected)
    with pytest.raises(ValueError, match="color_weight"):
        ObjectiveConfig(color_weight=-1.0)


@pytest.mark.parametrize("falloff", [0.5, 0.0])
def test_the_color_falloff_reaches_the_finer_layers_transfers(image_pair, falloff):
    """``color_falloff`` p weighs each transfer by ((K - n) / K)^p: at p = 0 every n < K counts alike (the unweighted
    loss), at p = 0.5 a large n loses less weight than at the linear default."""
    from coat_hf.losses import color_statistics_loss

    _, style = image_pair
    torch.manual_seed(0)
    model = COATModel(COATConfig.preset("tiny"))
    objective = COATTrainingObjective(model, ObjectiveConfig(lambda_lpips=0, color_weight=1.0, color_falloff=falloff))
    keys = sample_keys(0, torch.arange(2))
    out = objective(*image_pair, keys, None)
    k, n = model.config.num_modulation_layers, objective._transfer_n(keys)
    weight = ((k - n).float() / k) ** falloff
    assert (weight >= (k - n).float() / k).all() and ((weight == 1) == (falloff == 0)).all()
    torch.testing.assert_close(out["color"], color_statistics_loss(out["transfer_images"], style, weight).detach())
    if falloff == 0:
        torch.testing.assert_close(out["color"], color_statistics_loss(out["transfer_images"], style).detach())
    with pytest.raises(ValueError, match="color_falloff"):
        ObjectiveConfig(color_falloff=-0.5)


def test_the_local_color_term_compares_the_transfer_with_the_style_at_the_mutual_matches(image_pair):
    """L_local takes the transfer, the style photo and the mutual matches of ``local_color_scale`` from the same
    pass as L_CCL, with L_color's per-sample weight; a mask that leaves no object cell leaves no term; a scale the
    model lacks and a negative weight are refused in one line."""
    from coat_hf.losses import matched_color_loss

    content, style = image_pair
    objective, keys, with_local, without = _with_and_without(image_pair, "local_color_weight", 5.0)
    model, k = objective.model, objective.model.config.num_modulation_layers
    assert "local_color" not in without and with_local["local_color"] > 0
    torch.testing.assert_close(with_local["loss"], without["loss"] + 5.0 * with_local["local_color"])
    with torch.no_grad():
        scale = objective.config.local_color_scale
        (f1, f2) = model.encoder(content)[scale], model.encoder(style)[scale]
        _, (matches,) = model.align([f1], [f2], "mutual")
        grid = f1.shape[-2:]
        n = objective._transfer_n(keys)
        expected = matched_color_loss(with_local["transfer_images"], style, matches.nearest.unflatten(1, grid),
                                      matches.mutual.unflatten(1, grid), (k - n).float() / k)
    torch.testing.assert_close(with_local["local_color"], expected)

    torch.manual_seed(0)
    masked = COATTrainingObjective(model, ObjectiveConfig(lambda_lpips=0, local_color_weight=5.0))
    assert masked(content, style, keys, torch.zeros_like(content[:, :1]))["local_color"] == 0
    with pytest.raises(ValueError, match="local_color_weight"):
        ObjectiveConfig(local_color_weight=-1.0)
    with pytest.raises(ValueError, match="local_color_scale"):
        COATTrainingObjective(model, ObjectiveConfig(local_color_weight=1.0, local_color_scale=model.config.num_scales))
    COATTrainingObjective(model, ObjectiveConfig(local_color_scale=model.config.num_scales))  # the term off: unused


def test_the_training_rule_sets_the_transfers_alignment_and_the_matches_stay_mutual(image_pair, monkeypatch):
    """``train_alignment="nearest"`` (the rule the bundled models use at inference) gives the transfer branch the
    nearest-aligned style maps, every position a style feature, whatever the model's own rule; L_local still pulls
    colours at the mutual matches only."""
    from coat_hf.losses import matched_color_loss

    content, style = image_pair
    model = COATModel(COATConfig.preset("tiny", alignment="mutual"))
    seen = []
    style_vectors = model.style_vectors
    monkeypatch.setattr(model, "style_vectors", lambda maps: seen.append(maps) or style_vectors(maps))
    objective = COATTrainingObjective(model, ObjectiveConfig(lambda_lpips=0, local_color_weight=5.0,
                                                             train_alignment="nearest", batch_branches=False))
    keys = sample_keys(0, torch.arange(2))
    out = objective(content, style, keys)
    with torch.no_grad():
        f1, f2 = model.encoder(content), model.encoder(style)
        nearest_maps, found = model.align(f1, f2, "nearest")
        mutual_maps, _ = model.align(f1, f2, "mutual")
    for got, want in zip(seen[1], nearest_maps, strict=True):  # seen[0]: the content's maps
        torch.testing.assert_close(got, want)
    assert any(not torch.equal(a, b) for a, b in zip(nearest_maps, mutual_maps))  # the rules differ on this pair
    scale, k = objective.config.local_color_scale, model.config.num_modulation_layers
    grid = f1[scale].shape[-2:]
    expected = matched_color_loss(out["transfer_images"], style, found[scale].nearest.unflatten(1, grid),
                                  found[scale].mutual.unflatten(1, grid),
                                  (k - objective._transfer_n(keys)).float() / k)
    torch.testing.assert_close(out["local_color"], expected)


def test_the_structure_term_compares_each_transfer_with_its_content(image_pair):
    from coat_hf.losses import structure_loss

    content, _ = image_pair
    objective, _, with_structure, without = _with_and_without(image_pair, "structure_weight", 3.0)
    assert objective.lpips is not None  # loaded for L_struct although λ_lpips = 0
    expected = structure_loss(objective.lpips, with_structure["transfer_images"], content)
    assert "structure" not in without and with_structure["structure"] > 0
    torch.testing.assert_close(with_structure["structure"], expected.detach())
    torch.testing.assert_close(with_structure["loss"], without["loss"] + 3.0 * expected)
    with pytest.raises(ValueError, match="structure_weight"):
        ObjectiveConfig(structure_weight=-1.0)


def test_the_texture_term_compares_each_transfer_with_its_style(image_pair):
    """L_tex takes the transfer and its style photo with L_color's per-sample weight, along directions drawn from
    the samples' keys (the same keys, the same term); bad weights and projection counts are refused in one line."""
    from coat_hf.losses import texture_loss
    from coat_hf.training.objective import _TEXTURE_STREAM
    from coat_hf.training.random import normal

    _, style = image_pair
    objective, keys, with_texture, without = _with_and_without(image_pair, "texture_weight", 50.0)
    assert objective.lpips is not None  # loaded for L_tex although λ_lpips = 0
    k, n = objective.model.config.num_modulation_layers, objective._transfer_n(keys)
    shape = (2, sum(objective.lpips.chns), objective.config.texture_projections)
    directions = normal(keys, _TEXTURE_STREAM, shape[1] * shape[2]).view(shape)
    expected = texture_loss(objective.lpips, with_texture["transfer_images"], style, directions, (k - n).float() / k)
    assert "texture" not in without and with_texture["texture"] > 0
    torch.testing.assert_close(with_texture["texture"], expected.detach())
    torch.testing.assert_close(with_texture["loss"], without["loss"] + 50.0 * expected)
    with pytest.raises(ValueError, match="texture_weight"):
        ObjectiveConfig(texture_weight=-1.0)
    with pytest.raises(ValueError, match="texture_projections"):
        ObjectiveConfig(texture_projections=0)


def test_the_histogram_term_compares_each_transfer_with_its_style(image_pair):
    """L_hist takes the transfer and its style photo with L_color's per-sample weight, along Lab directions drawn
    from the samples' keys; it needs no LPIPS network; bad weights and projection counts are refused in one line."""
    from coat_hf.losses import color_distribution_loss
    from coat_hf.training.objective import _HISTOGRAM_STREAM
    from coat_hf.training.random import normal

    _, style = image_pair
    objective, keys, with_histogram, without = _with_and_without(image_pair, "histogram_weight", 20.0)
    assert objective.lpips is None
    k, n = objective.model.config.num_modulation_layers, objective._transfer_n(keys)
    shape = (2, 3, objective.config.histogram_projections)
    directions = normal(keys, _HISTOGRAM_STREAM, shape[1] * shape[2]).view(shape)
    expected = color_distribution_loss(with_histogram["transfer_images"], style, directions, (k - n).float() / k)
    assert "histogram" not in without and with_histogram["histogram"] > 0
    torch.testing.assert_close(with_histogram["histogram"], expected.detach())
    torch.testing.assert_close(with_histogram["loss"], without["loss"] + 20.0 * expected)
    with pytest.raises(ValueError, match="histogram_weight"):
        ObjectiveConfig(histogram_weight=-1.0)
    with pytest.raises(ValueError, match="histogram_projections"):
        ObjectiveConfig(histogram_projections=0)


def test_the_structure_view_feeds_the_code_the_content_under_other_colours(image_pair):
    """With ``structure_view`` the structure code reads E of the content under an appearance of its own (the content
    itself when the appearance ranges are 0; neither the content's colours nor the pseudo pair's target's) and
    trains through it; without a structure code the option is refused in one line."""
    content, style = image_pair
    keys = sample_keys(0, torch.arange(2))
    view = structure_view(content, style, keys, PseudoPairOptions())
    _, target = pseudo_exemplar_pair(content, style, keys, PseudoPairOptions())
    assert (view - content).abs().mean() > 0.02 and (view - target).abs().mean() > 0.02
    plain = PseudoPairOptions(reference_strength=0, color_cast=0, brightness=0, contrast=0, saturation=0, gamma=0)
    torch.testing.assert_close(structure_view(content, style, keys, plain), content.clamp(-1 + 2e-4, 1), atol=1e-5,
                               rtol=0)

    model = COATModel(COATConfig.preset("tiny", structure_channels=4))
    torch.nn.init.normal_(model.structure_codes[0].weight)
    seen = []
    model.structure_codes[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    objective = COATTrainingObjective(model, ObjectiveConfig(lambda_lpips=0, transfer_weight=1.0, structure_view=True,
                                                             batch_branches=False))
    out = objective(content, style, keys, None)
    torch.testing.assert_close(seen[0], model.encoder(view)[model.config.structure_scale].detach())
    out["loss"].backward()
    assert model.structure_codes[0].reduce.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="structure_view needs a structure code"):
        COATTrainingObjective(COATModel(COATConfig.preset("tiny")),
                              ObjectiveConfig(lambda_lpips=0, structure_view=True))


def test_style_mixing_takes_the_next_samples_style_from_a_crossover_on():
    model = COATModel(COATConfig.preset("tiny"))
    k = model.config.num_modulation_layers
    objective = COATTrainingObjective(model, ObjectiveConfig(lambda_lpips=0, style_mixing_prob=1.0))
    b, d = 64, model.config.style_dim
    latents = torch.zeros(b, k, d)  # the transfer's own vectors
    style = torch.arange(1, b + 1, dtype=torch.float32)[:, None, None].expand(b, k, d)  # sample i's style: i + 1
    n = torch.arange(b) % (k + 1)
    mixed, mixed_in = objective._style_mixing(latents, style, n, sample_keys(0, torch.arange(b)))
    crossover = (mixed[:, :, 0] == 0).sum(dim=1)  # layers before the crossover keep the transfer's vectors
    assert (crossover >= n).all() and (crossover <= k).all() and len(set(crossover.tolist())) > 3
    assert torch.equal(mixed_in, crossover < k)  # whether the last layer takes the other sample's style
    for i in range(b):
        assert (mixed[i, crossover[i]:] == style[i - 1, 0, 0]).all()  # the previous sample's style (a roll)
    objective.config.style_mixing_prob = 0.0
    unmixed, mixed_in = objective._style_mixing(latents, style, n, sample_keys(0, torch.arange(b)))
    assert torch.equal(unmixed, latents) and not mixed_in.any()
    with pytest.raises(ValueError, match="style_mixing_prob"):
        ObjectiveConfig(style_mixing_prob=1.5)


# ---------------------------------------------------------------------------------------------------
# The command: arguments and bad input.


def test_arguments_are_typed_and_documented(tmp_path, image_folder, capsys):
    config = parse_arguments(["--config", str(REPO / "training/configs/tiny.yaml"), "--data_dir", str(image_folder),
                              "--max_steps", "7", "--hflip", "false", "--ccl_scales", "0", "2",
                              "--model_overrides", "{alignment: nearest}", "--transfer_weight", "0.5"])
    assert config.training.max_steps == 7 and config.data.hflip is False and config.objective.ccl_scales == [0, 2]
    assert config.training.model_overrides["alignment"] == "nearest" and config.objective.transfer_weight == 0.5
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--transfer_weight" in text and "pseudo-exemplar" in text and "(default: 0.0)" in text


@pytest.mark.parametrize("extra, message", [
    ([], "no training images"),
    (["--data_dir", "/nonexistent/photos"], "--data_dir"),
    (["--data_dir", None], "--data_dir"),
    (["--batch_size", "64"], "larger than the 14 training images"),
    (["--checkpoint_every", "0"], "--checkpoint_every"),
    (["--max_steps", "-1"], "--max_steps"),
    (["--learning_rate", "-0.1"], "--learning_rate"),
    (["--compile_mode", "fast"], "--compile_mode must be one of"),
    (["--compile_cache", "cache.bin"], "--compile_cache needs --compile true"),
    (["--compile", "true", "--compile_cache", "/tmp"], "is a folder"),
    (["--config", "BAD"], "unknown keys"),
])
def test_bad_input_is_one_line_and_exit_2_before_the_model_is_built(tmp_path, image_folder, extra, message,
                                                                    monkeypatch, capsys):
    import coat_hf.training.trainer as trainer

    monkeypatch.setattr(trainer, "build_model", lambda *a: pytest.fail("the model was built"))
    (tmp_path / "empty").mkdir()
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("max_steps: 3\nlearning_rat: 0.1\n")
    args = ["--config", str(REPO / "training/configs/tiny.yaml"), "--output_dir", str(tmp_path / "run"),
            "--report_to", "none", "--data_dir", str(image_folder if extra else tmp_path / "empty")]
    if extra[:1] == ["--data_dir"]:
        args = args[:-2] + ([] if extra[1] is None else extra)
    elif extra[:1] == ["--config"]:
        args[1] = str(bad_config)
    else:
        args += extra
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


_COMPILE_ONCE = """
import sys, torch
from torch._dynamo.utils import counters
from coat_hf.training.compile_cache import load_compile_cache, save_compile_cache
loaded = load_compile_cache(sys.argv[1])
step = torch.compile(lambda x: (x.sin() * 3 + x.cos()).sum())
x = torch.arange(8.0, requires_grad=True)
step(x).backward()
written = save_compile_cache(sys.argv[1])
print(loaded, written, counters["inductor"]["fxgraph_cache_hit"], counters["aot_autograd"]["autograd_cache_hit"])
"""


def test_a_compile_cache_saved_on_one_machine_serves_a_fresh_one(tmp_path):
    """Two processes, each with its own empty Inductor cache folder (two fresh machines): the second, given the
    first's saved artifacts, finds its forward and backward graphs compiled."""
    cache = tmp_path / "compile.bin"
    runs = []
    for machine in ("first", "second"):
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / machine), "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", _COMPILE_ONCE, str(cache)], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(done.stdout.split())
    (loaded, written, graph_hits, autograd_hits), second = runs
    assert loaded == "False" and int(written) > 0 and graph_hits == autograd_hits == "0"
    assert second[0] == "True" and int(second[2]) >= 1 and int(second[3]) == 1


def test_a_damaged_compile_cache_is_ignored(tmp_path, caplog):
    cache = tmp_path / "compile.bin"
    cache.write_bytes(b"not a cache")
    assert load_compile_cache(cache) is False and load_compile_cache(tmp_path / "absent.bin") is False
    assert "compiling from scratch" in caplog.text


# ---------------------------------------------------------------------------------------------------
# Runs: time budget, export, resume, processes.


def test_cudnn_autotuning_follows_the_argument(image_folder, tmp_path, tiny_train_args, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    for flag in ("true", "false"):
        Trainer(parse_arguments([*tiny_train_args(image_folder, tmp_path / flag), "--cudnn_benchmark", flag]))
        assert torch.backends.cudnn.benchmark is (flag == "true")


def test_time_budget_checkpoints_and_exports_shards(image_folder, tmp_path, tiny_train_args):
    out = tmp_path / "run"
    export = Trainer(parse_arguments(tiny_train_args(
        image_folder, out, "--max_steps", "1000", "--max_minutes", "0.02", "--export_dtype", "float16",
        "--export_max_shard_size", "200KB", "--checkpoint_every", "1000"))).train()
    step = checkpoints(out / "checkpoints")[-1]
    assert int(step.name.split("_")[1]) < 1000
    shards = sorted(export.glob("model-*.safetensors"))
    assert len(shards) > 1 and all(s.stat().st_size < 400_000 for s in shards)
    assert (export / "preprocessor_config.json").is_file()  # the pipeline's processor travels with the weights
    model = COATModel.from_pretrained(export)
    assert model.dtype == torch.float16
    assert not any("lpips" in key for key in load_file(step / "model.safetensors"))
    card = (export / "README.md").read_text()
    assert "images seen" in card and "CelebA" not in card
    # --export from --output_dir alone (its own config.yaml): no --data_dir needed.
    again = tmp_path / "again"
    main(["--output_dir", str(out), "--export", str(again)])
    torch.testing.assert_close(COATModel.from_pretrained(again).state_dict(), model.state_dict())


def _train(args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(TRAIN), *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_every_term_of_the_objective_is_logged_and_carded(image_folder, tmp_path, tiny_train_args):
    out = tmp_path / "run"
    export = Trainer(parse_arguments(tiny_train_args(
        image_folder, out, "--max_steps", "2", "--color_weight", "1", "--color_falloff", "0.5", "--local_color_weight",
        "3", "--structure_weight", "2", "--adversarial", "true"))).train()
    terms = {"loss", "rec", "mse", "reg", "ccl", "transfer", "color", "local_color", "structure", "adv_g", "adv_d"}
    assert all(terms <= set(row) for row in _metrics(out))
    card = (export / "README.md").read_text()
    assert "1.0·L_color + 3.0·L_local (per sample ((K − n)/K)^0.5)" in card and "2.0·L_struct" in card
    assert "structure " in card.split("final losses")[1]
    assert "structure code: none (the paper)" in card


def test_init_from_a_float16_export_trains_in_float32(image_folder, tmp_path, tiny_train_args):
    """A bundled or exported model (float16) continues training: its weights are upcast, not trained in half; a
    structure code asked for over it (``--model_overrides``) starts at zero and trains with it, and the card says
    how."""
    first = Trainer(parse_arguments(tiny_train_args(image_folder, tmp_path / "a", "--max_steps", "1",
                                                    "--export_dtype", "float16"))).train()
    assert COATModel.from_pretrained(first).dtype == torch.float16
    trainer = Trainer(parse_arguments(tiny_train_args(image_folder, tmp_path / "b", "--max_steps", "1",
                                                      "--init_from", str(first),
                                                      "--model_overrides", "{structure_channels: 4}",
                                                      "--structure_view", "true",
                                                      "--lr_warmup_steps", "0")))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert not trainer.model.structure_codes[0].weight.any()
    assert torch.isfinite(trainer.train_step(0)["loss"])
    assert trainer.model.structure_codes[0].weight.any()
    card = (trainer.export() / "README.md").read_text()
    assert "structure code: 4 channels from E's 4x4 maps, trained on the content under other colours" in card


def test_kill_and_resume_reproduce_the_uninterrupted_run(image_folder, tmp_path, tiny_train_args):
    """kill -9 mid-run, ``--resume latest``: the losses and weights of an uninterrupted run, across epochs."""
    common = ["--lr_scheduler", "constant_with_warmup", "--checkpoint_every", "2", "--sample_every", "1000"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(TRAIN), *tiny_train_args(image_folder, killed, "--max_steps",
                                                                             "400", *common)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 180
        while len(checkpoints(killed / "checkpoints")) < 2 and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    at = int(checkpoints(killed / "checkpoints")[-1].name.split("_")[1])
    assert 2 <= at < 400
    end = at + 4  # 12 images, batch 4: an epoch every 3 steps, so the resumed part crosses epochs
    result = _train(tiny_train_args(image_folder, killed, "--max_steps", str(end), "--resume", "latest", *common))
    assert f"at step {at}" in result.stderr
    straight = tmp_path / "straight"
    _train(tiny_train_args(image_folder, straight, "--max_steps", str(end), *common))
    resumed, reference = _metrics(killed), _metrics(straight)
    assert [m["step"] for m in resumed] == list(range(1, end + 1))  # no duplicate rows
    for a, b in zip(reference, resumed):
        for key in ("loss", "rec", "ccl", "transfer"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), (key, a["step"])
    torch.testing.assert_close(COATModel.from_pretrained(killed / "final").state_dict(),
                               COATModel.from_pretrained(straight / "final").state_dict(), rtol=1e-6, atol=1e-7)
    assert not list((killed / "checkpoints").glob(".tmp_*"))


@pytest.mark.slow
def test_two_processes_match_one_process(image_folder, tmp_path, tiny_train_args):
    steps = ["--max_steps", "2", "--sample_every", "1000", "--lr_warmup_steps", "0"]
    _train(tiny_train_args(image_folder, tmp_path / "one", "--batch_size", "4", *steps))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", str(TRAIN),
         *tiny_train_args(image_folder, tmp_path / "two", "--batch_size", "2", *steps)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [m["num_processes"] for m in one] == [1, 1] and [m["num_processes"] for m in two] == [2, 2]
    for a, b in zip(one, two):
        for key in ("loss", "rec", "reg", "ccl", "transfer"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a, b)


def test_hub_datasets_are_read_by_name(image_folder, tmp_path):
    """A 🤗 dataset with an image and a label column (here a local parquet folder; a Hub id reads the same way)."""
    import datasets

    paths = sorted(str(p) for p in image_folder.rglob("*_0[0-5].png"))
    labels = [int("squares" in p) for p in paths]
    ds = datasets.Dataset.from_dict({"picture": paths, "label": labels}).cast_column("picture", datasets.Image())
    (tmp_path / "hub").mkdir()
    ds.to_parquet(tmp_path / "hub" / "train.parquet")
    options = DataOptions(dataset_name=str(tmp_path / "hub"), image_column="picture", cache_images=True)
    data = TrainingData(PhotoSource(options, CONFIG_32), options, seed=0, batch_size=4, device=torch.device("cpu"))
    assert len(data.index) == 12 and data.skipped == 0
    content, style, _ = data.schedule.samples(data.schedule.positions(0))
    assert (torch.tensor(labels)[content] == torch.tensor(labels)[style]).all()
    with pytest.raises(ValueError, match="--image_column 'image'"):
        PhotoSource(DataOptions(dataset_name=str(tmp_path / "hub")), CONFIG_32)


def test_a_config_extends_another_and_overrides_its_fields(tmp_path, image_folder):
    (tmp_path / "base.yaml").write_text("model_preset: tiny\nbatch_size: 2\nlearning_rate: 0.01\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "run.yaml").write_text("extends: ../base.yaml\nbatch_size: 3\n")  # relative to the file
    config = parse_arguments(["--config", str(tmp_path / "sub" / "run.yaml"), "--data_dir", str(image_folder)])
    assert (config.training.model_preset, config.training.batch_size, config.training.learning_rate) == ("tiny", 3, 0.01)
    (tmp_path / "base.yaml").write_text("extends: sub/run.yaml\n")
    with pytest.raises(ValueError, match="makes a cycle"):
        parse_arguments(["--config", str(tmp_path / "sub" / "run.yaml"), "--data_dir", str(image_folder)])


def test_model_overrides_on_the_command_line_merge_over_the_configs(image_folder):
    """``--model_overrides`` adds to (and wins over) the config file's mapping rather than replacing it: asking for
    one more field does not silently drop the recipe's architecture."""
    config = parse_arguments(["--config", str(REPO / "training" / "configs" / "small.yaml"), "--data_dir",
                              str(image_folder), "--model_overrides", "{structure_channels: 8, alignment: soft}"])
    assert config.training.model_overrides == {"alignment": "soft", "modulation_pyramid": True,
                                               "structure_channels": 8}


@pytest.mark.parametrize("config", sorted((REPO / "training" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(config, image_folder):
    parse_arguments(["--config", str(config), "--data_dir", str(image_folder)])


@pytest.mark.parametrize("model", ["coat-celeba-128", "coat-afhq-cat-128"])
def test_the_gpu_continuation_trains_with_the_bundled_models_fine_tune_objective(model, image_folder):
    """``*-gpu-continue.yaml`` repeats the objective of the bundled model's last CPU stage (a config extends one
    other): continuing the weights with another objective would undo the fine-tunes."""
    configs = REPO / "training" / "configs"
    gpu, cpu = (parse_arguments(["--config", str(configs / f"{model}-{name}.yaml"), "--data_dir", str(image_folder)])
                for name in ("gpu-continue", "finetune"))
    assert gpu.objective == cpu.objective
    assert gpu.training.init_from == cpu.training.init_from == f"coat_hf/pretrained/{model}"
