"""The models shipped inside the package: loadable by name, small, and (with the photos) trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coat_hf import COATModel
from coat_hf.image_io import load_image
from coat_hf.image_processing_coat import COATImageProcessor
from coat_hf.pretrained import DEFAULT_MODEL, UNTRAINED_MODEL, available_models, default_model, resolve_model

TRAINED = [name for name in available_models() if name != UNTRAINED_MODEL]


def test_default_is_the_trained_face_model():
    assert DEFAULT_MODEL == "coat-celeba-128" and default_model() == DEFAULT_MODEL
    assert {"coat-celeba-128", "coat-afhq-cat-128"} <= set(TRAINED)


@pytest.mark.parametrize("name", TRAINED)
def test_bundled_model_loads_and_is_small(name):
    folder = Path(resolve_model(name))
    weights = list(folder.glob("*.safetensors"))  # one file or shards of at most 15 MB
    assert weights and sum(f.stat().st_size for f in weights) < 30 * 2**20
    assert all(f.stat().st_size <= 15 * 10**6 for f in weights)
    card = Path(__file__).parents[1] / "model_card.md"  # the one card, copied into every trained model's folder
    assert (folder / "README.md").read_text() == card.read_text(), f"copy model_card.md to {folder}/README.md"
    model = COATModel.from_pretrained(folder, dtype=torch.float32).eval()
    assert model.config.image_size >= 128
    processor = COATImageProcessor.from_pretrained(folder)  # saved with the model
    assert processor.to_dict() == COATImageProcessor.from_model_config(model.config).to_dict()
    x = torch.zeros(1, 3, model.config.image_size, model.config.image_size)
    with torch.no_grad():
        assert torch.isfinite(model(x, x).images).all()


def _psnr(model: COATModel, paths: list[Path]) -> float:
    processor = COATImageProcessor.from_model_config(model.config)
    x = processor([load_image(str(p), "image") for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(x, x, generator=torch.Generator().manual_seed(0)).images.clamp(-1, 1)
    mse = ((out - x) / 2).pow(2).flatten(1).mean(1)
    return float((-10 * torch.log10(mse)).mean())


def test_face_model_reconstructs_held_out_faces(data_dir):
    """On held-out CelebA faces the trained model reconstructs far better than the same network untrained."""
    paths = sorted((data_dir / "celeba" / "val").glob("*.jpg"))[:4]
    trained = COATModel.from_pretrained(resolve_model("coat-celeba-128"), dtype=torch.float32).eval()
    torch.manual_seed(0)
    untrained = COATModel(trained.config).eval()
    assert _psnr(trained, paths) > _psnr(untrained, paths) + 5
