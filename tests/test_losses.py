"""Losses against explicit reference computations; LPIPS backbones are the real ImageNet weights."""

from __future__ import annotations

import copy
import math
import os
import pickle
import warnings
from pathlib import Path

import lpips
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from coat_hf.losses import (
    HARD_NEGATIVE_RULES,
    color_distribution_loss,
    color_statistics_loss,
    correspondence_contrastive_loss,
    latent_regularization,
    lpips_loss,
    matched_color_loss,
    mse_loss,
    reconstruction_loss,
    structure_loss,
    texture_loss,
)
from coat_hf.lpips_weights import FETCH_COMMAND, backbone_state_dict, load_lpips, load_numpy_pickle, load_vgg16_features


DATA_DIR = Path(os.environ.get("COAT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
CELEBA_VAL = DATA_DIR / "celeba" / "val"


# ----------------------------------------------------------------------------- L_reg


def test_w_norm_matches_psp_formula():
    torch.manual_seed(0)
    w, w_avg = torch.randn(3, 4, 5), torch.randn(5)
    expected = sum(
        math.sqrt(sum((w[b, k, d] - w_avg[d]).item() ** 2 for k in range(4) for d in range(5))) for b in range(3)
    ) / 3
    assert latent_regularization(w, w_avg, "w_norm").item() == pytest.approx(expected, rel=1e-5)
    per_layer_avg = w_avg.expand(4, 5)  # a (K, D) average broadcasts the same way
    assert latent_regularization(w, per_layer_avg).item() == pytest.approx(expected, rel=1e-5)


def test_delta_matches_e4e_formula():
    torch.manual_seed(0)
    w = torch.randn(3, 4, 5)
    expected = sum(sum(torch.linalg.vector_norm(w[b, k] - w[b, 0]).item() for b in range(3)) / 3 for k in range(1, 4))
    assert latent_regularization(w, kind="delta").item() == pytest.approx(expected, rel=1e-5)
    assert latent_regularization(w[:, :1].expand(3, 4, 5), kind="delta").item() == 0


def test_latent_regularization_rejects_bad_input():
    w = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="kind"):
        latent_regularization(w, torch.zeros(4), kind="l2")
    with pytest.raises(ValueError, match="latent_avg"):
        latent_regularization(w, None, kind="w_norm")
    with pytest.raises(ValueError, match="latents"):
        latent_regularization(w[0], torch.zeros(4))


# ----------------------------------------------------------------------------- L_CCL


def reference_ccl(query, key, tau, g, rule, valid):
    """Eq. 5-6 with explicit loops: ranks by sorting, negatives by the rule, -log softmax."""
    losses = []
    for b in range(query.shape[0]):
        q, k = F.normalize(query[b], dim=-1), F.normalize(key[b], dim=-1)
        positions = [i for i in range(query.shape[1]) if valid[b, i]]
        for i in positions:
            others = sorted((j for j in positions if j != i), key=lambda j: -torch.dot(k[i], k[j]).item())
            if rule == "hardest":
                negatives = others[: math.ceil(g * len(others))]
            elif rule == "exclude_nearest":
                negatives = others[math.floor(g * len(others)) :]
            else:
                negatives = others
            logits = torch.stack([torch.dot(q[i], k[j]) / tau for j in [i, *negatives]])
            losses.append(-torch.log_softmax(logits, dim=0)[0])
    return torch.stack(losses).mean()


@pytest.mark.parametrize("rule", HARD_NEGATIVE_RULES)
@pytest.mark.parametrize("g", [0.25, 0.5, 0.75])
def test_ccl_matches_reference(rule, g):
    torch.manual_seed(0)
    query, key = torch.randn(2, 9, 6), torch.randn(2, 9, 6)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, [2, 7]] = False  # 7 valid positions in the second image: g·6 is exact
    loss = correspondence_contrastive_loss(query, key, 0.2, g, rule, valid)
    assert loss.item() == pytest.approx(reference_ccl(query, key, 0.2, g, rule, valid).item(), rel=1e-5)


