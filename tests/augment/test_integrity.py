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
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from augment.datasets import SliceDataset
from augment.errors import ConfigError, DataError
from augment.folder import read_dataset, write_dataset
from augment.io.ct import import_dataset
from augment.io.info import dataset_info
from augment.phantoms.render import _samples, phantom_samples, write_phantom
from augment.sample import Sample
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
    return write_dataset(out, samples, provenance="import")


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
    data = write_dataset(tmp_path / "d", flat, provenance="import")
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
    (line,) = [w for w in warnings_of(caplog) if "slices are constant" in w]
    assert "5 of 5 slices are constant" in line and "images/p1_s00.npy" in line
    # images without masks: said once, not silently imported as lesion-free
    assert any("no masks/ folder" in w for w in warnings_of(caplog))


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


# ------------------------------------------------- unreadable dataset files (issue #9)


@pytest.mark.parametrize("name", ["manifest.jsonl", "dataset.json"])
def test_binary_dataset_file_is_one_line(data, capsys, name):
    (data / name).write_bytes(b"\x97\xff\x00" + bytes(range(256)))
    with pytest.raises(DataError, match=f"{name}: not UTF-8 text"):
        read_dataset(data)
    assert main(["data", "info", str(data)]) == 2
    one_error_line(capsys, str(data / name), "not UTF-8")


def _edit_record(edit):
    def apply(folder: Path) -> None:
        set_manifest(folder, _first(edit)(manifest_lines(folder)))

    return apply


def _edit_info(**changes):
    def apply(folder: Path) -> None:
        info = json.loads((folder / "dataset.json").read_text())
        info.update(changes)
        (folder / "dataset.json").write_text(json.dumps(info))

    return apply


# (edit of the folder, words of the one-line error)
HAND_EDITS = {
    "box_outside_image": (
        _edit_record(lambda r: r.update(boxes=[[0, 0, 5000, 5000]], labels=[1])),
        ["manifest.jsonl", "p000_s000", "lies outside its 32x32 image"],
    ),
    "patient_null": (
        _edit_record(lambda r: r.update(patient_id=None)),
        ["manifest.jsonl:1", "p000_s000", "'patient_id' must be a non-empty string, got null"],
    ),
    "patient_int": (
        _edit_record(lambda r: r.update(patient_id=7)),
        ["manifest.jsonl:1", "'patient_id'", "got 7"],
    ),
    "record_spacing": (
        _edit_record(lambda r: r.update(spacing=[0, 1])),
        ["manifest.jsonl:1", "'spacing'"],
    ),
    "newer_format": (_edit_info(format_version=99), ["dataset.json", "newer lesionforge"]),
    "format_not_int": (_edit_info(format_version="1"), ["dataset.json", "format_version"]),
    "n_samples_wrong": (
        _edit_info(n_samples=999),
        ["dataset.json", "n_samples is 999", "6 records"],
    ),
    "spacing_string": (_edit_info(spacing="abc"), ["dataset.json", "'spacing'", '"abc"']),
    "spacing_three": (_edit_info(spacing=[1, 1, 1]), ["dataset.json", "'spacing'"]),
    "spacing_zero": (_edit_info(spacing=[0.5, 0]), ["dataset.json", "'spacing'"]),
}


@pytest.mark.parametrize("case", list(HAND_EDITS))
def test_hand_edited_dataset_is_one_line(data, capsys, case):
    edit, words = HAND_EDITS[case]
    edit(data)
    assert main(["data", "info", str(data)]) == 2
    one_error_line(capsys, *words)
    with pytest.raises(DataError):
        SliceDataset(data).samples()


def test_missing_patient_id_defaults_to_the_id(data, capsys):
    _edit_record(lambda r: r.pop("patient_id"))(data)
    assert main(["data", "info", str(data)]) == 0
    assert SliceDataset(data)[0].patient_id == "p000_s000"


# ------------------------------------------------------------- bad scans on import


def test_dicom_zero_pixel_spacing(tmp_path, capsys):
    hu, _ = phantom_volume((32, 32, 3), lesion_slices=(1,))
    files = write_dicom_series(tmp_path / "src", np.transpose(hu, (2, 1, 0)))
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PixelSpacing = [0, 0]
        ds.save_as(path)
    out = tmp_path / "out"
    assert main(["data", "import", str(tmp_path / "src"), "--out", str(out)]) == 2
    one_error_line(capsys, "IM0000.dcm", "PixelSpacing [0, 0] is not two positive numbers")
    assert not out.exists()


