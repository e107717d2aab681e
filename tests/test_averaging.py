"""Weight averaging (``coat_hf.training.averaging``): model soups and WiSE-FT interpolation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coat_hf import COATConfig, COATModel
from coat_hf.training.averaging import average_weights, main


def make_model(seed: int, **overrides) -> COATModel:
    """A tiny model with its structure codes' output convs made non-zero, so they are not at their start."""
    torch.manual_seed(seed)
    model = COATModel(COATConfig.preset("tiny", **overrides)).eval()
    with torch.no_grad():
        for code in model.structure_codes or []:
            code.weight.normal_(0, 0.1)
            code.bias.normal_(0, 0.1)
    return model


def test_the_average_is_the_normalised_weighted_sum_of_every_weight():
    models = [make_model(seed) for seed in (1, 2, 3)]
    averaged = average_weights(models, [1.0, 1.0, 2.0])
    states = [m.state_dict() for m in models]
    for key, value in averaged.state_dict().items():
        if value.is_floating_point():
            expected = (states[0][key] + states[1][key] + 2 * states[2][key]) / 4
            torch.testing.assert_close(value, expected)
    assert all(torch.equal(m.state_dict()[k], s[k]) for m, s in zip(models, states) for k in s)  # left unchanged


def test_an_endpoint_weight_gives_that_model_and_its_transfers_back(image_pair):
    base, tuned = make_model(1), make_model(2)
    averaged = average_weights([base, tuned], [0.0, 1.0])
    content, style = image_pair
    with torch.no_grad():
        expected = tuned(content, style, n=2, generator=torch.Generator().manual_seed(0)).images
        got = averaged(content, style, n=2, generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(got, expected)


def test_a_model_without_a_structure_code_counts_it_at_its_start(image_pair):
    """WiSE-FT between a model and its fine-tune that added a second structure code: the output has both codes;
    the new code's output conv is scaled by the fine-tune's weight, its input conv is the fine-tune's."""
    base = make_model(1, structure_channels=4, structure_scale=[2])
    tuned = make_model(2, structure_channels=4, structure_scale=[2, 1])
    averaged = average_weights([base, tuned], [0.25, 0.75])
    assert averaged.config.structure_scales == [2, 1]
    new_code, tuned_code = averaged.structure_codes[1], tuned.structure_codes[1]
    torch.testing.assert_close(new_code.weight, 0.75 * tuned_code.weight)
    torch.testing.assert_close(new_code.bias, 0.75 * tuned_code.bias)
    torch.testing.assert_close(new_code.reduce.weight, tuned_code.reduce.weight)
    torch.testing.assert_close(averaged.structure_codes[0].weight,
                               0.25 * base.structure_codes[0].weight + 0.75 * tuned.structure_codes[0].weight)
    # all weight on the base: it transfers as the base does, its missing code silent
    content, style = image_pair
    with torch.no_grad():
        expected = base(content, style, n=2, generator=torch.Generator().manual_seed(0)).images
        got = average_weights([base, tuned], [1.0, 0.0])(content, style, n=2,
                                                         generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(("models", "weights", "message"), [
    (lambda: [make_model(1), make_model(2)], [1.0], "--weights: 2 models need 2 weights"),
    (lambda: [make_model(1), make_model(2)], [1.0, -0.5], "--weights must be non-negative"),
    (lambda: [make_model(1), make_model(2)], [0.0, 0.0], "--weights must be non-negative with a positive sum"),
    (lambda: [make_model(1), make_model(2, style_dim=32)], [1.0, 1.0], "differ in style_dim"),
    (lambda: [make_model(1, structure_channels=4, structure_scale=[1]),
              make_model(2, structure_channels=4, structure_scale=[2, 1])], [1.0, 1.0], "are not the first of"),
])
def test_bad_input_is_refused_in_one_line_naming_the_argument(models, weights, message):
    with pytest.raises(ValueError, match=message) as err:
        average_weights(models(), weights)
    assert "\n" not in str(err.value)


def test_the_command_saves_a_loadable_model_and_never_overwrites(tmp_path: Path, capsys):
    folders = []
    for seed in (1, 2):
        folder = tmp_path / f"m{seed}"
        make_model(seed).save_pretrained(folder)
        folders.append(str(folder))
    out = tmp_path / "soup"
    main(["--models", *folders, "--output_dir", str(out), "--export_dtype", "float32"])
    loaded = COATModel.from_pretrained(out)
    expected = average_weights([COATModel.from_pretrained(f) for f in folders], [1.0, 1.0])
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    assert (out / "preprocessor_config.json").is_file()
    assert "w = 0.5" in (out / "README.md").read_text()

    capsys.readouterr()
    before = sorted(p.name for p in out.iterdir())
    for argv, message in [
        (["--models", *folders, "--output_dir", str(out)], "--output_dir"),
        (["--models", *folders, "--weights", "1", "--output_dir", str(tmp_path / "x")], "--weights"),
        (["--models", folders[0], str(tmp_path / "absent"), "--output_dir", str(tmp_path / "y")], "--models"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().replace("\r", "\n").splitlines()[-1]  # after progress bars
        assert error.startswith(f"error: {message}")
    assert sorted(p.name for p in out.iterdir()) == before
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