def test_ccl_rules_coincide_at_their_limits():
    torch.manual_seed(1)
    query, key = torch.randn(2, 10, 8), torch.randn(2, 10, 8)
    everything = correspondence_contrastive_loss(query, key, hard_negative_rule="all").item()
    hardest_all = correspondence_contrastive_loss(query, key, 0.07, 1.0, "hardest")
    assert hardest_all.item() == pytest.approx(everything, rel=1e-6)
    assert correspondence_contrastive_loss(query, key, 0.07, 0.0, "exclude_nearest").item() == pytest.approx(
        everything, rel=1e-6
    )
    # no negatives left: every anchor scores log(1) = 0
    assert correspondence_contrastive_loss(query, key, 0.07, 0.0, "hardest") == 0


def test_ccl_hard_negatives_are_the_similar_keys():
    # k0 ≈ k1 and k2 = -k0: "hardest" (g=0.5) gives anchors 0, 1, 2 the negatives 1, 0, 1 (their most
    # similar other key); "exclude_nearest" drops exactly those and keeps 2, 2, 0.
    key = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]]])
    query = torch.tensor([[[0.0, 1.0]] * 3])  # q·k = 0, a, 0 for the three keys
    a = 0.1 / math.sqrt(0.82)
    hardest = (2 * math.log(1 + math.exp(a)) + math.log(1 + math.exp(-a))) / 3
    excluded = (2 * math.log(2) + math.log(1 + math.exp(-a))) / 3
    for rule, expected in (("hardest", hardest), ("exclude_nearest", excluded)):
        loss = correspondence_contrastive_loss(query, key, 1.0, 0.5, rule)
        assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ccl_invalid_positions_take_no_part():
    torch.manual_seed(2)
    query, key = torch.randn(1, 12, 8), torch.randn(1, 12, 8)
    valid = torch.rand(1, 12) > 0.4
    kept = valid[0]
    for rule in HARD_NEGATIVE_RULES:
        loss = correspondence_contrastive_loss(query, key, 0.1, 0.5, rule, valid)
        subset = correspondence_contrastive_loss(query[:, kept], key[:, kept], 0.1, 0.5, rule)
        assert loss.item() == pytest.approx(subset.item(), rel=1e-6)
        noisy_query, noisy_key = query.clone(), key.clone()
        noisy_query[:, ~kept], noisy_key[:, ~kept] = 100.0, -3.0
        assert correspondence_contrastive_loss(noisy_query, noisy_key, 0.1, 0.5, rule, valid).item() == pytest.approx(
            loss.item(), rel=1e-6
        )
    assert correspondence_contrastive_loss(query, key, valid=torch.zeros(1, 12, dtype=torch.bool)) == 0


def test_ccl_known_answer_matched_vs_shuffled():
    tau, n = 0.07, 8
    key = torch.eye(n)[None]  # orthonormal features
    matched = correspondence_contrastive_loss(key.clone(), key, tau, hard_negative_rule="all")
    assert matched.item() == pytest.approx(math.log(1 + (n - 1) * math.exp(-1 / tau)), abs=1e-6)  # float32
    query = key[:, torch.roll(torch.arange(n), 1)]  # q_i = k_{i-1}: each anchor matches a negative
    shuffled = correspondence_contrastive_loss(query, key, tau, hard_negative_rule="all")
    assert shuffled.item() == pytest.approx(1 / tau + math.log(1 + (n - 1) * math.exp(-1 / tau)), rel=1e-4)
    assert matched < 1e-4 < 10 < shuffled


def test_ccl_gradients_are_finite():
    torch.manual_seed(3)
    query = torch.randn(2, 16, 8, requires_grad=True)
    key = torch.randn(2, 16, 8, requires_grad=True)
    valid = torch.rand(2, 16) > 0.3
    correspondence_contrastive_loss(query, key, valid=valid).backward()
    assert torch.isfinite(query.grad).all() and torch.isfinite(key.grad).all()
    assert query.grad[~valid].abs().max() == 0  # invalid positions are not anchors


