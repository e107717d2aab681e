"""The coat-transfer command line: single pairs, CSV batches with a progress bar, and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import make_shape_image
from transformers import pipeline

from coat_hf import COATConfig, COATModel, pretrained
from coat_hf.cli import main
from coat_hf.pipeline_coat import TASK

TINY = ["--model", pretrained.UNTRAINED_MODEL]  # fixed 64 px model, whatever the default becomes


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    content, style = tmp_path / "content.png", tmp_path / "style.jpg"
    make_shape_image(64, 1).resize((48, 40)).save(content)
    make_shape_image(64, 2).resize((36, 52)).save(style)
    return content, style


def check_one_line_error(capsys, expected: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("coat-transfer: error:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err


def test_single_pair_with_correspondence_picture(pair, tmp_path, capsys):
    content, style = pair
    out, vis = tmp_path / "out" / "result.png", tmp_path / "matches.png"
    code = main([str(content), str(style), "-o", str(out), "--correspondence", str(vis), "--n", "3", "--seed", "1",
                 "--device", "cpu", *TINY])
    assert code == 0
    assert PIL.Image.open(out).size == (48, 40)  # the content's size
    assert PIL.Image.open(vis).height > 64
    assert f"wrote {out}" in capsys.readouterr().out
    # Seeded: the same command gives the same picture; --output-size model gives the model's square.
    again = tmp_path / "again.png"
    assert main([str(content), str(style), "-o", str(again), "--n", "3", "--seed", "1", *TINY]) == 0
    assert np.array_equal(np.asarray(PIL.Image.open(again)), np.asarray(PIL.Image.open(out)))
    assert main([str(content), str(style), "-o", str(again), "--output-size", "model", *TINY]) == 0
    assert PIL.Image.open(again).size == (64, 64)
    # --color-match: the pipeline's color_match=True.
    matched = tmp_path / "matched.png"
    assert main([str(content), str(style), "-o", str(matched), "--n", "3", "--seed", "1", "--color-match", *TINY]) == 0
    expected = pipeline(TASK, model=pretrained.resolve_model(pretrained.UNTRAINED_MODEL), device="cpu")(
        str(content), str(style), n=3, seed=1, color_match=True)["image"]
    assert np.array_equal(np.asarray(PIL.Image.open(matched)), np.asarray(expected))
    assert not np.array_equal(np.asarray(PIL.Image.open(matched)), np.asarray(PIL.Image.open(out)))


def test_pairs_csv_with_progress_bar(pair, tmp_path, capsys):
    content, style = pair
    folder = tmp_path / "list"
    (folder / "imgs").mkdir(parents=True)
    shutil.copy(content, folder / "imgs" / "a.png")
    rows = ["content,style,output", f"imgs/a.png,{style},first.png", f"{style},imgs/a.png,",
            "imgs/a.png,imgs/a.png,sub/third.jpg"]
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    out_dir = tmp_path / "results"
    argv = ["--pairs", str(folder / "pairs.csv"), "--out-dir", str(out_dir), "--batch-size", "2", "--seed", "0"]
    assert main([*argv, *TINY]) == 0
    assert PIL.Image.open(out_dir / "first.png").size == (48, 40)
    assert PIL.Image.open(out_dir / "0001_style_a.png").size == (36, 52)  # default name: row, content, style
    assert PIL.Image.open(out_dir / "sub" / "third.jpg").size == (48, 40)
    captured = capsys.readouterr()
    assert f"wrote 3 images to {out_dir}" in captured.out
    assert "3/3" in captured.err  # tqdm's progress bar


def test_pairs_csv_errors_name_the_file_and_line(pair, tmp_path, capsys):
    content, style = pair
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text(f"content,style\n{content},{style}\n{content},missing.png\n")
    assert main(["--pairs", str(csv_path), "--out-dir", str(tmp_path / "out"), *TINY]) == 2
    check_one_line_error(capsys, f"{csv_path} line 3: style: file not found")
    csv_path.write_text(f"image,reference\n{content},{style}\n")
    assert main(["--pairs", str(csv_path), "--out-dir", str(tmp_path / "out")]) == 2
    check_one_line_error(capsys, "needs the columns content,style[,output]")
    csv_path.write_text("content,style\n")
    assert main(["--pairs", str(csv_path), "--out-dir", str(tmp_path / "out")]) == 2
    check_one_line_error(capsys, "has no pairs")


def write_csv(path: Path, *rows: str, encoding: str = "utf-8") -> Path:
    path.write_text("\n".join(rows) + "\n", encoding=encoding)
    return path


def test_pairs_outputs_stay_in_out_dir_and_never_clash(pair, tmp_path, capsys):
    """Absolute or ``..`` outputs, a link out of --out-dir, two rows with one output, an output that is an
    input: refused before the model loads, with one line naming the CSV line, and nothing is written."""
    content, style = pair
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "elsewhere").symlink_to(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    csv_path = tmp_path / "pairs.csv"
    cases = [
        (f"{content},{style},{tmp_path / 'x.png'}", "must be a relative path inside --out-dir, without '..'"),
        (f"{content},{style},../x.png", "must be a relative path inside --out-dir, without '..'"),
        (f"{content},{style},sub/../../x.png", "must be a relative path inside --out-dir, without '..'"),
        (f"{content},{style},elsewhere/x.png", "leads out of --out-dir"),
        (f"{content},{style},a.png\n{style},{content},./a.png", "line 3: output"),
        (f"{content},{style},a.png\n{style},{out_dir / 'a.png'},b.png", "line 2: the output would overwrite an "
                                                                        "input image of line 3"),
    ]
    for row, message in cases:
        write_csv(csv_path, "content,style,output", row)
        assert main(["--pairs", str(csv_path), "--out-dir", str(out_dir), *TINY]) == 2
        check_one_line_error(capsys, message)
    write_csv(csv_path, "content,style,output", f"{content},{style},a.png", f"{style},{content},a.png")
    assert main(["--pairs", str(csv_path), "--out-dir", str(out_dir)]) == 2
    check_one_line_error(capsys, f"--pairs: {csv_path} line 3: output {str(out_dir / 'a.png')!r} is also line 2's")
    assert sorted(tmp_path.rglob("*")) == sorted([*before, csv_path])


def test_pairs_batch_goes_on_past_a_failed_row(pair, tmp_path, capsys):
    content, style = pair
    csv_path = write_csv(tmp_path / "pairs.csv", "content,style,output", f"{content},{style},1.png",
                         f"{content},missing.png,2.png", f"{style},{content},3.png", f"gone.png,{style},4.png")
    out_dir = tmp_path / "out"
    assert main(["--pairs", str(csv_path), "--out-dir", str(out_dir), "--batch-size", "8", *TINY]) == 2
    assert sorted(p.name for p in out_dir.iterdir()) == ["1.png", "3.png"]
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("coat-transfer: error:")]
    assert [e.split(": ", 2)[2].split(":")[0] for e in errors] == [f"{csv_path} line 3", f"{csv_path} line 5"]
    assert "style: file not found" in errors[0] and "content: file not found" in errors[1]
    assert f"wrote 2 images to {out_dir}; 2 of 4 pairs failed" in captured.out
    assert "Traceback" not in captured.err


def test_unreadable_csvs_give_one_line_naming_pairs(pair, tmp_path, capsys):
    content, style = pair
    csv_path = tmp_path / "pairs.csv"
    out = ["--out-dir", str(tmp_path / "out")]
    write_csv(csv_path, "content,style", f"{content},{style}", f"{content},{'x' * (129 * 1024)}")
    assert main(["--pairs", str(csv_path), *out]) == 2
    check_one_line_error(capsys, f"--pairs: {csv_path} line 3: field larger than field limit")
    write_csv(csv_path, "content,style", f"{content},{style}", "café.png,b.png", encoding="latin-1")
    assert main(["--pairs", str(csv_path), *out]) == 2
    check_one_line_error(capsys, f"--pairs: {csv_path} is not UTF-8 text")


@pytest.mark.parametrize("argv, message", [
    (["a.png", "b.png", "-o", "o.psd"], "--output: cannot write the image format '.psd'"),
    (["a.png", "b.png", "-o", "o.png", "--correspondence", "c.psd"], "--correspondence: cannot write"),
    (["a.png", "b.png", "-o", "./a.png"], "--output: a.png is the content image; refusing to overwrite"),
    (["a.png", "b.png", "-o", "o.png", "--correspondence", "b.png"], "--correspondence: b.png is the style image"),
    (["a.png", "b.png", "-o", "o.png", "--correspondence", "o.png"], "--correspondence: the same file as --output"),
    (["a.png", "b.png", "-o", "o.png", "--device", "meta"], "--device: 'meta' cannot run COAT"),
    pytest.param(["a.png", "b.png", "-o", "o.png", "--device", "mps"], "--device: MPS is not available",
                 marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")),
    pytest.param(["a.png", "b.png", "-o", "o.png", "--device", "cuda:99"], "--device: ",
                 marks=pytest.mark.skipif(torch.cuda.device_count() >= 100, reason="100 GPUs")),
])
def test_bad_outputs_and_devices_are_usage_errors(argv, message, capsys):
    """Checked before anything is read or written: an exit status of 2 and one error line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"coat-transfer: error: {message}" in err and "Traceback" not in err


