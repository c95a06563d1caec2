"""Bad input never crashes and never passes silently (issue #9, data integrity).

Every bad case is checked through the library (a typed error or a logged warning that
names the file) and through ``lesionforge`` (exit 2, one stderr line naming the file;
a warning becomes exit 2 under ``--strict``).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from augment.datasets import SliceDataset
from augment.errors import DataError
from augment.info import dataset_info
from augment.io import import_dataset
from augment.phantom import write_phantom
from augment.sample import Sample, read_dataset, write_dataset
from downstream.cli import main
from tests.augment.ct_builders import phantom_volume, write_dicom_series, write_nifti

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """A small head-ICH phantom dataset (classes 1..5), never modified: copy it first."""
    return write_phantom(tmp_path_factory.mktemp("ph") / "ph", "head-ich", 6, size=32, seed=0)


@pytest.fixture
def data(clean, tmp_path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / "data"))


def one_error_line(capsys, *words: str) -> str:
    """The single stderr line of a failed command; it names every one of ``words``."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("lesionforge: error:"), err
    for word in words:
        assert word in err[0], (word, err[0])
    return err[0]


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def manifest_lines(folder: Path) -> list[str]:
    return (folder / "manifest.jsonl").read_text().splitlines()


def set_manifest(folder: Path, lines: list[str]) -> None:
    (folder / "manifest.jsonl").write_text("".join(line + "\n" for line in lines))


# ------------------------------------------------------------------ clean data passes


def test_clean_phantom_passes_verify_and_strict(clean, caplog, capsys):
    assert main(["data", "info", str(clean), "--verify", "--strict"]) == 0
    assert "samples" in capsys.readouterr().out
    assert warnings_of(caplog) == []
    info = dataset_info(clean, verify=True, strict=True)
    assert info["problems"] == [] and info["n_samples"] == 6
    ds = SliceDataset(clean, verify=True, strict=True)
    assert len(ds.samples()) == 6


def test_clean_nifti_import_passes_strict(tmp_path, caplog):
    hu, labels = phantom_volume()
    write_nifti(tmp_path / "src" / "c1_ct.nii.gz", hu)
    write_nifti(tmp_path / "src" / "c1_label.nii.gz", labels)
    out = tmp_path / "out"
    args = ["data", "import", str(tmp_path / "src"), "--out", str(out), "--lesion-labels", "1"]
    assert main([*args, "--strict"]) == 0
    assert warnings_of(caplog) == []
    assert main(["data", "info", str(out), "--verify", "--strict"]) == 0


# ------------------------------------------------------------------------- sha256


def test_edited_file_fails_verify(data, capsys):
    rec = json.loads(manifest_lines(data)[2])
    path = data / rec["image"]
    image = np.load(path)
    np.save(path, image + 1.0)  # same shape and dtype: only the checksum can tell
    assert main(["data", "info", str(data)]) == 0  # not verified unless asked
    capsys.readouterr()
    assert main(["data", "info", str(data), "--verify"]) == 2
    one_error_line(capsys, path.name, "sha256")
    with pytest.raises(DataError, match=path.name):
        dataset_info(data, verify=True)
    with pytest.raises(DataError, match=path.name):
        SliceDataset(data, verify=True)
    assert len(SliceDataset(data)) == 6  # without verify the folder still opens


def test_verify_without_checksums_is_an_error(data, capsys):
    lines = [json.loads(x) for x in manifest_lines(data)]
    for rec in lines:
        rec.pop("sha256")
    set_manifest(data, [json.dumps(r) for r in lines])
    assert main(["data", "info", str(data), "--verify"]) == 2
    one_error_line(capsys, "manifest.jsonl", "no sha256")


# --------------------------------------------------------------------- manifest


def _first(edit):
    """A manifest edit applied to the first record (a JSON object)."""

    def apply(lines: list[str]) -> list[str]:
        rec = json.loads(lines[0])
        edit(rec)
        return [json.dumps(rec), *lines[1:]]

    return apply


def _boxes(boxes, labels):
    return _first(lambda rec: rec.update(boxes=boxes, labels=labels))


