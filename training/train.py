"""Train COAT (L = L_rec + α·L_reg + β·L_CCL) on one object category, on CPU, one GPU or many.

    accelerate launch training/train.py --config training/configs/small.yaml --data_dir ../shared/data/horses
    python training/train.py --config training/configs/small.yaml --data_dir ... --resume latest

Every field of :class:`TrainConfig` can be set in the YAML file and overridden on the command line as
``--field value``. The output folder holds ``config.yaml`` (the resolved config), ``checkpoints/step_*``
(Accelerate states, written atomically, the last ``keep_last`` kept), ``logs/`` (TensorBoard),
``metrics.jsonl`` (the logged scalars, one line per ``log_every`` steps),
``samples/`` (content | style | transfer grids) and ``final/`` (the EMA model, ``save_pretrained``
format with a model card, loadable by ``COATModel.from_pretrained`` and the pipeline).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import re
import resource
import shutil
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python training/train.py` finds its siblings

from data import DataOptions, EpochSampler, PairDataset, build_dataset  # noqa: E402
from discriminator import Discriminator, discriminator_loss, generator_adversarial_loss, r1_penalty  # noqa: E402

from coat_hf import COATConfig, COATModel  # noqa: E402
from coat_hf.training_objective import COATTrainingObjective  # noqa: E402

logger = logging.getLogger("coat_hf.train")

LOGGED_LOSSES = ("loss", "rec", "mse", "lpips", "reg", "ccl", "adv_g", "adv_d", "r1")
CHECKPOINT_PREFIX = "step_"
TEMP_PREFIX = ".tmp_"


@dataclass
class TrainConfig:
    """Everything a run needs. Model fields first, then data, optimisation, bookkeeping."""

    # Model: a COATConfig preset plus overrides (any COATConfig field), or a model folder to start from.
    model_preset: str = "small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # a COAT model folder (e.g. a converted StyleGAN2 decoder)
    train_modules: str = "all"  # "all", or "encoders" (E and E_mod; the decoder stays frozen, as in the paper)
    ccl_scales: list[int] | None = None  # E's scales in L_CCL (None: all)
    transfer_n: int | None = None  # n of the transfer branch (None: random per sample in 1..K-1)
    # Optional adversarial term (StyleGAN2 discriminator, lazy R1) on reconstructions and transfers.
    adversarial: bool = False
    adv_weight: float = 0.05
    r1_gamma: float = 10.0
    r1_every: int = 16
    disc_max_channels: int = 256
    disc_learning_rate: float | None = None  # None: learning_rate
    # Data (see training/data.py for the pair rule).
    data_dir: str | None = None
    dataset_name: str | None = None
    dataset_config: str | None = None
    dataset_split: str = "train"
    image_column: str = "image"
    label_column: str | None = "label"
    mask_dir: str | None = None
    streaming: bool = False
    exclude: str | None = None
    holdout_last: int = 0
    hflip: bool = True
    crop_scale: float = 1.0
    num_workers: int = 0
    # Optimisation.
    batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"  # any diffusers.optimization.get_scheduler name
    lr_warmup_steps: int = 100
    max_steps: int = 1000
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # "no", "fp16", "bf16"
    ema_decay: float = 0.999
    seed: int = 0
    torch_threads: int = 0  # CPU threads per process (0: the machine's cores / processes)
    # Bookkeeping.
    output_dir: str = "runs/coat"
    checkpoint_every: int = 200
    keep_last: int = 3
    log_every: int = 10
    sample_every: int = 200
    sample_n: list[int] | None = None  # n of the sample grids (None: 0, default_n, K-2)
    num_samples: int = 4
    report_to: str = "tensorboard"
    resume: str | None = None  # "latest" or a checkpoint folder (same process count and batch size)
    export: str | None = None  # export a checkpoint's EMA model (--resume, default latest) here and exit; "" = output_dir/final
    export_dtype: str = "float32"

    def data_options(self, image_size: int) -> DataOptions:
        names = {f.name for f in dataclasses.fields(DataOptions)}
        return DataOptions(**{k: v for k, v in dataclasses.asdict(self).items() if k in names}, image_size=image_size)


# ---------------------------------------------------------------------------------------------------
# Config: YAML file + `--field value` overrides, typed from the dataclass.


def _convert(value: str, annotation: Any, name: str) -> Any:
    """Parse a command-line string into the field's type (``none``/``null`` for optional fields)."""
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    members = typing.get_args(annotation) if union else (annotation,)
    if type(None) in members and value.lower() in ("none", "null"):
        return None
    base = next(m for m in members if m is not type(None))
    origin = typing.get_origin(base) or base
    if origin is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"--{name} expects true or false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    if origin in (list, dict):
        parsed = yaml.safe_load(value)
        if not isinstance(parsed, origin):
            raise ValueError(f"--{name} expects a YAML {origin.__name__}, got {value!r}")
        return parsed
    return origin(value)


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """``--config FILE`` then ``--field value`` overrides; ``--export`` alone means the default folder."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of TrainConfig fields")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kwargs = {"nargs": "?", "const": ""} if f.name == "export" else {}
        parser.add_argument(f"--{f.name}", dest=f.name, default=argparse.SUPPRESS, metavar=f.name.upper(), **kwargs)
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    if args.get("config"):
        values = yaml.safe_load(Path(args.pop("config")).read_text()) or {}
        unknown = set(values) - set(hints)
        if unknown:
            raise ValueError(f"unknown fields in the config file: {sorted(unknown)}")
    args.pop("config", None)
    for name, value in args.items():
        values[name] = value if name == "export" else _convert(value, hints[name], name)
    return TrainConfig(**values)


# ---------------------------------------------------------------------------------------------------
# Checkpoints.


@dataclass
class TrainState:
    """The loop's position, saved in every checkpoint (``register_for_checkpointing``)."""

    step: int = 0  # optimiser steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of `epoch` this process has consumed
    skipped_images: int = 0  # unreadable files passed over, all processes

    def state_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temp folders of an interrupted save excluded)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def save_checkpoint(accelerator: Accelerator, root: Path, step: int, keep_last: int) -> Path:
    """``save_state`` into a temp folder, then an atomic rename to ``step_NNNNNN``; prune to ``keep_last``."""
    final = root / f"{CHECKPOINT_PREFIX}{step:06d}"
    temp = root / f"{TEMP_PREFIX}{final.name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for path in temp.iterdir():  # flush the files before the rename makes them visible
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temp, final)
        for old in checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(resume: str | None, root: Path) -> Path | None:
    """The checkpoint that ``--resume`` names: ``latest`` (None if there is none yet) or a folder."""
    if not resume:
        return None
    if resume == "latest":
        found = checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise ValueError(f"--resume {resume!r}: no such checkpoint folder")
    return path


