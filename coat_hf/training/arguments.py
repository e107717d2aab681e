"""The training run's arguments: YAML config files plus ``--field value`` overrides, checked before any model is built.

Three dataclasses make a run: :class:`TrainingArguments` (model, optimisation, bookkeeping),
:class:`~coat_hf.training.objective.ObjectiveConfig` (the losses) and
:class:`~coat_hf.training.data.DataOptions` (the photos). ``--help`` lists every field with its help
text and default (``HfArgumentParser``).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from ..configuration_coat import COATConfig
from .data import DataOptions
from .objective import ObjectiveConfig

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes ``--compile_mode`` accepts."""
EXPORT_DTYPES = ("float32", "float16", "bfloat16")
"""Weight types an export may have (``--export_dtype``)."""


@dataclass
class TrainingArguments:
    """Model, optimisation and bookkeeping of a run."""

    model_preset: str = field(default="small", metadata={"help": f"COATConfig preset: {COATConfig.preset_names()}."})
    model_overrides: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "COATConfig fields over the preset (or init_from's config), as YAML, e.g. '{alignment: soft, "
                "modulation_pyramid: true}'; on the command line, merged over the --config file's."})
    init_from: str | None = field(default=None, metadata={
        "help": "A COAT model folder to start from (a bundled or converted model) instead of the preset."})
    train_modules: str = field(default="all", metadata={
        "help": "all, or encoders (E and E_mod train, the decoder D stays frozen: the paper's setting)."})
    adversarial: bool = field(default=False, metadata={
        "help": "Add a StyleGAN2 discriminator's non-saturating loss on reconstructions and transfers."})
    adv_weight: float = field(default=0.05, metadata={"help": "Weight of the adversarial loss."})
    r1_gamma: float = field(default=10.0, metadata={"help": "R1 penalty weight (lazy)."})
    r1_every: int = field(default=16, metadata={"help": "Steps between R1 penalties."})
    disc_max_channels: int = field(default=256, metadata={"help": "Widest discriminator layer."})
    disc_learning_rate: float | None = field(default=None, metadata={"help": "Discriminator LR (default: learning_rate)."})
    batch_size: int = field(default=8, metadata={"help": "Images per process and micro-batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimiser step."})
    learning_rate: float = field(default=2e-4, metadata={
        "help": "Peak learning rate (for the global batch base_batch_size when scale_lr is set)."})
    scale_lr: bool = field(default=False, metadata={
        "help": "Scale learning_rate by sqrt(global batch / base_batch_size) (large-batch recipe)."})
    base_batch_size: int = field(default=8, metadata={"help": "The global batch learning_rate was tuned for."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW β1."})
    adam_beta2: float = field(default=0.99, metadata={"help": "AdamW β2."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    lr_scheduler: str = field(default="cosine", metadata={"help": "transformers.get_scheduler name."})
    lr_warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up steps."})
    max_steps: int = field(default=1000, metadata={"help": "Optimiser steps of the whole run."})
    max_minutes: float | None = field(default=None, metadata={
        "help": "Wall-clock budget of this invocation: checkpoint and export cleanly when it is spent."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (autocast)."})
    channels_last: bool = field(default=False, metadata={"help": "channels_last memory format (GPU)."})
    cudnn_benchmark: bool = field(default=True, metadata={
        "help": "Let cuDNN time its algorithms for each convolution shape at its first call and keep the fastest "
                "(torch.backends.cudnn.benchmark; the step's shapes never change, as in StyleGAN2-ADA). Runs may "
                "then differ from each other in the last bits on a GPU; no effect on CPUs."})
    compile: bool = field(default=False, metadata={"help": "torch.compile the step (see --compile_scope)."})
    compile_scope: str = field(default="networks", metadata={
        "help": "networks (E, E_mod, D and the frozen LPIPS network, each on its own) or objective (the whole loss, "
                "forward and backward, as one graph: fusion across networks, fewer kernel launches)."})
    compile_mode: str = field(default="default", metadata={
        "help": f"torch.compile mode, one of {', '.join(COMPILE_MODES)} (reduce-overhead: CUDA graphs)."})
    compile_cache: str | None = field(default=None, metadata={
        "help": "A file of torch.compile's artifacts: loaded before compiling when it exists, written after the first "
                "compiled step, so that a fresh machine (same torch, Triton and device kind) skips most of the "
                "compile. Holds code: load only your own."})
    ema_decay: float = field(default=0.999, metadata={"help": "Decay of the exported EMA weights."})
    seed: int = field(default=0, metadata={"help": "Seed of the initial weights and of the sample schedule."})
    torch_threads: int = field(default=0, metadata={"help": "CPU threads per process (0: cores / processes)."})
    output_dir: str = field(default="runs/coat", metadata={"help": "The run's folder."})
    checkpoint_every: int = field(default=200, metadata={"help": "Steps between checkpoints."})
    keep_last: int = field(default=3, metadata={"help": "Checkpoints kept."})
    log_every: int = field(default=10, metadata={"help": "Steps between metric rows."})
    sample_every: int = field(default=200, metadata={"help": "Steps between sample grids."})
    sample_n: list[int] | None = field(default=None, metadata={"help": "n of the sample grids (default: 0, default_n, K-2)."})
    num_samples: int = field(default=4, metadata={"help": "Pairs in the sample grids."})
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard or none."})
    resume: str | None = field(default=None, metadata={"help": "latest or a checkpoint folder."})
    export: str | None = field(default=None, metadata={
        "help": "Export the latest checkpoint's EMA model to this folder ('' = output_dir/final) and exit."})
    export_dtype: str = field(default="float32", metadata={"help": "float32, float16 or bfloat16."})
    export_max_shard_size: str | None = field(default=None, metadata={
        "help": "Split the exported weights into files of at most this size, e.g. 15MB."})

    def __post_init__(self) -> None:
        positive = ("batch_size", "gradient_accumulation_steps", "max_steps", "checkpoint_every", "log_every",
                    "sample_every", "r1_every", "base_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate must be > 0, got {self.learning_rate}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"--max_minutes must be > 0, got {self.max_minutes}")
        choices = {"train_modules": ("all", "encoders"), "mixed_precision": ("no", "fp16", "bf16"),
                   "export_dtype": EXPORT_DTYPES, "report_to": ("tensorboard", "none"),
                   "compile_scope": ("networks", "objective"),
                   "compile_mode": COMPILE_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.init_from is None and self.model_preset not in COATConfig.preset_names():
            raise ValueError(f"--model_preset must be one of {COATConfig.preset_names()}, got {self.model_preset!r}")
        if self.compile_cache is not None and not self.compile:
            raise ValueError("--compile_cache needs --compile true")
        if self.compile_cache is not None and Path(self.compile_cache).is_dir():
            raise ValueError(f"--compile_cache {self.compile_cache!r} is a folder; name a file")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass
class RunConfig:
    """Everything a run needs."""

    training: TrainingArguments
    objective: ObjectiveConfig
    data: DataOptions

    def to_dict(self) -> dict[str, Any]:
        """One flat dict of every field (the format of ``config.yaml`` and of the YAML configs)."""
        return {**dataclasses.asdict(self.training), **dataclasses.asdict(self.objective),
                **dataclasses.asdict(self.data)}


_CLASSES = (TrainingArguments, ObjectiveConfig, DataOptions)


def _yaml_mapping(text: str) -> dict[str, Any]:
    """A YAML mapping from the command line, e.g. ``{alignment: soft}``."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping such as '{{alignment: soft}}', got {text!r}")
    return value


def _parser() -> HfArgumentParser:
    parser = HfArgumentParser(_CLASSES, description="Train COAT on photos of one object category.")
    parser.add_argument("--config", help="A YAML file of fields (command-line flags override it; 'extends: OTHER.yaml' "
                        "starts from another config).")
    parser._option_string_actions["--model_overrides"].type = _yaml_mapping
    export = parser._option_string_actions["--export"]
    export.nargs, export.const = "?", ""
    return parser


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config file as a dict; unknown keys are refused. ``extends: OTHER.yaml`` (a path relative to the
    file) starts from that config's fields, which the file's own override."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"--config {str(path)!r}: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {str(path)!r} must hold a mapping of fields")
    known = {f.name for cls in _CLASSES for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known - {"extends"})
    if unknown:
        raise ValueError(f"--config {str(path)!r}: unknown keys {unknown}")
    if "extends" not in values:
        return values
    base, seen = path.parent / str(values.pop("extends")), (*_seen, path.resolve())
    if base.resolve() in seen:
        raise ValueError(f"--config {str(path)!r}: 'extends' makes a cycle through {str(base)!r}")
    return {**load_yaml(base, seen), **values}


def parse_arguments(argv: list[str] | None = None) -> RunConfig:
    """``--config FILE`` then ``--field value`` overrides. ``--export`` with ``--output_dir`` alone reads the
    run's own ``config.yaml``. Raises ValueError (one line) on bad input."""
    parser = _parser()
    known, _ = parser.parse_known_args(argv)
    defaults: dict[str, Any] = {}
    if known.config:
        defaults.update(load_yaml(known.config))
    if known.export is not None and not known.config:
        run_config = Path(known.output_dir) / "config.yaml"
        if run_config.is_file():  # --export from --output_dir alone
            defaults.update({k: v for k, v in load_yaml(run_config).items() if k not in ("resume", "export")})
    parser.set_defaults(**defaults)
    try:
        outputs = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    except TypeError as err:
        raise ValueError(str(err)) from None
    (training, objective, data), rest = outputs[:3], outputs[-1]  # between them: the namespace of --config
    if rest:
        raise ValueError(f"unknown arguments: {' '.join(rest)}")
    training.model_overrides = {**defaults.get("model_overrides", {}), **training.model_overrides}
    if training.export is None and data.data_dir is None and data.dataset_name is None:
        raise ValueError("--data_dir (a folder of photos) or --dataset_name is required")
    if data.data_dir is not None and not Path(data.data_dir).is_dir():
        raise ValueError(f"--data_dir {data.data_dir!r} is not a folder")
    return RunConfig(training, objective, data)