def test_nifti_zero_voxel_size(tmp_path, capsys):
    import nibabel as nib

    hu, labels = phantom_volume()
    nifti_case(tmp_path / "src", hu, labels)
    # nibabel refuses to make such an affine from an array: write it into the header.
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_sform(np.diag([0.8, 0.0, 2.5, 1.0]), code=1)
    bad = tmp_path / "src" / "c1_ct.nii.gz"
    nib.Nifti1Image(hu.astype(np.int16), None, header=header).to_filename(bad)
    assert main(["data", "import", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, str(bad), "voxel spacing (0.8, 0, 2.5 mm) must be > 0")


def test_nifti_complex_ct_is_refused(tmp_path, capsys):
    hu, labels = phantom_volume()
    nifti_case(tmp_path / "src", hu.astype(np.complex64), labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning: refused before any cast
        assert main(["data", "import", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, "c1_ct.nii.gz", "complex64", "real numbers")


def test_nifti_mask_with_another_affine_is_refused(tmp_path, capsys):
    hu, labels = phantom_volume()
    write_nifti(tmp_path / "src" / "c1_ct.nii.gz", hu)
    # the mask's x axis flipped: voxel by voxel it would label the wrong side
    write_nifti(tmp_path / "src" / "c1_label.nii.gz", labels, affine=np.diag([-0.8, 0.8, 2.5, 1]))
    assert main(["data", "import", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, "c1_label.nii.gz", "mask affine differs from the image c1_ct.nii.gz")
    # resampled (other voxel size) or shifted by a voxel: refused as well
    for affine in (np.diag([1.6, 0.8, 2.5, 1]), np.array(np.diag([0.8, 0.8, 2.5, 1]))):
        affine[0, 3] = 0.0 if affine[0, 0] != 0.8 else 0.8
        write_nifti(tmp_path / "src" / "c1_label.nii.gz", labels, affine=affine)
        with pytest.raises(DataError, match="c1_label.nii.gz: mask affine differs"):
            import_dataset(tmp_path / "src", tmp_path / "out")


def test_nifti_mask_stored_in_another_axis_order_is_accepted(tmp_path):
    hu, labels = phantom_volume()
    ni = labels.shape[0]
    write_nifti(tmp_path / "a" / "c1_ct.nii.gz", hu)
    write_nifti(tmp_path / "a" / "c1_label.nii.gz", labels)
    write_nifti(tmp_path / "b" / "c1_ct.nii.gz", hu)
    # the same voxels stored right-to-left (LAS): the same grid in space
    las = np.diag([-0.8, 0.8, 2.5, 1.0])
    las[0, 3] = 0.8 * (ni - 1)
    write_nifti(tmp_path / "b" / "c1_label.nii.gz", labels[::-1], affine=las)
    ras = SliceDataset(import_dataset(tmp_path / "a", tmp_path / "out_a")).samples()
    flipped = SliceDataset(import_dataset(tmp_path / "b", tmp_path / "out_b")).samples()
    for s, t in zip(ras, flipped, strict=True):
        np.testing.assert_array_equal(s.mask, t.mask)


# -------------------------------------------------------------- import options


def test_lesion_label_zero_is_refused(tmp_path, capsys):
    hu, labels = phantom_volume()
    nifti_case(tmp_path / "src", hu, labels)
    out = tmp_path / "out"
    assert (
        main(["data", "import", str(tmp_path / "src"), "--out", str(out), "--lesion-labels", "0"])
        == 2
    )
    one_error_line(capsys, "--lesion-labels '0'", "label 0 is the background")
    for bad in ([0], {0: 1}, [-1]):
        with pytest.raises(ConfigError, match="lesion_labels"):
            import_dataset(tmp_path / "src", out, lesion_labels=bad)
    assert not out.exists()


def test_lesion_labels_mapping_to_no_class_warns(tmp_path, capsys, caplog):
    hu, labels = phantom_volume()
    nifti_case(tmp_path / "src", hu, labels)
    check_import_warning(
        tmp_path,
        capsys,
        caplog,
        ["--lesion-labels 1:0", "no lesion would be imported"],
        extra=["--lesion-labels", "1:0"],
    )


def test_lesion_labels_help_and_error_give_the_same_forms(capsys):
    with pytest.raises(SystemExit):
        main(["data", "import", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert main(["data", "import", "src", "--out", "out", "--lesion-labels", "1:x"]) == 2
    error = one_error_line(capsys, "--lesion-labels '1:x'")
    for form in (
        "'2' (label 2 -> class 1)",
        "'1,2' (each its own class)",
        "'1:0,2:1' (source:class",
    ):
        assert form in help_text and form in error, form


def test_window_only_for_png(tmp_path, capsys):
    hu, labels = phantom_volume()
    nifti_case(tmp_path / "src", hu, labels)
    args = ["data", "import", str(tmp_path / "src"), "--out", str(tmp_path / "out")]
    assert main([*args, "--window", "40", "80"]) == 2
    one_error_line(capsys, "--window is only for PNG slices", "NIfTI volumes")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "center, width, words",
    [
        ("40", "inf", "width must be a finite"),
        ("nan", "80", "center must be a finite"),
        ("40", "0", "width must be a finite number of HU > 0"),
    ],
)
def test_png_window_must_be_finite(tmp_path, capsys, center, width, words):
    (tmp_path / "src" / "images").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / "src" / "images" / "p1_s0.png")
    args = ["data", "import", str(tmp_path / "src"), "--out", str(tmp_path / "out")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before any arithmetic on the pixels
        assert main([*args, "--window", center, width]) == 2
    one_error_line(capsys, f"--window {center} {width}", words)


# ------------------------------------------------------------------- phantom


def test_phantom_refuses_what_the_disk_cannot_hold(tmp_path, capsys, monkeypatch):
    import shutil as shutil_module

    from augment import storage as sample_module

    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(
        sample_module.shutil, "disk_usage", lambda path: usage._replace(free=1_000_000)
    )
    out = tmp_path / "sub" / "ph"
    assert main(["data", "phantom", "--n", "1000", "--size", "64", "--out", str(out)]) == 2
    line = one_error_line(capsys, "--n 1000 slices of 64x64 px", str(tmp_path), "1000000 bytes")
    assert "18560000 bytes" in line  # 1000 * (4 * 64 * 64 + 128 + 2048)
    assert not (tmp_path / "sub").exists() or not any((tmp_path / "sub").iterdir())


def test_phantom_rendering_streams(tmp_path):
    """A huge n starts at once and holds a few slices, not a list of every job."""
    from itertools import islice

    first = list(islice(_samples("head-ich", 10**12, 32, "A", 0, 8, workers=2), 3))
    one_process = list(islice(phantom_samples("head-ich", 3, size=32), 3))
    assert [s.id for s in first] == ["p000_s000", "p000_s001", "p000_s002"]
    for a, b in zip(first, one_process, strict=True):
        np.testing.assert_array_equal(a.image, b.image)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**70, 1.5, True])
def test_phantom_seed_range(tmp_path, seed):
    with pytest.raises(ConfigError, match="seed"):
        write_phantom(tmp_path / "ph", "head-ich", 2, size=32, seed=seed)
    with pytest.raises(ConfigError, match="seed"):
        phantom_samples("head-ich", 2, size=32, seed=seed)
    assert not (tmp_path / "ph").exists()


# ------------------------------------------------------------------- preview


@pytest.mark.parametrize(
    "option, value, words",
    [
        ("--n-aug", "100000", "at most 16"),
        ("--n", "65", "at most 64"),
        ("--n-aug", "0", "expected a positive"),
    ],
)
def test_preview_counts_are_bounded(clean, tmp_path, capsys, option, value, words):
    with pytest.raises(SystemExit) as exit_info:
        main(["augment", "preview", "--data", str(clean), option, value,
              "--out", str(tmp_path / "p.png")])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"argument {option}: {words}" in err[0], err
    assert not (tmp_path / "p.png").exists()


# ---------------------------------------------------- --overwrite and leftovers


def test_overwrite_keeps_a_user_file_inside_a_dataset(data, capsys):
    (data / "my_annotations.csv").write_text("mine\n")
    assert (
        main(["data", "phantom", "--n", "2", "--size", "32", "--out", str(data), "--overwrite"])
        == 2
    )
    one_error_line(capsys, str(data), "'my_annotations.csv'", "lesionforge did not write")
    assert (data / "my_annotations.csv").read_text() == "mine\n"
    (data / "my_annotations.csv").unlink()
    (data / "voc").mkdir()  # what `data export` writes there is lesionforge's own
    from augment import folder
    from augment.io.boxes import COCO_DIR, COCO_FILE, VOC_DIR

    assert {VOC_DIR, COCO_FILE, COCO_DIR} <= folder._DATASET_ENTRIES
    assert (
        main(["data", "phantom", "--n", "2", "--size", "32", "--out", str(data), "--overwrite"])
        == 0
    )


def test_stale_staging_of_another_output_is_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    stale = tmp_path / f".a.partial-{pid}"  # an interrupted `data phantom --out a`
    (stale / "img").mkdir(parents=True)
    (stale / "mask").mkdir()
    (stale / "img" / "p000_s000.npy").write_bytes(b"x")
    mine = tmp_path / f".b.partial-{pid}"  # looks like staging, holds a user's file
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    write_phantom(tmp_path / "c", "head-ich", 2, size=32)
    assert not stale.exists()
    assert (mine / "notes.txt").read_text() == "mine"
