"""The package as a fresh process sees it: light imports, registration with transformers whatever the import
order, and a core install (no extras) that runs the pipeline and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "coat_hf" / "pretrained" / "coat-untrained-tiny"

# What only the extras ([app], [train], [eval]) install: inference (the pipeline, the command line) needs none.
EXTRAS = ("accelerate", "datasets", "diffusers", "gradio", "lpips", "tensorboard", "torchvision")
# Imported where used, not by `import coat_hf` (matplotlib draws the pipeline's correspondence pictures).
HEAVY = ("matplotlib", "torch", "transformers")


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter that imports coat_hf from this checkout; returns its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_is_light():
    out = run_python("""
        import sys
        import coat_hf
        import coat_hf.cli
        print(sorted(sys.modules))
    """)
    modules = {name.split(".")[0] for name in eval(out)}
    assert not modules & {*EXTRAS, *HEAVY}


def test_names_and_submodules_load_on_first_use():
    out = run_python("""
        import coat_hf
        print(coat_hf.pretrained.default_model(), coat_hf.COATConfig.model_type, coat_hf.image_io.IMAGE_EXTENSIONS[0])
        print(sorted(set(coat_hf.__all__) - set(dir(coat_hf))))
        try:
            coat_hf.no_such_thing
        except AttributeError as err:
            print(err)
    """)
    assert out.splitlines() == ["coat-celeba-128 coat .jpg", "[]", "module 'coat_hf' has no attribute 'no_such_thing'"]


def test_core_install_without_extras(tmp_path):
    """The extras' packages made unimportable (as when not installed): the pipeline, the command line and
    ``--list-models`` still work."""
    from conftest import make_shape_image

    content, style, out = tmp_path / "c.png", tmp_path / "s.png", tmp_path / "out.png"
    make_shape_image(64, 1).save(content)
    make_shape_image(64, 2).save(style)
    stdout = run_python(f"""
        import sys
        for name in {EXTRAS!r}:
            sys.modules[name] = None  # `import name` raises ImportError; find_spec says not installed
        from coat_hf.cli import main
        assert main(["--list-models"]) == 0
        assert main([{str(content)!r}, {str(style)!r}, "-o", {str(out)!r}, "--model", {str(TINY)!r},
                     "--correspondence", {str(tmp_path / "m.png")!r}]) == 0
    """)
    assert "coat-untrained-tiny" in stdout and out.is_file()


@pytest.mark.parametrize("first", [
    "import coat_hf",
    "from transformers import AutoConfig, AutoModel, pipeline; import coat_hf",
    "import coat_hf; from coat_hf import COATModel",
    "import coat_hf.pipeline_coat",
])
def test_registered_with_transformers_whatever_the_import_order(first):
    out = run_python(f"""
        {first}
        from transformers import AutoConfig, AutoModel, pipeline
        from transformers.pipelines import PIPELINE_REGISTRY
        print(type(AutoConfig.from_pretrained({str(TINY)!r})).__name__)
        print(type(AutoModel.from_pretrained({str(TINY)!r})).__name__)
        print(type(pipeline("coat-appearance-transfer", model={str(TINY)!r})).__name__)
    """)
    assert out.split() == ["COATConfig", "COATModel", "COATAppearanceTransferPipeline"]
