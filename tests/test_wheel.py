"""The built wheel works on its own: installed into a fresh virtual environment outside the
source tree, its console script finds the shipped recipes, accelerate configs and example.

The new environment gets the wheel alone (``--no-deps``); its dependencies are the ones of the
environment running the tests, reached through a path line in a ``.pth`` file. Such a line adds
a folder to ``sys.path`` without processing the ``.pth`` files inside it, so the editable
install of the source tree stays invisible and every ``radixpert`` import comes from the wheel.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SOURCE = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(bin folder of a fresh venv holding only the wheel, its environment)."""
    top = tmp_path_factory.mktemp("wheel")
    tree = top / "source"  # a copy, so that building leaves nothing in the checkout
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(SOURCE / name, tree / name)
    shutil.copytree(SOURCE / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(top / "dist"),
          str(tree)], top, env)  # fmt: skip
    (wheel,) = (top / "dist").glob("radixpert-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "radixpert/configs/recipes/msa_lora.yaml" in names
    assert "radixpert/configs/accelerate/ddp.yaml" in names
    assert "radixpert/examples/references.json" in names
    venv = top / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], top, env)
    python = venv / "bin" / "python"
    _run([*pip, "--python", str(python), "install", "-q", "--no-deps", str(wheel)], top, env)
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                   top, env).strip()  # fmt: skip
    Path(purelib, "_deps_of_the_test_environment.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n", encoding="utf-8"
    )
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv / "bin", env


def test_the_package_comes_from_the_wheel(installed, tmp_path: Path) -> None:
    bin_dir, env = installed
    where = _run([str(bin_dir / "python"), "-c", "import radixpert; print(radixpert.__file__)"],
                 tmp_path, env)  # fmt: skip
    assert Path(where.strip()).is_relative_to(bin_dir.parent)
    assert "train" in _run([str(bin_dir / "radixpert"), "--help"], tmp_path, env)


def test_shipped_recipe_dry_run_from_the_wheel(installed, tmp_path: Path) -> None:
    bin_dir, env = installed
    from radixpert.data.phantoms import generate_phantoms

    data = tmp_path / "data"
    generate_phantoms(4, data / "phantoms", size=64)  # the plan reads the recipe's data files
    text = (data / "phantoms" / "studies.jsonl").read_text(encoding="utf-8")
    for name in ("roco_v2", "padchest"):
        (data / name).mkdir(parents=True)
        (data / name / "studies.jsonl").write_text(
            text.replace('"path": "images/', '"path": "../phantoms/images/'), encoding="utf-8"
        )
    out = _run([str(bin_dir / "radixpert"), "train", "msa_lora", "--dry-run", "--data-root",
                str(data)], tmp_path, env)  # fmt: skip
    assert "stage1" in out and "stage3" in out
    path = _run([str(bin_dir / "radixpert"), "config", "path", "accelerate/ddp"], tmp_path, env)
    assert Path(path.strip()).is_file() and Path(path.strip()).is_relative_to(bin_dir.parent)


def test_evaluate_the_shipped_example_from_the_wheel(installed, tmp_path: Path) -> None:
    bin_dir, env = installed
    examples = Path(
        _run([str(bin_dir / "python"), "-c", "import radixpert, pathlib; "
              "print(pathlib.Path(radixpert.__file__).parent / 'examples')"], tmp_path, env)
        .strip()
    )  # fmt: skip
    out = _run([str(bin_dir / "radixpert"), "evaluate", "-r", str(examples / "references.json"),
                "-c", str(examples / "candidates.json"), "-m", "bleu", "rouge-l", "-q",
                "-o", "results.json"], tmp_path, env)  # fmt: skip
    assert "rouge-l" in out and (tmp_path / "results.json").is_file()