# ---------------------------------------------------------------------------------------------------
# Model, samples, export.


def build_model(config: TrainConfig) -> COATModel:
    """The model to train: ``init_from`` (with loss-field overrides) or a fresh preset."""
    if config.init_from:
        model = COATModel.from_pretrained(config.init_from)
        for key, value in config.model_overrides.items():
            setattr(model.config, key, value)
        return model
    return COATModel(COATConfig.preset(config.model_preset, **config.model_overrides))


def set_trainable(model: COATModel, train_modules: str) -> None:
    """``all`` trains E, E_mod and D; ``encoders`` freezes the decoder D (the paper's setting)."""
    if train_modules not in ("all", "encoders"):
        raise ValueError(f"train_modules must be 'all' or 'encoders', got {train_modules!r}")
    model.requires_grad_(True)
    if train_modules == "encoders":
        model.decoder.requires_grad_(False)


@torch.no_grad()
def sample_grid(model: COATModel, content: torch.Tensor, style: torch.Tensor, ns: list[int], seed: int) -> torch.Tensor:
    """One row per pair: content | style | transfer at each n. (3, H, W) in [0, 1]."""
    model.eval()
    columns = [content, style]
    for n in ns:
        columns.append(model(content, style, n=n, generator=torch.Generator().manual_seed(seed)).images)
    model.train()
    tiles = torch.stack(columns, dim=1).flatten(0, 1)  # (B·(2+len(ns)), 3, S, S), row-major
    return make_grid(tiles.float().clamp(-1, 1).add(1).div(2).cpu(), nrow=len(columns), padding=2)


