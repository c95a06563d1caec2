"""What a `pip install` gets: the wheel ships the configs, and the commands that read
them (`compare NAME`, `demo`, `configs`, named pipelines) work from any directory."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from augment.classical.pipeline import DEFAULT_CONFIG, build_augmenter, load_pipelines
from augment.errors import ConfigError
from downstream.cli import main
from downstream.config import CONFIG_DIR, load_experiment, resolve_experiment, shipped_configs
from downstream.demo import DEMO_CONFIG

ROOT = Path(__file__).resolve().parent.parent
STUDIES = sorted(p.stem for p in (ROOT / "downstream" / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (nothing but what setuptools packs)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("augment", "gan", "downstream", "lesionforge"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(root / "dist")]
    if importlib.util.find_spec("setuptools.command.bdist_wheel") is not None:
        # setuptools >= 70.1 builds wheels itself: offline, with what is here. An older one
        # (a fresh venv's 65.5 lacks bdist_wheel) gets pip's isolated build from PyPI.
        cmd.append("--no-build-isolation")
    subprocess.run(cmd, cwd=src, check=True, capture_output=True, timeout=300)
    (path,) = (root / "dist").glob("lesionforge-*.whl")
    return path


def test_wheel_ships_every_config_as_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "augment/classical/pipelines.yaml" in names
    assert "lesionforge/__main__.py" in names  # python -m lesionforge, torchrun -m lesionforge
    shipped = {
        Path(n).stem for n in names if n.startswith("downstream/configs/") and n.endswith(".yaml")
    }
    assert shipped == set(STUDIES) and {"demo", "smoke", "ich_study"} <= shipped
    # No top-level `configs` package to clash with other projects in site-packages.
    assert not [n for n in names if n.startswith("configs/")]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "lesionforge = downstream.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_unpacked_wheel_runs_configs_and_resolves_studies_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    # PYTHONPATH comes before the editable install of this checkout, so the wheel's files run.
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}

    # One interpreter (imports dominate): the commands' output, then what the modules resolve.
    script = """
import contextlib, io, sys
import augment.classical.pipeline as c, downstream
from downstream.cli import main
from downstream.config import load_experiment
from downstream.demo import DEMO_CONFIG
for argv in (["configs", "list"], ["configs", "show", "smoke"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0, argv
    sys.stdout.write(out.getvalue() + "\\0")
print(downstream.__file__, load_experiment("smoke").name, load_experiment("ich_study").name,
      DEMO_CONFIG.is_file(), c.build_augmenter("geometry").name)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    listed, shown, resolved = done.stdout.split("\0")
    assert all(f"  {name} " in listed for name in [*STUDIES, "pipelines"]) and "geometry" in listed
    assert shown == (ROOT / "downstream/configs/smoke.yaml").read_text()
    where, *rest = resolved.split()
    assert Path(where).is_relative_to(site)
    assert rest == ["smoke", "ich_study", "True", "geometry"]


def test_compare_resolves_a_shipped_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert set(shipped_configs()) == set(STUDIES)
    assert (
        resolve_experiment("smoke") == resolve_experiment("smoke.yaml") == CONFIG_DIR / "smoke.yaml"
    )
    assert load_experiment("smoke").name == "smoke"
    assert DEMO_CONFIG.is_file() and load_experiment(DEMO_CONFIG).name == "demo"
    # A file in the working directory wins over the shipped config of that name.
    mine = yaml.safe_load((CONFIG_DIR / "smoke.yaml").read_text()) | {"name": "mine"}
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(mine))
    assert load_experiment("smoke.yaml").name == "mine"
    with pytest.raises(ConfigError, match=r"not a shipped config \(demo, .*smoke"):
        load_experiment("no_such_study")
    with pytest.raises(ConfigError, match="config file not found"):
        load_experiment("sub/smoke.yaml")  # a path is a path, never a shipped name


def test_every_named_pipeline_builds_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_CONFIG.parent == ROOT / "augment" / "classical"
    for name in load_pipelines(DEFAULT_CONFIG):
        assert build_augmenter(name).name == name


def test_cli_configs_list_show_and_version(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["configs", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in [*STUDIES, "pipelines"])
    assert main(["configs", "show", "ich_study"]) == 0
    shown = capsys.readouterr().out
    assert shown == (CONFIG_DIR / "ich_study.yaml").read_text()
    assert yaml.safe_load(shown)["name"] == "ich_study"
    # What a user does with it: copy, edit, run their own file.
    (tmp_path / "my_study.yaml").write_text(shown.replace("name: ich_study", "name: my_study"))
    assert load_experiment("my_study.yaml").name == "my_study"
    assert main(["configs", "show", "pipelines"]) == 0
    assert "geometry" in load_pipelines_text(capsys.readouterr().out)
    assert main(["configs", "show", "nope"]) == 2
    assert "not a shipped config" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert (
        exit_.value.code == 0
        and capsys.readouterr().out.strip() == f"lesionforge {version('lesionforge')}"
    )


def load_pipelines_text(text: str) -> dict:
    return yaml.safe_load(text)["pipelines"]