# (edit of the manifest lines, the line it breaks, words the error must contain)
MANIFEST_CASES = {
    "number": (lambda lines: [*lines, "5"], 7, "JSON object"),
    "array": (lambda lines: [*lines, "[1, 2]"], 7, "JSON object"),
    "duplicate": (lambda lines: [*lines, lines[3]], 7, "already used on line 4"),
    "inverted_box": (_boxes([[5, 5, 2, 2]], [1]), 1, "x1 < x2"),
    "three_numbers": (_boxes([[1, 2, 3]], [1]), 1, "4 finite numbers"),
    "nan_box": (_boxes([[1, 2, float("nan"), 4]], [1]), 1, "4 finite numbers"),
    "string_box": (_boxes([["1", 2, 3, 4]], [1]), 1, "4 finite numbers"),
    "boxes_not_list": (_boxes(7, [1]), 1, "'boxes' must be a list"),
    "unknown_class": (_boxes([[1, 2, 3, 4]], [9]), 1, "label 9 is not a class"),
    "label_zero": (_boxes([[1, 2, 3, 4]], [0]), 1, "not a class id >= 1"),
    "label_float": (_boxes([[1, 2, 3, 4]], [1.5]), 1, "not a class id >= 1"),
    "fewer_labels": (_boxes([[1, 2, 3, 4], [5, 6, 7, 8]], [1]), 1, "2 boxes but 1 labels"),
    "unsafe_id": (_first(lambda rec: rec.update(id="../evil")), 1, "safe file name"),
    "path_escapes": (_first(lambda rec: rec.update(image="../x.npy")), 1, "leaves the dataset"),
    "bad_sha_field": (_first(lambda rec: rec.update(sha256="abc")), 1, "'sha256'"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_bad_manifest_record_names_the_line(data, capsys, case):
    edit, line, words = MANIFEST_CASES[case]
    set_manifest(data, edit(manifest_lines(data)))
    where = f"manifest.jsonl:{line}"
    with pytest.raises(DataError, match=f"{where}: .*{re.escape(words)}"):
        read_dataset(data)
    with pytest.raises(DataError, match=where):
        SliceDataset(data)
    assert main(["data", "info", str(data)]) == 2
    one_error_line(capsys, where, words)


@pytest.mark.parametrize(
    "content, words",
    [
        ("[]", "expected a JSON object, got an array"),
        ('{"classes": ["IPH"]}', "'classes'"),
        ('{"classes": {"x": "IPH"}}', "class id 'x'"),
    ],
)
def test_bad_dataset_json_is_one_line(data, capsys, content, words):
    (data / "dataset.json").write_text(content)
    with pytest.raises(DataError, match="dataset.json"):
        read_dataset(data)
    assert main(["data", "info", str(data)]) == 2
    one_error_line(capsys, "dataset.json", words)


def test_mask_value_outside_the_classes(data, capsys):
    rec = json.loads(manifest_lines(data)[1])
    path = data / rec["mask"]
    mask = np.asarray(Image.open(path)).copy()
    mask[0, 0] = 9
    Image.fromarray(mask, mode="L").save(path)
    assert main(["data", "info", str(data)]) == 2
    one_error_line(capsys, path.name, "mask value 9")
    with pytest.raises(DataError, match=f"{path.name}: mask value 9"):
        SliceDataset(data)[1]


# ------------------------------------------------- HU audit of an existing dataset


def constant_and_hot_dataset(out: Path) -> Path:
    rng = np.random.default_rng(0)
    samples = [
        Sample(rng.normal(40, 5, (16, 16)), np.zeros((16, 16)), meta={"id": f"s{i}"})
        for i in range(3)
    ]
    samples[1] = Sample(np.zeros((16, 16)), np.zeros((16, 16)), meta={"id": "flat"})
    hot = rng.normal(40, 5, (16, 16))
    hot[3, 3] = 1e30
    samples.append(Sample(hot, np.zeros((16, 16)), meta={"id": "hot"}))
    return write_dataset(out, samples, kind="import")


def test_info_warns_on_constant_and_implausible_images_strict_fails(tmp_path, capsys, caplog):
    data = constant_and_hot_dataset(tmp_path / "d")
    assert main(["data", "info", str(data)]) == 0
    warned = warnings_of(caplog)
    assert len(warned) == 2
    assert any("img/flat.npy" in w and "constant" in w for w in warned)
    assert any("img/hot.npy" in w and "1e+30" in w and "[-2000, 4000]" in w for w in warned)
    capsys.readouterr()
    assert main(["data", "info", str(data), "--strict"]) == 2
    one_error_line(capsys, "img/hot.npy", "HU outside")
    with pytest.raises(DataError, match="img/hot.npy"):
        SliceDataset(data, strict=True)
    caplog.clear()
    assert len(SliceDataset(data, verify=True)) == 4  # verify alone: warnings
    assert len(warnings_of(caplog)) == 2


def test_many_bad_images_give_one_warning(tmp_path, caplog):
    flat = [
        Sample(np.full((8, 8), -1000.0), np.zeros((8, 8)), meta={"id": f"f{i}"}) for i in range(9)
    ]
    data = write_dataset(tmp_path / "d", flat, kind="import")
    info = dataset_info(data)
    assert info["problems"] == warnings_of(caplog)
    (line,) = info["problems"]
    assert line.startswith(
        f"{data}: 9 of 9 images are constant (img/f0.npy, img/f1.npy, img/f2.npy, ..."
    )


def test_warnings_reach_stderr_of_the_command(tmp_path):
    data = constant_and_hot_dataset(tmp_path / "d")
    run = subprocess.run(
        [sys.executable, "-m", "downstream.cli", "data", "info", str(data)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "WARNING" in run.stderr and "img/flat.npy" in run.stderr


# ------------------------------------------------------------------------ import


def nifti_case(src: Path, hu: np.ndarray, labels: np.ndarray, name: str = "c1") -> Path:
    write_nifti(src / f"{name}_label.nii.gz", labels)
    return write_nifti(src / f"{name}_ct.nii.gz", hu)


def check_import_warning(tmp_path, capsys, caplog, words: list[str], extra: list[str] = ()):
    """Import warns (naming the file), and fails with --strict, writing nothing."""
    src, out = tmp_path / "src", tmp_path / "out"
    args = ["data", "import", str(src), "--out", str(out), *extra]
    assert main(args) == 0
    warned = [w for w in warnings_of(caplog) if all(word in w for word in words)]
    assert len(warned) == 1, warnings_of(caplog)
    capsys.readouterr()
    caplog.clear()
    strict_out = tmp_path / "strict"
    assert main([*args[:4], str(strict_out), *extra, "--strict"]) == 2
    one_error_line(capsys, *words)
    assert not strict_out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".strict")]
    return out


def test_import_implausible_hu(tmp_path, capsys, caplog):
    hu, labels = phantom_volume()
    hu[10, 10, 4] = 1e30  # one voxel of slice 4
    nifti_case(tmp_path / "src", hu, labels)
    out = check_import_warning(
        tmp_path, capsys, caplog, ["c1_ct.nii.gz", "1 of 6 slices has HU outside", "slice 4"]
    )
    with pytest.raises(DataError, match="HU outside"):
        import_dataset(tmp_path / "src", tmp_path / "lib", strict=True)
    # the imported folder itself is then flagged by `data info`, naming the file
    caplog.clear()
    assert main(["data", "info", str(out)]) == 0
    assert any("img/c1_s004.npy" in w for w in warnings_of(caplog))


def test_import_all_zero_ct(tmp_path, capsys, caplog):
    _, labels = phantom_volume()
    nifti_case(tmp_path / "src", np.zeros(labels.shape, np.int16), labels)
    check_import_warning(
        tmp_path, capsys, caplog, ["c1_ct.nii.gz", "6 of 6 slices are constant", "every pixel 0 HU"]
    )


def test_import_constant_npy_slices_are_one_warning(tmp_path, caplog):
    for k in range(5):
        (tmp_path / "src" / "images").mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "src" / "images" / f"p1_s{k:02d}.npy", np.zeros((8, 8), np.float32))
    import_dataset(tmp_path / "src", tmp_path / "out")
    (line,) = warnings_of(caplog)
    assert "5 of 5 slices are constant" in line and "images/p1_s00.npy" in line


def test_import_lesion_label_found_in_no_mask(tmp_path, capsys, caplog):
    hu, labels = phantom_volume()  # labels 0 and 1 only
    nifti_case(tmp_path / "src", hu, labels)
    nifti_case(tmp_path / "src", hu, labels, name="c2")
    check_import_warning(
        tmp_path,
        capsys,
        caplog,
        [str(tmp_path / "src"), "lesion label 2", "present: 0, 1"],
        extra=["--lesion-labels", "2"],
    )
    with pytest.raises(DataError, match="lesion label 2"):
        import_dataset(tmp_path / "src", tmp_path / "lib", lesion_labels=[1, 2], strict=True)
    caplog.clear()
    import_dataset(tmp_path / "src", tmp_path / "ok", lesion_labels=[1], strict=True)
    assert warnings_of(caplog) == []


def test_import_dicom_without_rescale_tags(tmp_path, capsys, caplog):
    hu, _ = phantom_volume((32, 32, 3), lesion_slices=(1,))
    series = tmp_path / "src" / "series"
    for path in write_dicom_series(series, np.transpose(hu, (2, 1, 0))):
        ds = pydicom.dcmread(path)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(path)
    check_import_warning(
        tmp_path,
        capsys,
        caplog,
        [str(series), "without RescaleSlope/RescaleIntercept", "all 3 files"],
    )
