"""The lent-GPU helpers in ``benchmarks/device``: what travels to the machine, and the index restored after."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CAT_WEIGHTS = "coat_hf/pretrained/coat-afhq-cat-128/model-00001-of-00002.safetensors"


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and the project's checkout")
    subprocess.run(["git", "clone", "-q", "--local", str(REPO), str(tmp_path / "repo")], check=True)
    return tmp_path / "repo"


def _travel(clone: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "benchmarks/device/travel.sh", *args], cwd=clone, capture_output=True, text=True)


def _git(clone: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=clone, capture_output=True, text=True, check=True).stdout


def test_leave_untracks_a_model_until_restore(clone: Path):
    before = float(_travel(clone, "size").stdout.split()[0])
    left = _travel(clone, "leave", "coat-afhq-cat-128")
    assert left.returncode == 0, left.stderr
    assert float(left.stdout.split()[0]) < before - 15  # 21 MiB of weights stay home
    assert CAT_WEIGHTS not in _git(clone, "ls-files") and (clone / CAT_WEIGHTS).exists()
    assert "??" not in _git(clone, "status", "--porcelain")  # excluded, so not copied as untracked files either
    restored = _travel(clone, "restore")
    assert restored.returncode == 0, restored.stderr
    assert CAT_WEIGHTS in _git(clone, "ls-files") and _git(clone, "status", "--porcelain") == ""
    assert "safetensors" not in (clone / ".git/info/exclude").read_text()


def test_carried_paths_add_to_the_size(clone: Path):
    (clone / ".gl" / "extra").mkdir(parents=True)  # git-ignored: travels only when carried
    (clone / ".gl" / "extra" / "blob.bin").write_bytes(bytes(3 << 20))
    with_extra = float(_travel(clone, "size", ".gl/extra").stdout.split()[0])
    assert with_extra - float(_travel(clone, "size").stdout.split()[0]) == pytest.approx(3.0, abs=0.2)


def test_unknown_models_and_commands_are_refused(clone: Path):
    refused = _travel(clone, "leave", "coat-nope")
    assert refused.returncode == 2 and "no model folder coat_hf/pretrained/coat-nope" in refused.stderr
    assert _travel(clone, "pack").returncode == 2
