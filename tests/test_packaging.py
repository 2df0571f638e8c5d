"""`pip install .` gives a working `byol` command (pyproject.toml's [project.scripts]).

A fresh virtual environment would install gigabytes of torch, so this builds the wheel without its
dependencies and without network (`--no-build-isolation`: setuptools from requirements.txt), installs
it into a plain folder (`--target`), and runs the `byol` launcher pip wrote there. The launcher runs
this interpreter, so torch and the rest come from the test environment, and `byol` from the wheel.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the built wheel, the folder it is installed in); built from a copy, so the checkout gets no build/."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "byol", source / "byol", ignore=shutil.ignore_patterns("__pycache__"))
    wheels, site = work / "wheels", work / "site"
    build = subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("*.whl")
    install = subprocess.run(
        [*PIP, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return wheel, site


def start_byol(site: Path, *args: str, cwd: Path) -> subprocess.Popen:
    """Start the installed `byol` launcher; the package comes from `site` only (not from the checkout)."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.Popen(
        [str(site / "bin" / "byol"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd
    )


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


def test_the_package_pins_what_requirements_txt_pins():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    requirements = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert "torch==2.14.1" in dependencies and "torchvision==0.29.1" in dependencies
    assert set(dependencies) <= requirements, set(dependencies) - requirements
    # What requirements.txt adds is for testing, linting and building; a new library byol needs belongs in both files.
    extra = {re.split("[=<>]", line)[0] for line in requirements - set(dependencies)}
    assert extra == {"pytest", "playwright", "ruff", "setuptools"}, extra


def test_the_wheel_holds_only_byol_and_declares_the_command(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = configparser.ConfigParser()
        scripts.read_string(archive.read(entry_points).decode())
    assert dict(scripts["console_scripts"]) == {"byol": "byol.cli:script"}
    assert "byol/__main__.py" in names and "byol/cli.py" in names
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"byol"}


def test_the_installed_command_helps_and_lists(installed, tmp_path):
    _, site = installed
    empty = tmp_path / "runs"
    empty.mkdir()
    # Both at once: each spends its few seconds importing torch.
    helping = start_byol(site, "--help", cwd=tmp_path)
    listing = start_byol(site, "list", "--runs-dir", str(empty), cwd=tmp_path)
    (code, stdout, stderr), (list_code, list_stdout, list_stderr) = finish(helping), finish(listing)
    assert code == 0, stderr
    assert stdout.startswith("usage: byol ") and "train" in stdout and "list" in stdout
    assert list_code == 0, list_stderr
    assert list_stdout.strip() == f"No runs in {empty}."