def test_ccl_rejects_bad_arguments():
    query = torch.randn(1, 4, 3)
    with pytest.raises(ValueError, match="hard_negative_rule"):
        correspondence_contrastive_loss(query, query, hard_negative_rule="softest")
    with pytest.raises(ValueError, match="negative_threshold"):
        correspondence_contrastive_loss(query, query, negative_threshold=1.5)
    with pytest.raises(ValueError, match="key"):
        correspondence_contrastive_loss(query, query[:, :3])
    with pytest.raises(ValueError, match="valid"):
        correspondence_contrastive_loss(query, query, valid=torch.ones(1, 4))


# ----------------------------------------------------------------------------- L_rec


def test_masked_mse_matches_reference():
    torch.manual_seed(4)
    output, target, mask = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 1, 8, 8)
    expected = sum(
        ((output[b] - target[b]) ** 2 * mask[b]).sum() / (3 * mask[b].sum()) for b in range(2)
    ) / 2
    assert mse_loss(output, target, mask).item() == pytest.approx(expected.item(), rel=1e-5)
    assert mse_loss(output, target, torch.ones(2, 1, 4, 4)).item() == pytest.approx(
        F.mse_loss(output, target).item(), rel=1e-6
    )
    binary = torch.zeros(2, 1, 8, 8)
    binary[..., 2:6, 2:6] = 1
    changed = torch.where(binary.bool(), output, output + 5)  # differs only outside the mask
    assert mse_loss(changed, target, binary) == mse_loss(output, target, binary)


@pytest.fixture(scope="module")
def alex() -> lpips.LPIPS:
    return load_lpips("alex")  # weights fetched once by `python -m coat_hf.lpips_weights` (README: tests)


@pytest.fixture(scope="module")
def random_alex() -> lpips.LPIPS:
    torch.manual_seed(0)
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()


def test_color_statistics_loss_vanishes_after_global_colour_transfer():
    """L_color measures what Reinhard's transfer matches: an image recoloured to a reference's Lab statistics is
    (up to gamut clipping) at distance 0 from it, the image itself is not; per-image weights scale it."""
    from coat_hf.color import match_color

    torch.manual_seed(4)
    image = torch.rand(2, 3, 32, 32) * 0.6 - 0.3  # mid-range colours: little clipping after the transfer
    reference = (torch.rand(2, 3, 32, 32) * 0.5 + torch.tensor([0.3, -0.2, -0.4])[None, :, None, None]).clamp(-1, 1)
    before = color_statistics_loss(image, reference)
    after = color_statistics_loss(match_color(image, reference), reference)
    assert before > 1e-3 and after < before / 50
    assert color_statistics_loss(reference, reference) == 0
    assert color_statistics_loss(image, reference, torch.tensor([0.0, 0.0])) == 0
    half = color_statistics_loss(image, reference, torch.tensor([1.0, 0.0]))
    first = color_statistics_loss(image[:1], reference[:1])
    assert half == pytest.approx(first.item() / 2, rel=1e-5)
    output = image.clone().requires_grad_()
    color_statistics_loss(output, reference).backward()
    assert output.grad.abs().sum() > 0


