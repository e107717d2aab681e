"""Frozen ImageNet VGG16 maps for the correspondence search: a departure from COAT (issue 15, item 5).

The paper's Eq. 1 compares E's own maps F1,l and F2,l, which start random and match semantically only as
training goes. With ``COATConfig.match_features = "vgg16"``, Eq. 1-2 compare VGG16's ImageNet activations at
the stride of each of E's scales instead (relu2_2 at stride 2, relu3_3 at 4, relu4_3 at 8, relu5_3 at 16, as
CoCosNet matches on a pretrained network's features), and Eq. 3 still moves E's style features F2,l to the
matched positions. The network is frozen and not part of the model's weights: ``COATModel`` builds it on first
use from ``coat_hf.lpips_weights`` (``python -m coat_hf.lpips_weights --net vgg`` fetches it once per machine).
"""

from __future__ import annotations

from torch import Tensor, nn

from .lpips_weights import VGG16_RELUS, imagenet_normalize, load_vgg16_features

STRIDE_LAYERS = {2: "relu2_2", 4: "relu3_3", 8: "relu4_3", 16: "relu5_3"}
"""The VGG16 ReLU whose map has each of E's strides (E's scale l has stride 2^(l+1))."""


class VGGMatchingMaps(nn.Module):
    """VGG16 activations at the given strides: (B, 3, S, S) in [-1, 1] -> one (B, C_l, S/stride, S/stride) map per
    stride, frozen (eval mode, no gradients)."""

    def __init__(self, strides: list[int], features: nn.Sequential | None = None) -> None:
        super().__init__()
        unknown = [s for s in strides if s not in STRIDE_LAYERS]
        if unknown:
            raise ValueError(f"VGG16 matching covers strides {sorted(STRIDE_LAYERS)}, got {unknown}")
        self.indices = [VGG16_RELUS[STRIDE_LAYERS[s]] for s in strides]
        features = load_vgg16_features() if features is None else features
        self.features = features[: max(self.indices) + 1].eval().requires_grad_(False)

    def train(self, mode: bool = True) -> VGGMatchingMaps:
        return super().train(False)  # frozen: always in eval mode

    def forward(self, images: Tensor) -> list[Tensor]:
        h, maps = imagenet_normalize(images), {}
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in self.indices:
                maps[index] = h
        return [maps[index] for index in self.indices]
