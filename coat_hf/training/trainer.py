"""The training loop: setup, step, logging, sampling, checkpoints and export, on a CPU, one GPU or many.

The output folder holds ``config.yaml`` (the resolved fields), ``checkpoints/step_*`` (Accelerate states
written atomically, the last ``keep_last`` kept; the trained model, optimiser, scheduler, EMA and loop
position, never the frozen LPIPS network), ``logs/`` (TensorBoard), ``metrics.jsonl`` (one row per
``log_every`` steps, rows past a resumed checkpoint replaced), ``samples/`` (content | style | transfer
grids) and ``final/`` (the EMA model, ``save_pretrained`` format with a model card).

A step never waits for the host: the batch is gathered on the device, every random draw is a
counter-based draw keyed by the sample, and the logged scalars are summed on the device and read back
once per ``log_every`` steps.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import re
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor

from ..configuration_coat import COATConfig
from ..image_processing_coat import COATImageProcessor
from ..modeling_coat import COATModel
from .arguments import RunConfig, TrainingArguments
from .compile_cache import load_compile_cache, save_compile_cache
from .data import PhotoSource, TrainingData
from .discriminator import Adversary, Discriminator
from .objective import COATTrainingObjective, ObjectiveConfig

logger = logging.getLogger("coat_hf.train")

CHECKPOINT_PREFIX = "step_"
TEMP_PREFIX = ".tmp_"

DATA_LICENCES = {  # a path fragment of the training data -> the licence its photos carry
    "celeba": "CelebA terms (non-commercial research only)",
    "afhq": "AFHQ, CC BY-NC 4.0",
    "horse": "Weizmann Horse Database (research use only)",
}


@dataclass
class TrainState:
    """The loop's position, saved in every checkpoint."""

    step: int = 0  # optimiser steps done
    images_seen: int = 0
    seconds: float = 0.0  # training wall-clock time over all invocations

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class EMA:
    """Exponential moving average of the trainable weights (fused ``lerp`` on the device).

    The decay warms up as ``min(decay, (1 + t) / (10 + t))`` after t updates, so that a short run's average
    is not dominated by the initial weights.
    """

    def __init__(self, parameters: list[torch.nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = [p.detach().clone().float() for p in parameters]

    @torch.no_grad()
    def update(self, parameters: list[torch.nn.Parameter]) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in parameters], 1 - decay)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, parameters: list[torch.nn.Parameter]) -> None:
        for p, s in zip(parameters, self.shadow):
            p.copy_(s)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        self.shadow = [s.to(d.device) for s, d in zip(state["shadow"], self.shadow)]

    @contextlib.contextmanager
    def applied(self, parameters: list[torch.nn.Parameter]):
        """Swap the EMA weights in for a while (sampling)."""
        saved = [p.detach().clone() for p in parameters]
        self.copy_to(parameters)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(parameters, saved):
                    p.copy_(s)


# ---------------------------------------------------------------------------------------------------
# Checkpoints.


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temp folders of an interrupted save excluded)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def save_checkpoint(accelerator, root: Path, step: int, keep_last: int) -> Path:
    """``save_state`` into a temp folder, then an atomic rename to ``step_NNNNNN``; prune to ``keep_last``."""
    final = root / f"{CHECKPOINT_PREFIX}{step:06d}"
    temp = root / f"{TEMP_PREFIX}{final.name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp), safe_serialization=True)
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


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the rows logged after ``step`` (they are logged again by the resumed run)."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(row + "\n" for row in rows))


# ---------------------------------------------------------------------------------------------------
# Model, samples, export.


def build_model(args: TrainingArguments) -> COATModel:
    """The model to train, in float32 (mixed precision autocasts): ``init_from`` (with architecture overrides that
    keep its weights; a float16 export is upcast) or a fresh preset."""
    if args.init_from:
        return COATModel.from_pretrained(args.init_from, dtype=torch.float32, **args.model_overrides)
    return COATModel(COATConfig.preset(args.model_preset, **args.model_overrides))