def test_color_distribution_loss_sees_the_colour_histogram_not_layout():
    """L_hist is the squared sliced Wasserstein distance of the Lab pixels (explicit sort along one direction):
    0 for the reference's pixels in any order; after Reinhard's transfer (the means and deviations L_color
    matches) what is left is the histogram's shape; the weight scales each image; no gradient reaches the
    reference; directions of the wrong shape are refused in one line."""
    from coat_hf.color import match_color, rgb_to_lab

    torch.manual_seed(6)
    image = torch.rand(2, 3, 32, 32) * 0.6 - 0.3
    reference = torch.rand(2, 3, 32, 32).pow(3) * 0.8 - 0.4 + torch.tensor([0.1, 0.0, -0.1])[:, None, None]
    directions = torch.randn(2, 3, 16)
    axis = torch.zeros(2, 3, 1)
    axis[:, 0] = 2.0  # lightness only, any scale
    lightness = [rgb_to_lab((x + 1) / 2)[:, 0].flatten(1).sort(dim=1).values / 100 for x in (image, reference)]
    expected = (lightness[0] - lightness[1]).square().mean()
    assert color_distribution_loss(image, reference, axis) == pytest.approx(expected.item(), rel=1e-5)
    shuffled = reference.flatten(2)[:, :, torch.randperm(32 * 32)].view_as(reference)
    assert color_distribution_loss(shuffled, reference, directions) < 1e-10
    before = color_distribution_loss(image, reference, directions)
    matched = match_color(image, reference)
    after = color_distribution_loss(matched, reference, directions)
    assert color_statistics_loss(matched, reference) < color_statistics_loss(image, reference) / 50
    assert 0 < after < before / 2
    first = color_distribution_loss(image[:1], reference[:1], directions[:1])
    half = color_distribution_loss(image, reference, directions, torch.tensor([1.0, 0.0]))
    assert half == pytest.approx(first.item() / 2, rel=1e-5)
    output, target = image.clone().requires_grad_(), reference.clone().requires_grad_()
    color_distribution_loss(output, target, directions).backward()
    assert output.grad.abs().sum() > 0 and target.grad is None
    with pytest.raises(ValueError, match="directions must be"):
        color_distribution_loss(image, reference, directions[:1])


def test_matched_color_loss_compares_each_cell_with_its_match():
    """L_local pulls cell i of the output to cell j = nearest[i] of the reference: 0 for an output whose cells are the
    reference's moved by the matches, not for the reference itself; cells outside ``valid`` do not count (none: 0);
    per-image weights scale it and its gradient reaches the output; mismatched shapes are refused."""
    torch.manual_seed(5)
    reference = torch.rand(2, 3, 32, 32) * 2 - 1
    nearest = torch.stack([torch.randperm(16) for _ in range(2)]).view(2, 4, 4)  # a 4 x 4 grid of 8 px cells
    cells = reference.unfold(2, 8, 8).unfold(3, 8, 8)  # (B, 3, 4, 4, 8, 8)
    moved = torch.stack([cells[b].flatten(1, 2)[:, nearest[b].flatten()] for b in range(2)])  # (B, 3, 16, 8, 8)
    output = moved.view(2, 3, 4, 4, 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 32, 32)
    everywhere = torch.ones(2, 4, 4, dtype=torch.bool)
    assert matched_color_loss(output, reference, nearest, everywhere) < 1e-10
    assert matched_color_loss(reference, reference, nearest, everywhere) > 1e-3
    assert matched_color_loss(reference, reference, nearest, torch.zeros_like(everywhere)) == 0
    first = matched_color_loss(reference[:1], reference[:1], nearest[:1], everywhere[:1])
    half = matched_color_loss(reference, reference, nearest, everywhere, torch.tensor([1.0, 0.0]))
    assert half == pytest.approx(first.item() / 2, rel=1e-5)
    image = (reference * 0.5).requires_grad_()
    matched_color_loss(image, reference, nearest, everywhere).backward()
    assert image.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="nearest and valid"):
        matched_color_loss(image, reference, nearest, everywhere[:1])


def test_structure_loss_sees_layout_not_colour(alex, image_pair):
    """L_struct compares each image's layout with itself: 0 for the reference, small after a global recolouring
    (darkened and tinted), larger for another layout (a flip, another photo); no gradient reaches the
    reference."""
    content, style = image_pair  # (2, 3, 64, 64) shape images
    gain, offset = torch.tensor([0.8, 0.7, 0.6])[:, None, None], torch.tensor([0.1, -0.1, 0.0])[:, None, None]
    recoloured = content * gain + offset
    assert structure_loss(alex, content, content) == 0
    colour = structure_loss(alex, recoloured, content)
    assert 0 < colour < structure_loss(alex, content.flip(-1), content) / 2
    assert colour < structure_loss(alex, style, content) / 2
    output, reference = recoloured.clone().requires_grad_(), content.clone().requires_grad_()
    structure_loss(alex, output, reference).backward()
    assert output.grad.abs().sum() > 0 and reference.grad is None
    with pytest.raises(ValueError, match="`reference` shape"):
        structure_loss(alex, content, content[:, :, :32])


