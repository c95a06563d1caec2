"""Bad input never crashes, never passes silently, never destroys data (CLI level).

Each case runs the real command line (`downstream.cli.main`) on a corpus built here
and asserts what a user sees: exit code 2, one line on stderr that names the file
or option, nothing written, nothing of theirs deleted, no staging files left.
Data-integrity cases live in tests/augment/test_integrity.py, generator and
checkpoint cases in tests/gan/test_bad_input.py.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from augment.phantoms.render import write_phantom
from augment.storage import remove_stale_staging, write_bytes_atomic
from downstream.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv) -> tuple[int, str]:
    """Exit code and stderr of one command (argparse's own exits included)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error:" in lines[0] and "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])


def leftovers(folder: Path) -> list[str]:
    """Staging names (``.NAME.tmp|partial|old-PID``) under ``folder``."""
    return sorted(p.name for p in folder.rglob(".*") if any(t in p.name for t in (".tmp-", ".partial-", ".old-")))


def dead_pid() -> int:
    """The PID of a process that has exited (as after a kill -9)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    # 6 patients of 4 slices: enough for a split, too few for a budget of 40.
    return write_phantom(tmp_path_factory.mktemp("bad") / "ds", "head-ich", 24, size=32, seed=0, slices_per_patient=4)


# ----------------------------------------------------------------- --overwrite


def test_overwrite_refuses_a_folder_lesionforge_did_not_write(tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("do not lose me")
    code, err = run_cli(capsys, "data", "phantom", "--out", user, "--n", 4, "--size", 32, "--overwrite")
    assert_one_line_error(code, err, str(user), "not a lesionforge dataset")
    assert (user / "notes.txt").read_text() == "do not lose me"
    assert leftovers(tmp_path) == []


def test_overwrite_refuses_a_file_and_leaves_no_orphan(tmp_path, capsys):
    target = tmp_path / "report.txt"
    target.write_text("keep")
    code, err = run_cli(capsys, "data", "phantom", "--out", target, "--n", 4, "--size", 32, "--overwrite")
    assert_one_line_error(code, err, str(target), "not a folder")
    assert target.read_text() == "keep"
    assert leftovers(tmp_path) == []


def test_import_never_deletes_its_own_source(tmp_path, dataset, capsys):
    parent = tmp_path / "study"
    (parent / "scans").mkdir(parents=True)
    for sub in ("img", "mask"):
        (parent / "scans" / sub).mkdir()
        for f in sorted((dataset / sub).iterdir())[:2]:
            (parent / "scans" / sub / f.name).write_bytes(f.read_bytes())
    before = sorted(p.name for p in (parent / "scans").rglob("*"))
    code, err = run_cli(capsys, "data", "import", parent / "scans" / "img", "--format", "npy",
                        "--mask-dir", parent / "scans" / "mask", "--out", parent, "--overwrite")
    assert_one_line_error(code, err, str(parent), "holds the input")
    assert sorted(p.name for p in (parent / "scans").rglob("*")) == before


def test_overwrite_replaces_a_dataset_lesionforge_wrote(tmp_path, capsys):
    out = tmp_path / "ph"
    write_phantom(out, "head-ich", 4, size=32, seed=0)
    code, err = run_cli(capsys, "data", "phantom", "--out", out, "--n", 6, "--size", 32, "--overwrite")
    assert code == 0, err
    assert len(list((out / "img").iterdir())) == 6
    assert leftovers(tmp_path) == []


def test_existing_output_without_overwrite_is_refused(tmp_path, capsys):
    out = write_phantom(tmp_path / "ph", "head-ich", 4, size=32, seed=0)
    code, err = run_cli(capsys, "data", "phantom", "--out", out, "--n", 4, "--size", 32)
    assert_one_line_error(code, err, str(out), "--overwrite")


# --------------------------------------------------------------- interrupted writes


def test_stale_staging_of_dead_processes_is_removed_by_the_next_write(tmp_path, capsys):
    out = tmp_path / "ph"
    gone, alive = dead_pid(), os.getppid()
    (tmp_path / f".ph.partial-{gone}" / "img").mkdir(parents=True)  # kill -9 while writing
    (tmp_path / f".ph.old-{gone}").mkdir()  # kill -9 between the two renames
    (tmp_path / f".ph.partial-{alive}").mkdir()  # another writer, still at work
    (tmp_path / f".other.partial-{gone}").mkdir()  # not ours to judge
    code, err = run_cli(capsys, "data", "phantom", "--out", out, "--n", 4, "--size", 32)
    assert code == 0, err
    assert leftovers(tmp_path) == sorted([f".ph.partial-{alive}", f".other.partial-{gone}"])


def test_stale_temporary_file_is_removed_and_live_one_kept(tmp_path):
    target = tmp_path / "last.pt"
    gone, alive = dead_pid(), os.getppid()
    (tmp_path / f".last.pt.tmp-{gone}").write_bytes(b"half a checkpoint")
    (tmp_path / f".last.pt.tmp-{alive}").write_bytes(b"being written")
    write_bytes_atomic(target, b"complete")
    assert target.read_bytes() == b"complete"
    assert leftovers(tmp_path) == [f".last.pt.tmp-{alive}"]
    assert remove_stale_staging(target) == []


def test_unwritable_output_is_one_line(tmp_path, capsys):
    code, err = run_cli(capsys, "data", "phantom", "--out", "/proc/lesionforge-test", "--n", 4, "--size", 32)
    assert_one_line_error(code, err, "/proc/lesionforge-test", "cannot write")


# -------------------------------------------------------------- command-line options


@pytest.mark.parametrize(
    "argv, names",
    [
        (["data", "phantom", "--out", "{tmp}/x", "--n", "0"], ["number of slices", "0"]),
        (["data", "phantom", "--out", "{tmp}/x", "--n", "abc"], ["--n", "abc"]),
        (["data", "phantom", "--out", "{tmp}/x", "--size", "100000"], ["size", "100000"]),
        (["data", "import", "{ds}/img", "--format", "npy", "--mask-dir", "{ds}/mask", "--size", "100000",
          "--out", "{tmp}/x"], ["--size", "100000"]),
        (["augment", "preview", "--data", "{ds}", "--n-aug", "-1", "--out", "{tmp}/p.png"], ["--n-aug", "-1"]),
        (["augment", "preview", "--data", "{ds}", "--out", "{tmp}"], ["--out", "folder"]),
        (["augment", "preview", "--data", "{ds}", "--pipeline", "nonsense", "--out", "{tmp}/p.png"], ["nonsense"]),
        (["data", "info", "{tmp}/missing"], ["missing"]),
        (["compare", "{tmp}/missing.yaml"], ["missing.yaml"]),
        (["bogus"], ["bogus"]),
        (["data", "phantom", "--out", "{tmp}/x", "--seed", "-1"], ["--seed", "-1"]),
        (["data", "phantom", "--out", "{tmp}/x", "--seed", str(2**70)], ["--seed"]),
    ],
)
def test_bad_options_are_one_line(tmp_path, dataset, capsys, argv, names):
    argv = [a.format(tmp=tmp_path, ds=dataset) for a in argv]
    code, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *names)
    assert not (tmp_path / "x").exists() and not (tmp_path / "p.png").exists()
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ experiment configs

SMOKE = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())


def _set(cfg: dict, dotted: str, value) -> dict:
    cfg = copy.deepcopy(cfg)
    node = cfg
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return cfg


BAD_CONFIGS = [
    # (key, value, words the message must contain)
    ("tasks.segment.steps", "abc", ["tasks.segment.steps", "integer", "'abc'"]),
    ("tasks.segment.steps", -5, ["tasks.segment", "steps", ">= 1"]),
    ("tasks.segment.lr", "fast", ["tasks.segment.lr", "number", "'fast'"]),
    ("tasks.detect.levels", "abc", ["tasks.detect.levels", "list"]),
    ("tasks.segment.base", 2.5, ["tasks.segment.base", "integer"]),
    ("tasks.detect.cost_sensitive", "yes", ["tasks.detect.cost_sensitive", "true or false"]),
    ("tasks", ["segment"], ["tasks", "mapping"]),
    ("budgets", "abc", ["budgets", "list of integers"]),
    ("budgets", [-1], ["budgets", "1..2147483647"]),
    ("budgets", [0], ["budgets", "1..2147483647"]),
    ("budgets", [50], ["budget 50", "training patients"]),
    ("seeds", [0.5], ["seeds", "integers"]),
    ("split.fractions", [1, -0.5, 0.5], ["split.fractions", ">= 0"]),
    ("split.fractions", [0.5, 0.5], ["split.fractions", "3 values"]),
    ("split.fractions", [0.5, 0.5, 0], ["split.fractions", "test > 0"]),
    ("data.n", "many", ["data.n", "integer"]),
    ("data.phantom", "brain", ["data", "brain"]),
    ("data.size", 100000, ["data", "size"]),
    ("generators.pix2pix.steps", 0, ["generators.pix2pix.steps", ">= 1"]),
    ("generators.pix2pix.batch_size", "x", ["generators.pix2pix.batch_size", "integer"]),
    ("generators", {"stylegan": {"steps": 1}}, ["stylegan", "unknown generator"]),
    ("generators.pix2pix.config", {"ngf": "abc"}, ["generators.pix2pix.config: ngf", "integer"]),
    ("generators.pix2pix.config", {"nfg": 4}, ["generators.pix2pix.config", "unknown option", "nfg"]),
    ("strategies", {"name": "none"}, ["strategies", "list"]),
    ("strategies", [{"name": "none"}, {"name": "c", "augment": "nonsense"}], ["'c'", "nonsense"]),
    ("strategies", [{"name": "none"}, {"name": "p", "generators": ["pix2pix"], "ratio": "half"}],
     ["strategies[1].ratio", "number"]),
    ("quality", {"n": 8}, ["quality", "unknown option", "n"]),
    ("quality", {"fid_weights": "/nope.pth"}, ["quality.fid_weights", "no such file"]),
    ("tasks.segment.base", 0, ["tasks.segment", "base", ">= 1"]),
    ("tasks.segment.window", "sausage", ["tasks.segment", "window 'sausage'"]),
    ("seeds", [2**70], ["seeds", "0..2147483647"]),
    ("budgets", [2, 2], ["budgets", "repeat"]),
    ("split.fractions", [0.5, 0.1, float("nan")], ["split.fractions", "finite"]),
    ("split.fractions", [float("inf"), 0.1, 0.3], ["split.fractions", "finite"]),
    ("tasks.detect.rpn_fg_iou_thresh", 2.0, ["tasks.detect", "rpn IoU thresholds"]),
    ("tasks.detect.representation_size", 0, ["tasks.detect", "representation_size"]),
    ("tasks.detect.box_batch_size_per_image", 0, ["tasks.detect", "box_batch_size_per_image"]),
    ("tasks.detect.alpha", -1.0, ["tasks.detect", "alpha"]),
    ("tasks.detect.levels", [7], ["tasks.detect", "levels [7]"]),
    ("tasks.detect.backbone_weights", "/nope.pt", ["tasks.detect", "/nope.pt"]),
    ("generators.pix2pix.config", {"ngf": 0}, ["generators.pix2pix.config", "ngf"]),
    ("name", ["a"], ["name", "string"]),
]


@pytest.mark.parametrize("key, value, words", BAD_CONFIGS, ids=[f"{k}={v!r}" for k, v, _ in BAD_CONFIGS])
def test_bad_experiment_config_is_refused_before_any_work(tmp_path, capsys, key, value, words):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_set(SMOKE, key, value)))
    out = tmp_path / "out"
    code, err = run_cli(capsys, "compare", path, "--out", out)
    assert_one_line_error(code, err, str(path), *words)
    assert not out.exists()  # nothing generated, nothing written


@pytest.mark.parametrize(
    "content, words",
    [
        (b"\x93NUMPY\x01\x00binary", ["not a text file"]),
        (b"- a\n- list\n", ["mapping"]),
        (b"data: [unclosed\n", ["invalid YAML"]),
        (b"", ["mapping"]),
    ],
)
def test_unreadable_experiment_files(tmp_path, capsys, content, words):
    path = tmp_path / "study.yaml"
    path.write_bytes(content)
    code, err = run_cli(capsys, "compare", path, "--out", tmp_path / "out")
    assert_one_line_error(code, err, str(path), *words)


def test_budget_larger_than_the_folders_training_patients(tmp_path, dataset, capsys):
    cfg = _set(SMOKE, "data", {"folder": str(dataset)})
    cfg["strategies"] = [{"name": "none"}]
    cfg["generators"] = {}
    cfg["budgets"] = [40]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    code, err = run_cli(capsys, "compare", path, "--out", out)
    assert_one_line_error(code, err, "budget 40", "training patients", str(dataset))
    assert not out.exists()


def test_compare_never_writes_into_a_folder_of_yours(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "report.md").write_text("my own notes")
    (out / "thesis.tex").write_text("do not touch")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(SMOKE))
    code, err = run_cli(capsys, "compare", path, "--out", out)
    assert_one_line_error(code, err, str(out), "not a compare output folder", "thesis.tex")
    assert (out / "report.md").read_text() == "my own notes"
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "thesis.tex"]
