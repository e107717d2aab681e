"""The training step on a CUDA device: no host synchronisation inside a step (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_shape_image
from coat_hf.training.arguments import parse_arguments
from coat_hf.training.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# The bundled models' fine-tune objective (training/configs/*-gpu-continue.yaml), small weights: a structure code
# trained on recoloured views, nearest matches, L_color, L_local, L_struct, L_tex and L_hist, style mixing.
RECIPE = ["--model_overrides", "{structure_channels: 4, structure_scale: [2, 1]}", "--structure_view", "true",
          "--train_alignment", "nearest", "--color_weight", "1", "--color_falloff", "0.1", "--local_color_weight", "1",
          "--structure_weight", "1", "--texture_weight", "1", "--histogram_weight", "1", "--style_mixing_prob", "0.3"]


@pytest.mark.parametrize("extra", [[], RECIPE], ids=["paper", "fine-tune-recipe"])
def test_training_step_never_waits_for_the_host(tmp_path, tiny_train_args, extra):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(8):
        make_shape_image(48, seed=i).save(folder / f"{i}.png")
    trainer = Trainer(parse_arguments([*tiny_train_args(folder, tmp_path / "run"), "--cache_images", "true",
                                       "--mixed_precision", "bf16", *extra]))
    trainer.objective.train()
    initial = [s.clone() for s in trainer.ema.shadow]
    trainer.train_step(0)  # warm-up: allocations, cuDNN autotuning, the first epoch's permutation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in (1, 2):
            trainer.train_step(step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # The EMA follows the weights the optimiser trains (not stale copies left on the host by the move).
    assert all(p.device.type == "cuda" for p in trainer.trainable)
    assert any(not torch.equal(a, b) for a, b in zip(initial, trainer.ema.shadow))