def test_texture_loss_sees_feature_distributions_not_layout(alex, image_pair):
    """L_tex compares where the hypercolumns lie more than where they are: 0 for the reference itself, little for
    its mirror image (another layout, the same parts) or a blurred copy, much more for another photo; the weight
    scales each image; no gradient reaches the reference; directions of the wrong shape are refused in one line."""
    content, style = image_pair  # (2, 3, 64, 64) shape images
    directions = torch.randn(2, sum(alex.chns), 32, generator=torch.Generator().manual_seed(0))
    assert texture_loss(alex, content, content, directions) == 0
    other = texture_loss(alex, style, content, directions)
    blurred = torch.nn.functional.avg_pool2d(content, 5, stride=1, padding=2, count_include_pad=False)
    assert 0 < texture_loss(alex, content.flip(-1), content, directions) < other / 3
    assert 0 < texture_loss(alex, blurred, content, directions) < other / 3
    first = texture_loss(alex, style[:1], content[:1], directions[:1])
    half = texture_loss(alex, style, content, directions, torch.tensor([1.0, 0.0]))
    assert half == pytest.approx(first.item() / 2, rel=1e-5)
    output, reference = blurred.clone().requires_grad_(), content.clone().requires_grad_()
    texture_loss(alex, output, reference, directions).backward()
    assert output.grad.abs().sum() > 0 and reference.grad is None
    with pytest.raises(ValueError, match="directions must be"):
        texture_loss(alex, content, content, directions[:, :10])


def test_reconstruction_loss_combines_parts(alex):
    torch.manual_seed(5)
    output, target = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    total, parts = reconstruction_loss(output, target, alex, lambda_mse=2.0, lambda_lpips=0.5)
    assert parts["mse"].item() == pytest.approx(F.mse_loss(output, target).item(), rel=1e-6)
    assert parts["lpips"].item() == pytest.approx(alex(output, target).mean().item(), rel=1e-6)
    assert total.item() == pytest.approx(2.0 * parts["mse"].item() + 0.5 * parts["lpips"].item(), rel=1e-6)
    masked_total, masked_parts = reconstruction_loss(
        output, target, alex, lambda_mse=2.0, lambda_lpips=0.5, mask=torch.ones(2, 1, 32, 32)
    )
    assert masked_parts["mse"].item() == pytest.approx(parts["mse"].item(), rel=1e-6)
    assert masked_parts["lpips"].item() == pytest.approx(parts["lpips"].item(), rel=1e-3)  # spatial map: ≈
    assert alex.spatial is False  # the masked path restores the model


def test_masked_lpips_averages_the_spatial_map(alex):
    torch.manual_seed(6)
    output, target = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :, :16] = 1
    spatial = copy.deepcopy(alex)
    spatial.spatial = True  # lpips' (B, 1, H, W) distance map
    expected = spatial(output, target)[..., :16].mean()
    assert lpips_loss(alex, output, target, mask).item() == pytest.approx(expected.item(), rel=1e-5)


def test_reconstruction_loss_requires_lpips_model():
    images = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="lpips_model"):
        reconstruction_loss(images, images)
    total, parts = reconstruction_loss(images, images + 0.5, lambda_lpips=0.0)
    assert set(parts) == {"mse"} and total.item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="mask"):
        mse_loss(images, images, torch.ones(1, 3, 8, 8))


# ----------------------------------------------------------------------------- LPIPS weights


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float().div(127.5).sub(1)