def test_errors_print_one_line_and_exit_2(pair, tmp_path, capsys):
    content, style = pair
    out = str(tmp_path / "out.png")
    assert main([str(tmp_path / "missing.png"), str(style), "-o", out]) == 2
    check_one_line_error(capsys, "content: file not found")
    assert main([str(content), str(style), "-o", out, "--n", "99", *TINY]) == 2
    check_one_line_error(capsys, "n must be an integer in [0, 10], got 99")
    assert main([str(content), str(style), "-o", out, "--model", str(tmp_path)]) == 2  # a folder without a model
    check_one_line_error(capsys, "--model: cannot load")
    broken = tmp_path / "broken"
    COATModel(COATConfig.preset("tiny")).save_pretrained(broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "image_size": 65536}))
    assert main([str(content), str(style), "-o", out, "--model", str(broken)]) == 2
    check_one_line_error(capsys, "image_size must be a power of two from 8 to 1024, got 65536")
    assert main([str(content), str(style), "-o", out, "--seed", str(2**70), *TINY]) == 2
    check_one_line_error(capsys, f"seed must be an integer from -2**63 to 2**64 - 1, got {2**70}")
    assert main([str(content), str(style), "-o", out, "--alignment", "closest", *TINY]) == 2
    check_one_line_error(capsys, "alignment must be one of ('mutual', 'nearest', 'soft'), got 'closest'")
    assert not Path(out).exists()