MODEL_CARD = """---
license: cc-by-nc-4.0
library_name: coat-hf
pipeline_tag: image-to-image
tags:
- coat
- appearance-transfer
- image-to-image
- stylegan2
---

# COAT appearance transfer ({preset}, {image_size} px)

A COAT model (correspondence-driven object appearance transfer, Jeon et al., BMVC 2022) trained with the `coat-hf` training program: it re-renders a content photo's object with
the appearance of a style photo of the same category.

```python
from coat_hf import COATModel
model = COATModel.from_pretrained("{folder}")
```

## Training

| | |
| --- | --- |
| data | `{data}` ({num_images}) |
| steps | {step} (batch {global_batch}, {num_processes} process(es)) |
| objective | L = L_rec + {reg_alpha}·L_reg + {ccl_beta}·L_CCL (λ_mse {lambda_mse}, λ_lpips {lambda_lpips}, LPIPS {lpips_net}) |
| trained modules | {train_modules} |
| weights | EMA (decay {ema_decay}), {dtype} |
| final losses | {losses} |

## Licence

The weights were fitted to photos under non-commercial research terms (CelebA, AFHQ CC BY-NC 4.0,
Weizmann horses): the model inherits them and is released under CC BY-NC 4.0.
"""


def export_model(model: COATModel, ema: EMAModel, directory: Path, config: TrainConfig, state: TrainState,
                 num_images: str, num_processes: int, losses: dict[str, float]) -> None:
    """``save_pretrained`` of the EMA weights plus a model card (README.md)."""
    exported = copy.deepcopy(model)
    ema.copy_to(exported.parameters())
    exported.to(getattr(torch, config.export_dtype))
    exported.save_pretrained(directory)
    mc = exported.config
    (directory / "README.md").write_text(MODEL_CARD.format(
        preset=config.model_preset if not config.init_from else Path(config.init_from).name,
        image_size=mc.image_size, folder=directory, data=config.data_dir or config.dataset_name,
        num_images=num_images, step=state.step, global_batch=config.batch_size * num_processes
        * config.gradient_accumulation_steps, num_processes=num_processes, reg_alpha=mc.reg_alpha,
        ccl_beta=mc.ccl_beta, lambda_mse=mc.lambda_mse, lambda_lpips=mc.lambda_lpips, lpips_net=mc.lpips_net,
        train_modules=config.train_modules, ema_decay=config.ema_decay, dtype=config.export_dtype,
        losses=", ".join(f"{k} {v:.4f}" for k, v in losses.items()) or "n/a",
    ))


# ---------------------------------------------------------------------------------------------------
# The optional adversarial term.


@dataclass
class Adversary:
    """A prepared StyleGAN2 discriminator (``discriminator``, DDP-wrapped on several processes), its
    optimiser, and the bare module (``plain``) that scores the generator's outputs without syncing D."""

    discriminator: torch.nn.Module
    optimizer: torch.optim.Optimizer
    plain: Discriminator

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """Non-saturating loss of the outputs; D's weights are left out of this graph."""
        self.plain.requires_grad_(False)
        logits = self.plain(fake)
        self.plain.requires_grad_(True)
        return generator_adversarial_loss(logits)

    def step(self, accelerator: Accelerator, real: torch.Tensor, fake: torch.Tensor, r1_weight: float
             ) -> dict[str, torch.Tensor]:
        """One D update on real content vs detached outputs, plus a lazy R1 term when ``r1_weight`` > 0."""
        real = real.detach().requires_grad_(r1_weight > 0)
        real_logits = self.discriminator(real)
        loss = discriminator_loss(real_logits, self.discriminator(fake))
        logs = {"adv_d": loss.detach()}
        if r1_weight > 0:
            r1 = r1_penalty(real_logits, real)
            loss = loss + r1_weight / 2 * r1
            logs["r1"] = r1.detach()
        accelerator.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return logs


