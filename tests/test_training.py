"""The training program (training/train.py) on generated images: data, one and two processes, kill and resume."""

from __future__ import annotations

import itertools
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

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "training" / "train.py"
sys.path.insert(0, str(REPO / "training"))

from data import DataOptions, PairDataset, build_dataset  # noqa: E402
from train import TrainState, checkpoints, parse_config  # noqa: E402

from coat_hf import COATModel  # noqa: E402


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Two class folders of coloured shapes (varied sizes) and one corrupt file."""
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
    (root / "squares" / "squares_99.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


def _args(data_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--config", str(REPO / "training/configs/tiny.yaml"), "--data_dir", str(data_dir),
            "--output_dir", str(output_dir), "--report_to", "tensorboard", *extra]


def _run(args: list[str], launcher: list[str] | None = None, env: dict | None = None,
         timeout: float = 240) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable]) + [str(TRAIN), *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def _step_of(checkpoint: Path) -> int:
    state = TrainState()
    state.load_state_dict(torch.load(checkpoint / "custom_checkpoint_1.pkl", weights_only=False))
    return state.step


def test_pairs_skip_corrupt_images_and_follow_the_pair_rule(image_folder):
    dataset = build_dataset(DataOptions(data_dir=str(image_folder), image_size=32, seed=3))
    assert isinstance(dataset, PairDataset) and len(dataset) == 13
    items = [dataset[i] for i in range(len(dataset))]
    assert sum(int(it["skipped"]) for it in items) >= 1  # the corrupt file was hit and passed over
    for it in items:
        assert it["content"].shape == it["style"].shape == (3, 32, 32)
        assert it["content"].min() >= -1 and it["content"].max() <= 1
    # Same sample, same epoch: identical; another epoch: new draws.
    assert torch.equal(dataset[0]["style"], items[0]["style"]) and int(dataset[0]["seed"]) == int(items[0]["seed"])
    dataset.set_epoch(1)
    assert int(dataset[0]["seed"]) != int(items[0]["seed"])


def test_streaming_pairs_are_endless_and_resume_by_skipping(image_folder):
    options = DataOptions(data_dir=str(image_folder), image_size=32, streaming=True, shuffle_buffer=4)
    stream = build_dataset(options)
    first = list(itertools.islice(iter(stream), 30))  # more than the 12 readable images: a second pass
    assert len(first) == 30 and sum(int(it["skipped"]) for it in first) >= 1
    stream.set_epoch(0, skip=5)
    resumed = next(iter(stream))
    assert torch.equal(resumed["content"], first[5]["content"]) and int(resumed["seed"]) == int(first[5]["seed"])


def test_masks_follow_the_photo(tmp_path):
    images, masks = tmp_path / "horses" / "images", tmp_path / "horses" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for i in range(3):
        photo = Image.new("RGB", (80, 60), "white")
        ImageDraw.Draw(photo).rectangle((0, 0, 39, 59), fill="black")  # left half black
        photo.save(images / f"horse{i:03d}.jpg")
        mask = Image.new("L", (40, 30), 0)  # stored smaller than the photo
        ImageDraw.Draw(mask).rectangle((0, 0, 19, 29), fill=255)
        mask.save(masks / f"horse{i:03d}.png")
    dataset = build_dataset(DataOptions(data_dir=str(tmp_path / "horses"), image_size=32, hflip=True,
                                        exclude="horse002*"))
    assert len(dataset) == 2
    for i in range(len(dataset)):
        item = dataset[i]
        dark = item["content"].mean(0, keepdim=True) < 0  # (1, 32, 32): the black half, flipped or not
        assert item["mask"].shape == (1, 32, 32)
        assert (dark == item["mask"].bool()).float().mean() > 0.9


def test_config_overrides_are_typed(tmp_path):
    config = parse_config(_args(tmp_path, tmp_path / "out", "--max_steps", "7", "--hflip", "false",
                                "--ccl_scales", "[0, 2]", "--mask_dir", "none", "--export"))
    assert config.max_steps == 7 and config.hflip is False and config.ccl_scales == [0, 2]
    assert config.mask_dir is None and config.export == "" and config.model_preset == "tiny"
    with pytest.raises(ValueError, match="--hflip"):
        parse_config(_args(tmp_path, tmp_path / "out", "--hflip", "maybe"))


def test_kill_resume_and_export(image_folder, tmp_path):
    """kill -9 mid-run, ``--resume latest`` continues the step count; then the exported model loads."""
    out = tmp_path / "run"
    train_args = ["--batch_size", "2", "--checkpoint_every", "2", "--sample_every", "3",
                  "--adversarial", "true", "--r1_every", "2", "--disc_max_channels", "32"]
    command = [sys.executable, str(TRAIN), *_args(image_folder, out, "--max_steps", "100", *train_args)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 180
        while not checkpoints(out / "checkpoints") and time.time() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert checkpoints(out / "checkpoints"), "no checkpoint appeared"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    killed_at = _step_of(checkpoints(out / "checkpoints")[-1])
    assert 2 <= killed_at < 100
    max_steps = killed_at + 2
    result = _run(_args(image_folder, out, "--max_steps", str(max_steps), "--resume", "latest", *train_args))
    assert f"at step {killed_at}" in result.stderr
    assert _step_of(checkpoints(out / "checkpoints")[-1]) == max_steps
    assert len(checkpoints(out / "checkpoints")) == 2 and not list((out / "checkpoints").glob(".tmp_*"))
    logs = _metrics(out)
    assert [m["step"] for m in logs][-2:] == [killed_at + 1, max_steps]
    assert all(np.isfinite(m[k]) for m in logs for k in ("loss", "rec", "ccl", "adv_g", "adv_d"))
    assert any("r1" in m for m in logs) and any("r1" not in m for m in logs)  # lazy R1
    assert (out / "config.yaml").is_file() and list((out / "logs").rglob("events.out.tfevents*"))
    assert list((out / "samples").glob("step_*.png"))

    model = COATModel.from_pretrained(out / "final")
    card = (out / "final" / "README.md").read_text()
    assert "license: cc-by-nc-4.0" in card and f"| steps | {max_steps} " in card
    pixels = torch.zeros(1, 3, 32, 32)
    assert model(pixels, pixels).images.shape == (1, 3, 32, 32)


@pytest.mark.slow
def test_two_processes_match_one_process(image_folder, tmp_path):
    steps = ["--max_steps", "2", "--sample_every", "1000", "--lr_warmup_steps", "0"]
    _run(_args(image_folder, tmp_path / "one", "--batch_size", "4", *steps))
    _run(_args(image_folder, tmp_path / "two", "--batch_size", "2", *steps),
         launcher=[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"],
         env={"ACCELERATE_USE_CPU": "1"})
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [m["num_processes"] for m in one] == [1, 1] and [m["num_processes"] for m in two] == [2, 2]
    for a, b in zip(one, two):
        for key in ("loss", "rec", "reg", "ccl"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a, b)