@pytest.mark.parametrize("argv", [
    [],
    ["a.png"],
    ["a.png", "b.png"],
    ["a.png", "b.png", "-o", "out.unknown"],
    ["--pairs", "pairs.csv"],
    ["--pairs", "pairs.csv", "--out-dir", "d", "--correspondence", "v.png"],
    ["a.png", "b.png", "-o", "out.png", "--batch-size", "0"],
    ["a.png", "b.png", "-o", "out.png", "--device", "nonsense"],
])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_list_models(capsys):
    assert main(["--list-models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == pretrained.available_models()  # one line per model
    for line, name in zip(lines, pretrained.available_models()):
        assert line.split(maxsplit=1)[1].removeprefix("(default)").strip() == pretrained.describe_model(name)
    assert "aligned faces, 128 px" in next(line for line in lines if line.startswith("coat-celeba-128 (default)"))
    assert "untrained" in next(line for line in lines if line.startswith(pretrained.UNTRAINED_MODEL))


def test_installed_console_script_offline(pair, tmp_path):
    content, style = pair
    script = shutil.which("coat-transfer")
    command = [script] if script else [sys.executable, "-m", "coat_hf.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "c.png"
    done = subprocess.run([*command, str(content), str(style), "-o", str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert PIL.Image.open(out).size == (48, 40)