# ---------------------------------------------------------------------------------------------------
# The loop.


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory: CUDA allocations on a GPU, resident set size on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_dataloader(dataset, config: TrainConfig, accelerator: Accelerator) -> tuple[DataLoader, EpochSampler | None]:
    """Map-style sets get a seeded epoch sampler sharded by Accelerate; streamed sets shard themselves."""
    if isinstance(dataset, PairDataset):
        sampler = EpochSampler(len(dataset), config.seed)
        loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                            num_workers=config.num_workers)
        return accelerator.prepare(loader), sampler
    loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=0)
    return loader, None


def train(config: TrainConfig) -> Path:
    """Run (or resume, or just export) training; returns the export folder."""
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    if accelerator.device.type == "cpu":
        torch.set_num_threads(config.torch_threads or max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    set_seed(config.seed)

    model = build_model(config)
    set_trainable(model, config.train_modules)
    objective = COATTrainingObjective(model, config.ccl_scales, config.transfer_n)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.weight_decay)
    # Accelerate steps a prepared scheduler once per process per optimiser step.
    scheduler = get_scheduler(config.lr_scheduler, optimizer,
                              num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
                              num_training_steps=config.max_steps * accelerator.num_processes)
    ema = EMAModel(model.parameters(), decay=config.ema_decay)
    adversary = None
    if config.adversarial:
        discriminator = Discriminator(model.config.image_size, config.disc_max_channels)
        disc_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=config.disc_learning_rate
                                           or config.learning_rate, betas=(config.adam_beta1, config.adam_beta2))
        adversary = Adversary(*accelerator.prepare(discriminator, disc_optimizer), discriminator)

    dataset = build_dataset(config.data_options(model.config.image_size), accelerator.process_index,
                            accelerator.num_processes)
    loader, sampler = make_dataloader(dataset, config, accelerator)
    objective, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)
    ema.to(accelerator.device)
    state = TrainState()
    accelerator.register_for_checkpointing(ema, state)

    checkpoint_root = output_dir / "checkpoints"
    resume_from = resolve_resume(config.resume or ("latest" if config.export is not None else None), checkpoint_root)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        ema.to(accelerator.device)  # the loaded EMA weights arrive on the CPU
        logger.info("resumed from %s at step %d", resume_from, state.step)
    elif config.export is not None:
        raise ValueError(f"--export: no checkpoint to export in {checkpoint_root}")
    elif config.resume:
        logger.info("--resume %s: no checkpoint in %s yet, starting from step 0", config.resume, checkpoint_root)
    export_dir = Path(config.export) if config.export else output_dir / "final"
    num_images = f"{len(dataset)} images" if isinstance(dataset, PairDataset) else "streamed"
    if config.export is not None:  # export only
        if accelerator.is_main_process:
            export_model(model, ema, export_dir, config, state, num_images, accelerator.num_processes, {})
        accelerator.end_training()
        return export_dir
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
        for temp in checkpoint_root.glob(f"{TEMP_PREFIX}*"):  # left by a kill during a save
            shutil.rmtree(temp, ignore_errors=True)

    if accelerator.is_main_process and accelerator.log_with:
        accelerator.init_trackers("coat", config={k: str(v) for k, v in dataclasses.asdict(config).items()})
    k = model.config.num_modulation_layers
    sample_ns = config.sample_n or sorted({0, model.config.default_n, max(k - 2, 0)})
    fixed = None  # the same pairs at every interval: the first items (map-style) or the first batch (stream)
    if isinstance(dataset, PairDataset) and accelerator.is_main_process:
        items = [dataset[i] for i in range(min(config.num_samples, len(dataset)))]
        fixed = [torch.stack([it[key] for it in items]).to(accelerator.device) for key in ("content", "style")]

    progress = tqdm(total=config.max_steps, initial=state.step, desc="train", dynamic_ncols=True,
                    disable=not accelerator.is_main_process)
    window_images, window_start, last_logs = 0, time.perf_counter(), {}
    objective.train()
    while state.step < config.max_steps:
        epoch_loader = loader
        if sampler is None:  # an endless stream: skip what this process consumed before a resume
            dataset.set_epoch(state.epoch, state.batches_in_epoch * config.batch_size)
        else:
            dataset.set_epoch(state.epoch)
            sampler.set_epoch(state.epoch)
            if state.batches_in_epoch:
                epoch_loader = accelerator.skip_first_batches(loader, state.batches_in_epoch)
        for batch in epoch_loader:
            if sampler is None:
                batch = {key: value.to(accelerator.device) for key, value in batch.items()}
                if fixed is None and accelerator.is_main_process:
                    fixed = [batch[key][: config.num_samples] for key in ("content", "style")]
            models = (objective,) if adversary is None else (objective, adversary.discriminator)
            with accelerator.accumulate(*models):
                out = objective(batch["content"], batch["style"], batch["seed"], batch.get("mask"))
                loss = out["loss"]
                if adversary is not None:
                    fake = torch.cat([out["reconstruction"], out["transfer"]])  # (2B, 3, S, S)
                    with accelerator.autocast():
                        out["adv_g"] = adversary.generator_loss(fake)
                    loss = loss + config.adv_weight * out["adv_g"]
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if adversary is not None:
                    r1_step = state.step % config.r1_every == 0
                    out.update(adversary.step(accelerator, batch["content"], fake.detach(),
                                              config.r1_gamma * config.r1_every if r1_step else 0.0))
            state.batches_in_epoch += 1
            window_images += batch["content"].shape[0] * accelerator.num_processes
            state.skipped_images += int(accelerator.reduce(batch["skipped"].sum(), "sum"))
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            ema.step(model.parameters())
            progress.update(1)
            if state.step % config.log_every == 0 or state.step == config.max_steps:
                parts = {key: accelerator.reduce(out[key], "mean").item()
                         for key in LOGGED_LOSSES if key in out}
                elapsed = time.perf_counter() - window_start
                memory = torch.tensor(peak_memory_mb(accelerator.device), device=accelerator.device)
                last_logs = {**parts, "lr": scheduler.get_last_lr()[0], "images_per_s": window_images / elapsed,
                             "skipped_images": state.skipped_images,
                             "peak_memory_mb": accelerator.reduce(memory, "max").item()}
                accelerator.log(last_logs, step=state.step)
                if accelerator.is_main_process:
                    with open(output_dir / "metrics.jsonl", "a") as handle:
                        handle.write(json.dumps({"step": state.step, "num_processes": accelerator.num_processes,
                                                 **last_logs}) + "\n")
                progress.set_postfix(loss=f"{parts['loss']:.4f}", img_s=f"{last_logs['images_per_s']:.1f}")
                window_images, window_start = 0, time.perf_counter()
            if fixed is not None and (state.step % config.sample_every == 0 or state.step == config.max_steps):
                ema.store(model.parameters())
                ema.copy_to(model.parameters())
                grid = sample_grid(model, *fixed, sample_ns, config.seed)
                ema.restore(model.parameters())
                (output_dir / "samples").mkdir(exist_ok=True)
                save_image(grid, output_dir / "samples" / f"step_{state.step:06d}.png")
                if accelerator.log_with:
                    for tracker in accelerator.trackers:
                        if tracker.name == "tensorboard":
                            tracker.writer.add_image("samples/content|style|" + ",".join(f"n={n}" for n in sample_ns),
                                                     grid, state.step)
            if state.step % config.checkpoint_every == 0 or state.step == config.max_steps:
                save_checkpoint(accelerator, checkpoint_root, state.step, config.keep_last)
            if state.step >= config.max_steps:
                break
        else:
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    progress.close()

    if accelerator.is_main_process:
        export_model(model, ema, export_dir, config, state,
                     num_images, accelerator.num_processes, {k: v for k, v in last_logs.items() if k in LOGGED_LOSSES})
        logger.info("exported the EMA model to %s", export_dir)
    accelerator.end_training()
    return export_dir


def main(argv: list[str] | None = None) -> None:
    train(parse_config(argv))


if __name__ == "__main__":
    main()
