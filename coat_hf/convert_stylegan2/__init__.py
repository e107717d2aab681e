"""Import a pretrained StyleGAN2 generator as COAT's frozen decoder D.

    python -m coat_hf.convert_stylegan2 CHECKPOINT --out DIR [--preset paper-256] [--encoder-channels 64 128 256 512]

Layout: :mod:`.generator` (the imported generator in COAT's decoder layout, shared by both formats),
:mod:`.rosinality` and :mod:`.nvlabs` (the two checkpoint formats), :mod:`.conversion` (building and writing
the COAT model, with the paper-256 training recipe shipped beside it as ``paper-256.yaml``) and :mod:`.cli`
(the command). NVlabs pickles are read by :mod:`coat_hf.safe_pickle`.

COAT (Sec. 3) decodes with a pretrained StyleGAN2 generator that stays frozen while the encoders E and
E_mod train. This module reads the two common checkpoint formats:

* **rosinality** ``stylegan2-pytorch`` ``.pt`` files: ``torch.load(..., weights_only=True)`` of a dict whose
  ``g_ema`` holds the generator state dict (``style.*`` mapping network, ``input.input``, ``conv1``,
  ``to_rgb1``, ``convs.{i}``, ``to_rgbs.{i}``, ``noises.noise_{i}``) and, for converted official models,
  ``latent_avg``. COAT's decoder uses the same names, so the synthesis weights copy over unchanged.
* **NVlabs** ``stylegan2-ada-pytorch`` / ``stylegan3`` (``--cfg stylegan2``) ``.pkl`` network pickles. These
  hold ``torch_utils.persistence`` objects that carry their own source code, which NVlabs' loader
  executes. :class:`~coat_hf.safe_pickle.RestrictedUnpickler` never does: every NVlabs object (any global whose module is
  ``torch_utils``, ``training`` or ``dnnlib``, or below them) becomes an inert :class:`NetworkStub`
  that only records the object's state, tensors are rebuilt through ``torch.load(weights_only=True)``,
  and any other global (``os.system``, ``builtins.eval``, ...) is refused with
  :class:`~coat_hf.safe_pickle.UnsafePickleError`.
  The generator (``G_ema``) is then read by attribute names (``synthesis.b{res}.conv0/conv1/torgb``,
  ``mapping.w_avg``), never by trusting class names.

NVlabs' layers differ from rosinality's only in how they store the same quantities, so the mapping is
exact: conv weights gain a leading batch axis (the per-layer 1/sqrt(fan-in) gain that rosinality applies
is cancelled by demodulation, Eq. 3 of StyleGAN2, up to its 1e-8 epsilon), ``affine`` is the modulation
layer (same equalised-lr parameterisation, bias initialised to 1), the ToRGB gain 1/sqrt(C) that NVlabs
applies to the styles rosinality applies to the weight, ``noise_strength``/``noise_const`` become the noise
weight and fixed noise map, and the up-sampling convolution needs no flip: both store the kernel of a
stride-2 transposed convolution followed by the 4-tap FIR filter (NVlabs' "upsample, then convolve"
with padding applied once is the same operation). Caveats: ``conv_clamp`` (clipping activations to
±256, an fp16 safeguard of NVlabs' training configs) is not applied, which changes nothing unless an
activation exceeds it; fp16 layers run in float32, as NVlabs' ``force_fp32`` does; only the ``skip``
architecture with 3x3 convs, lrelu and the [1, 3, 3, 1] filter (every official StyleGAN2 model) maps onto D.

The converter writes a COAT model folder (``save_pretrained``: random encoders, imported decoder and its
average latent, used by E_mod as the origin of its offsets and by L_reg) and a ``train_config.yaml`` for
``training/train.py`` that starts from it with ``train_modules: encoders`` (the paper's setting).
"""

from ..safe_pickle import NetworkStub, RestrictedUnpickler, UnsafePickleError, load_network_pickle
from .cli import main
from .conversion import (
    DEFAULT_PRESET,
    FORMATS,
    PAPER_TRAIN_CONFIG,
    coat_config_for,
    convert_checkpoint,
    load_decoder,
    read_stylegan2_checkpoint,
    write_train_config,
)
from .generator import ImportedGenerator, mean_latent, pixel_norm
from .nvlabs import module_states, named_tensors, nvlabs_to_coat, read_nvlabs_pickle
from .rosinality import read_rosinality_checkpoint, rosinality_to_coat

__all__ = [
    "DEFAULT_PRESET",
    "FORMATS",
    "PAPER_TRAIN_CONFIG",
    "ImportedGenerator",
    "NetworkStub",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "coat_config_for",
    "convert_checkpoint",
    "load_decoder",
    "load_network_pickle",
    "main",
    "mean_latent",
    "module_states",
    "named_tensors",
    "nvlabs_to_coat",
    "pixel_norm",
    "read_nvlabs_pickle",
    "read_rosinality_checkpoint",
    "read_stylegan2_checkpoint",
    "rosinality_to_coat",
    "write_train_config",
]