def set_trainable(model: COATModel, train_modules: str) -> list[torch.nn.Parameter]:
    """``all`` trains E, E_mod and D; ``encoders`` freezes the decoder D (the paper's setting)."""
    model.requires_grad_(True)
    if train_modules == "encoders":
        model.decoder.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def sample_grid(model: COATModel, content: Tensor, style: Tensor, ns: list[int], seed: int) -> Tensor:
    """One row per pair: content | style | transfer at each n. (3, H, W) in [0, 1]."""
    from torchvision.utils import make_grid

    model.eval()
    columns = [content, style]
    for n in ns:
        columns.append(model(content, style, n=n, generator=torch.Generator().manual_seed(seed)).images)
    model.train()
    tiles = torch.stack(columns, dim=1).flatten(0, 1)  # (B·(2+len(ns)), 3, S, S), row-major
    return make_grid(tiles.float().clamp(-1, 1).add(1).div(2).cpu(), nrow=len(columns), padding=2)


def data_licence(config: RunConfig) -> str:
    """The licence line of the photos actually used."""
    source = (config.data.data_dir or config.data.dataset_name or "").lower()
    found = [text for key, text in DATA_LICENCES.items() if key in source]
    if found:
        return "The weights were fitted to photos under " + "; ".join(found) + ": the model inherits these terms."
    return "The weights were fitted to the photos named above: the model inherits their licence terms."


def structure_description(config: COATConfig, objective: ObjectiveConfig) -> str:
    """The model card's words for the structure code (``config.structure_channels``) and how it was trained."""
    if not config.structure_channels:
        return "none (the paper)"
    sizes = " and ".join(f"{config.feature_sizes[l]}x{config.feature_sizes[l]}" for l in config.structure_scales)
    view = ", trained on the content under other colours" if objective.structure_view else ""
    return f"{config.structure_channels} channels from E's {sizes} maps{view}"


MODEL_CARD = """---
license: other
library_name: coat-hf
pipeline_tag: image-to-image
tags:
- coat
- appearance-transfer
- image-to-image
- stylegan2
---

# COAT appearance transfer ({name}, {image_size} px)

A COAT model (correspondence-driven object appearance transfer, Jeon et al., BMVC 2022) trained with
`coat-hf`: it re-renders a content photo's object with the appearance of a style photo of the same
category.

```python
from coat_hf import COATModel
model = COATModel.from_pretrained("{folder}")
```

## Training

| | |
| --- | --- |
| data | `{data}` ({num_images} images) |
| steps | {step} (global batch {global_batch}, {num_processes} process(es)) |
| images seen | {images_seen} |
| training time | {minutes:.1f} min on {device} |
| objective | L_rec (λ_mse {lambda_mse}, λ_lpips {lambda_lpips}, LPIPS {lpips_net}) + {reg_alpha}·L_reg + {ccl_beta}·L_CCL + {transfer_weight}·L_transfer + {color_weight}·L_color + {local_color_weight}·L_local (per sample ((K − n)/K)^{color_falloff}) + {structure_weight}·L_struct |
| alignment | {alignment}; E_mod pyramid: {pyramid}; structure code: {structure} |
| trained modules | {train_modules} |
| weights | EMA (decay {ema_decay}), {dtype} |
| final losses | {losses} |

## Licence

{licence}
"""