def _natural_image(seed: int, size: int = 128) -> torch.Tensor:
    """Colour noise with a natural image's 1/f amplitude spectrum, in [-1, 1], (3, size, size)."""
    generator = torch.Generator().manual_seed(seed)
    frequency = (torch.fft.fftfreq(size)[:, None] ** 2 + torch.fft.fftfreq(size)[None, :] ** 2).sqrt()
    phase = torch.exp(2j * torch.pi * torch.rand(3, size, size, generator=generator))
    image = torch.fft.ifft2(phase / frequency.clamp_min(1 / size)).real
    mixing = torch.eye(3) + 0.3 * torch.randn(3, 3, generator=generator)  # correlated colour channels
    image = torch.einsum("ij,jhw->ihw", mixing, image)
    return ((image - image.mean()) / image.std() * 0.5).clamp(-1, 1)


def _distances(model: lpips.LPIPS, first, second, blurred) -> tuple[float, float, float]:
    with torch.no_grad():
        return tuple(model(first, other).mean().item() for other in (second, blurred, first))


@pytest.mark.data
@pytest.mark.skipif(not CELEBA_VAL.is_dir(), reason=f"no CelebA photos in {CELEBA_VAL}")
def test_lpips_backbone_is_imagenet_trained_on_faces(alex, random_alex):
    photos = [Image.open(path) for path in sorted(CELEBA_VAL.glob("*.jpg"))[:8]]  # 178×218 faces
    first = torch.stack([_to_tensor(photo) for photo in photos[0::2]])
    second = torch.stack([_to_tensor(photo) for photo in photos[1::2]])  # different people
    blurred = torch.stack([_to_tensor(photo.filter(ImageFilter.GaussianBlur(3))) for photo in photos[0::2]])
    different, blur, same = _distances(alex, first, second, blurred)
    random_different, random_blur, _ = _distances(random_alex, first, second, blurred)
    assert different > 0.45 and blur > 0.3 and same == 0
    assert random_blur < blur / 8  # a random backbone barely sees blur
    assert random_different < different / 2


def test_lpips_backbone_is_imagenet_trained_on_generated_images(alex, random_alex):
    # looser than the photo test: 1/f noise is only natural-ish (real: ~0.43 / ~0.63, random: ~0.13 / ~0.06)
    first = torch.stack([_natural_image(seed) for seed in range(4)])
    second = torch.stack([_natural_image(seed) for seed in range(10, 14)])
    blurred = torch.stack([_to_tensor(Image.fromarray(
        ((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)).filter(ImageFilter.GaussianBlur(3))
    ) for image in first])
    different, blur, same = _distances(alex, first, second, blurred)
    random_different, random_blur, _ = _distances(random_alex, first, second, blurred)
    assert different > 0.3 and blur > 0.3 and same == 0
    assert random_blur < blur / 4 and random_different < different / 2


def test_lpips_model_is_frozen_with_real_backbone(alex):
    assert not alex.training and not any(p.requires_grad for p in alex.parameters())
    first_conv = backbone_state_dict("alex")["features.0.weight"]
    assert first_conv.shape == (64, 3, 11, 11) and torch.equal(alex.net.slice1[0].weight, first_conv)


def test_missing_weights_name_the_fetch_command(tmp_path, monkeypatch):
    """Loading never downloads: without local weights it says which command fetches them."""
    monkeypatch.setenv("COAT_HF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    for load in (lambda: load_lpips("alex"), load_vgg16_features):
        with pytest.raises(FileNotFoundError, match=f"fetch them once with: {FETCH_COMMAND} --net (alex|vgg)"):
            load()
    assert not (tmp_path / "cache").exists() and not (tmp_path / "hub").exists()


def test_vgg16_features_have_the_imagenet_weights():
    features = load_vgg16_features()
    expected = backbone_state_dict("vgg")
    assert {f"features.{key}" for key in features.state_dict()} == set(expected)
    assert all(torch.equal(value, expected[f"features.{key}"]) for key, value in features.state_dict().items())
    assert not features.training and not any(p.requires_grad for p in features.parameters())
    assert features(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 1, 1)


class _Exploit:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def test_restricted_unpickler_allows_arrays_and_refuses_code():
    arrays = {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}
    loaded = load_numpy_pickle(pickle.dumps(arrays, protocol=4))
    assert np.array_equal(loaded["kernel"], arrays["kernel"])
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_numpy_pickle(pickle.dumps(_Exploit()))
