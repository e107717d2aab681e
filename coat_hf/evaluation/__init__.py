"""Quantitative evaluation of COAT against latent swapping, warping and colour transfer (see ``runner``).

``python -m coat_hf.evaluation --data DIR --out DIR [--model NAME|PATH] [--masks DIR]``.
"""

from .methods import ColorMatched, ColorTransfer, COATTransfer, FeatureWarp, InputImage, TransferMethod, build_methods
from .metrics import (
    TransferMetrics,
    VGGHypercolumns,
    psnr,
    self_similarity,
    sliced_wasserstein_distance,
    structure_distance,
)
from .runner import EvaluationConfig, evaluate, run_evaluation

__all__ = [
    "COATTransfer",
    "ColorMatched",
    "ColorTransfer",
    "EvaluationConfig",
    "FeatureWarp",
    "InputImage",
    "TransferMethod",
    "TransferMetrics",
    "VGGHypercolumns",
    "build_methods",
    "evaluate",
    "psnr",
    "run_evaluation",
    "self_similarity",
    "sliced_wasserstein_distance",
    "structure_distance",
]