def save_model(model: COATModel, directory: Path, dtype: str, max_shard_size: str | None = None) -> None:
    """``save_pretrained`` in ``dtype`` (cast in place; sharded when ``max_shard_size`` is given) with the pipeline's
    image processor: a folder the pipeline, the app and ``from_pretrained`` load."""
    model.to(getattr(torch, dtype))
    model.save_pretrained(directory, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    COATImageProcessor.from_model_config(model.config).save_pretrained(directory)


def export_model(model: COATModel, ema: EMA, directory: Path, config: RunConfig, state: TrainState,
                 num_images: int, num_processes: int, losses: dict[str, float], device: str) -> None:
    """``save_pretrained`` of the EMA weights (sharded when asked), the pipeline's image processor and a model
    card (README.md)."""
    args = config.training
    exported = copy.deepcopy(model).float()
    ema.copy_to([p for p in exported.parameters() if p.requires_grad])
    save_model(exported, directory, args.export_dtype, args.export_max_shard_size)
    mc, oc = exported.config, config.objective
    (directory / "README.md").write_text(MODEL_CARD.format(
        name=Path(args.init_from).name if args.init_from else args.model_preset, image_size=mc.image_size,
        folder=directory, data=config.data.data_dir or config.data.dataset_name, num_images=num_images,
        step=state.step, global_batch=args.batch_size * num_processes * args.gradient_accumulation_steps,
        num_processes=num_processes, images_seen=state.images_seen, minutes=state.seconds / 60, device=device,
        lambda_mse=oc.lambda_mse, lambda_lpips=oc.lambda_lpips, lpips_net=oc.lpips_net, reg_alpha=oc.reg_alpha,
        ccl_beta=oc.ccl_beta, transfer_weight=oc.transfer_weight, color_weight=oc.color_weight,
        color_falloff=oc.color_falloff, local_color_weight=oc.local_color_weight, structure_weight=oc.structure_weight,
        alignment=mc.alignment, pyramid=mc.modulation_pyramid, structure=structure_description(mc, oc),
        train_modules=args.train_modules, ema_decay=ema.decay,
        dtype=args.export_dtype, losses=", ".join(f"{k} {v:.4f}" for k, v in losses.items()) or "n/a",
        licence=data_licence(config),
    ))


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory: CUDA allocations on a GPU, resident set size on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ---------------------------------------------------------------------------------------------------
# The loop.


class Trainer:
    """One run: ``Trainer(config).train()`` (or ``.export()``)."""

    def __init__(self, config: RunConfig) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        self.config = config
        args = config.training
        self.output_dir = Path(args.output_dir)
        self.accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=args.mixed_precision,
            log_with=None if args.report_to == "none" or args.export is not None else args.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / "logs")),
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        )
        acc = self.accelerator
        logging.basicConfig(level=logging.INFO if acc.is_main_process else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("accelerate").setLevel(logging.WARNING)
        if acc.device.type == "cpu":
            torch.set_num_threads(args.torch_threads or max(1, (os.cpu_count() or 1) // acc.num_processes))
        torch.backends.cudnn.benchmark = args.cudnn_benchmark  # the step's shapes never change
        torch.manual_seed(args.seed)
        self.export_only = args.export is not None

        self.data = None
        self.num_images = 0
        if not self.export_only:  # bad data fails here, before the model is built
            source = PhotoSource(config.data, self._model_config())
            self.data = TrainingData(source, config.data, args.seed, args.batch_size, acc.device, acc.num_processes,
                                     acc.process_index, args.gradient_accumulation_steps)
            self.num_images = len(self.data.index)

        # On the device before anything holds its parameters: a move after the optimiser and the EMA took
        # them may replace the Parameter objects (CUDA), leaving the EMA on the initial weights.
        self.model = build_model(args).to(acc.device)
        self.trainable = set_trainable(self.model, args.train_modules)
        # An export only loads the checkpoint: it needs the objective's layout, not its LPIPS network.
        objective_config = dataclasses.replace(config.objective, lambda_lpips=0.0) if self.export_only \
            else config.objective
        self.objective = COATTrainingObjective(self.model, objective_config)
        global_batch = args.batch_size * acc.num_processes * args.gradient_accumulation_steps
        lr = args.learning_rate * (math.sqrt(global_batch / args.base_batch_size) if args.scale_lr else 1.0)
        self.optimizer = torch.optim.AdamW(self.trainable, lr=lr, betas=(args.adam_beta1, args.adam_beta2),
                                           weight_decay=args.weight_decay, fused=acc.device.type == "cuda")
        from transformers import get_scheduler

        # A prepared scheduler steps once per process per optimiser step.
        self.scheduler = get_scheduler(args.lr_scheduler, self.optimizer,
                                       num_warmup_steps=args.lr_warmup_steps * acc.num_processes,
                                       num_training_steps=args.max_steps * acc.num_processes)
        self.ema = EMA(self.trainable, args.ema_decay)
        self.adversary = None
        if args.adversarial and not self.export_only:
            discriminator = Discriminator(self.model.config.image_size, args.disc_max_channels)
            disc_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=args.disc_learning_rate or lr,
                                               betas=(args.adam_beta1, args.adam_beta2))
            self.adversary = Adversary(*acc.prepare(discriminator, disc_optimizer), discriminator)
        self.state = TrainState()
        self.objective, self.optimizer, self.scheduler = acc.prepare(self.objective, self.optimizer, self.scheduler)
        acc.register_for_checkpointing(self.ema, self.state)
        self.checkpoint_root = self.output_dir / "checkpoints"
        self.compile_cache_loaded = (bool(args.compile_cache) and not self.export_only
                                     and load_compile_cache(args.compile_cache))
        if args.compile and args.compile_scope == "objective":  # one graph (tests: no graph break), fwd and bwd
            self.objective.compile(mode=args.compile_mode)
        elif args.compile:  # each network on its own (measured on an H100); the alignments and L_CCL stay eager
            for network in (self.model.encoder, self.model.modulation_encoder, self.model.decoder,
                            acc.unwrap_model(self.objective).lpips):
                if network is not None:
                    network.compile(mode=args.compile_mode)

    def _model_config(self) -> COATConfig:
        """The architecture the run trains (checked before any weight is allocated)."""
        args = self.config.training
        if args.init_from:
            return COATConfig.from_pretrained(args.init_from, **args.model_overrides)
        return COATConfig.preset(args.model_preset, **args.model_overrides)

    # -----------------------------------------------------------------------------------------------

    def _resume(self) -> Path | None:
        args = self.config.training
        resume = args.resume or ("latest" if self.export_only else None)
        path = resolve_resume(resume, self.checkpoint_root)
        if path is not None:
            self.accelerator.load_state(str(path))  # the EMA's load_state_dict keeps its tensors' device
            logger.info("resumed from %s at step %d", path, self.state.step)
        elif self.export_only:
            raise ValueError(f"--export: no checkpoint to export in {self.checkpoint_root}")
        elif args.resume:
            logger.info("--resume %s: no checkpoint in %s yet, starting from step 0", args.resume, self.checkpoint_root)
        return path

    def export(self, losses: dict[str, float] | None = None) -> Path:
        """Write the EMA model to ``--export`` (or ``output_dir/final``); returns the folder."""
        args = self.config.training
        directory = Path(args.export) if args.export else self.output_dir / "final"
        if self.accelerator.is_main_process:
            export_model(self.model, self.ema, directory, self.config, self.state, self.num_images,
                         self.accelerator.num_processes, losses or {}, self._device_name())
            logger.info("exported the EMA model to %s", directory)
        return directory

    def _device_name(self) -> str:
        device = self.accelerator.device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
        return f"{self.accelerator.num_processes} x {name}"

    def train_step(self, step: int) -> dict[str, Tensor]:
        """One optimiser step (all its micro-batches); returns the detached scalar parts of the last one (the
        objective's loss and each term it computed, the adversary's when on)."""
        args, acc = self.config.training, self.accelerator
        models = (self.objective,) if self.adversary is None else (self.objective, self.adversary.discriminator)
        for micro in range(args.gradient_accumulation_steps):
            batch = self.data.batch(step, micro)
            content, style = batch.content, batch.style
            if args.channels_last:  # activations follow their input's layout through the convolutions
                content, style = (x.contiguous(memory_format=torch.channels_last) for x in (content, style))
            with acc.accumulate(*models):
                out = self.objective(content, style, batch.keys, batch.mask)
                loss = out["loss"]
                if self.adversary is not None:
                    fake = torch.cat([out["reconstruction"], out["transfer_images"]])  # (2B, 3, S, S)
                    with acc.autocast():
                        out["adv_g"] = self.adversary.generator_loss(fake)
                    loss = loss + args.adv_weight * out["adv_g"]
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(self.trainable, args.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.adversary is not None:
                    r1_weight = args.r1_gamma * args.r1_every if step % args.r1_every == 0 else 0.0
                    out.update(self.adversary.step(acc, batch.content, fake.detach(), r1_weight))
        self.ema.update(self.trainable)
        # Copies: a CUDA-graphed step (--compile_mode reduce-overhead) overwrites its outputs at the next replay.
        return {key: value.detach().float().clone() for key, value in out.items() if value.ndim == 0}

    def _sample(self, fixed: tuple[Tensor, Tensor], step: int) -> None:
        args = self.config.training
        k = self.model.config.num_modulation_layers
        ns = args.sample_n or sorted({0, self.model.config.default_n, max(k - 2, 0)})
        with self.ema.applied(self.trainable), self.accelerator.autocast():
            grid = sample_grid(self.model, *fixed, ns, args.seed)
        from torchvision.utils import save_image

        (self.output_dir / "samples").mkdir(exist_ok=True)
        save_image(grid, self.output_dir / "samples" / f"step_{step:06d}.png")
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("samples/content|style|" + ",".join(f"n={n}" for n in ns), grid, step)

    def train(self) -> Path:
        """Run (or resume) training up to ``max_steps`` or ``max_minutes``, then export; returns the export folder."""
        args, acc = self.config.training, self.accelerator
        self._resume()
        if self.export_only:
            path = self.export()
            acc.end_training()
            return path
        metrics = self.output_dir / "metrics.jsonl"
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
            for temp in self.checkpoint_root.glob(f"{TEMP_PREFIX}*"):  # left by a kill during a save
                shutil.rmtree(temp, ignore_errors=True)
            truncate_metrics(metrics, self.state.step)
            if acc.log_with:
                acc.init_trackers("coat", config={k: str(v) for k, v in self.config.to_dict().items()})
        fixed = None
        if acc.is_main_process:
            first = self.data.batch(0)
            fixed = (first.content[: args.num_samples], first.style[: args.num_samples])

        global_batch = args.batch_size * acc.num_processes * args.gradient_accumulation_steps
        started = segment_start = time.perf_counter()  # this invocation; the time not yet in state.seconds
        window_start, window_steps = started, 0
        sums: dict[str, Tensor] = {}
        losses: dict[str, float] = {}  # the last logged window's mean loss parts, for the model card
        self.objective.train()
        cache_pending = bool(args.compile_cache) and acc.is_main_process
        while self.state.step < args.max_steps:
            parts = self.train_step(self.state.step)
            if cache_pending:  # the first step compiled the forward and the backward
                save_compile_cache(args.compile_cache)
                cache_pending = False
            for key, value in parts.items():
                sums[key] = sums[key] + value if key in sums else value
            self.state.step += 1
            self.state.images_seen += global_batch
            window_steps += 1
            step = self.state.step
            out_of_time = args.max_minutes is not None and time.perf_counter() - started > 60 * args.max_minutes
            last = step == args.max_steps or out_of_time
            if step % args.log_every == 0 or last:
                losses = {k: acc.reduce(v / window_steps, "mean").item() for k, v in sums.items()}  # one sync
                now = time.perf_counter()
                memory = torch.tensor(peak_memory_mb(acc.device), device=acc.device)
                last_logs = {**losses, "lr": self.scheduler.get_last_lr()[0],
                             "images_per_s": window_steps * global_batch / (now - window_start),
                             "skipped_images": self.data.skipped, "peak_memory_mb": acc.reduce(memory, "max").item()}
                acc.log(last_logs, step=step)
                if acc.is_main_process:
                    with open(metrics, "a") as handle:
                        handle.write(json.dumps({"step": step, "num_processes": acc.num_processes, **last_logs}) + "\n")
                    logger.info("step %d/%d loss %.4f, %.1f images/s", step, args.max_steps, losses["loss"],
                                last_logs["images_per_s"])
                sums, window_start, window_steps = {}, now, 0
            if fixed is not None and (step % args.sample_every == 0 or last):
                self._sample(fixed, step)
            if step % args.checkpoint_every == 0 or last:
                self.state.seconds += time.perf_counter() - segment_start
                save_checkpoint(acc, self.checkpoint_root, step, args.keep_last)
                segment_start = time.perf_counter()
            if out_of_time:
                logger.info("--max_minutes %s spent at step %d", args.max_minutes, step)
                break
        path = self.export(losses)
        acc.end_training()
        return path
