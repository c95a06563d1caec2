"""import_dataset end to end: NIfTI layouts, PNG/NPY slices, label maps, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from augment.errors import ConfigError, DataError
from augment.folder import load_sample, read_dataset
from augment.io.ct import LabelMap, import_dataset, parse_lesion_labels
from tests.augment.ct_builders import (
    displayed,
    phantom_volume,
    write_dicom_series,
    write_nifti,
)


def load_all(out: Path):
    info, records = read_dataset(out)
    return info, records, [load_sample(out, r, verify=True) for r in records]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers == []


def make_ct_ich(src: Path, cases=("049", "050")) -> tuple[np.ndarray, np.ndarray]:
    """PhysioNet CT-ICH layout; CT stored as int16 + scl_inter -1024, like scanner data."""
    hu, labels = phantom_volume()
    for case in cases:
        raw = (hu + 1024).astype(np.int16)
        write_nifti(src / "ct_scans" / f"{case}.nii", raw, slope_inter=(1.0, -1024.0))
        write_nifti(src / "masks" / f"{case}.nii", labels)
    return hu, labels


def make_msd(src: Path, extra_label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decathlon Task03_Liver-like case: liver = 1 on slices 1-4, tumour = 2 on slices 2-3."""
    hu, tumour = phantom_volume()
    labels = np.zeros_like(tumour)
    labels[10:38, 10:38, 1:5] = 1
    labels[tumour == 1] = 2
    if extra_label is not None:
        labels[5, 5, 4] = extra_label
    write_nifti(src / "imagesTr" / "liver_3.nii.gz", hu)
    write_nifti(src / "labelsTr" / "liver_3.nii.gz", labels)
    # AppleDouble junk as shipped in the real archive: must be skipped, not read.
    (src / "imagesTr" / "._liver_3.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    meta = {"labels": {"0": "background", "1": "liver", "2": "cancer"}}
    (src / "dataset.json").write_text(json.dumps(meta))
    return hu, labels


# ------------------------------------------------------------------------- NIfTI


def test_ct_ich_layout_keeps_hu_spacing_and_orientation(tmp_path):
    hu, labels = make_ct_ich(tmp_path / "src")
    out = import_dataset(tmp_path / "src", tmp_path / "out")
    info, records, samples = load_all(out)
    assert info["provenance"] == "import" and info["layout"] == "ct-ich"
    assert info["classes"] == {"1": "lesion"}
    assert info["spacing"] == [0.8, 0.8]
    assert [s.id for s in samples[:2]] == ["049_s000", "049_s001"]
    assert len(samples) == 12 and {s.patient_id for s in samples} == {"049", "050"}
    for s in samples:
        k = s.meta["slice_index"]
        np.testing.assert_array_equal(s.image, displayed(hu, k))  # exact HU through scl_inter
        np.testing.assert_array_equal(s.mask, displayed(labels, k))
        assert s.meta["spacing"] == [0.8, 0.8] and s.meta["slice_thickness"] == 2.5
        assert s.meta["source_file"] in ("ct_scans/049.nii", "ct_scans/050.nii")
    lesion = [s for s in samples if s.has_lesion]
    assert [s.id for s in lesion] == ["049_s002", "049_s003", "050_s002", "050_s003"]
    # Lesion voxels i 20..25, j 14..18; displayed column = 47 - i, row = 47 - j (hand computed).
    np.testing.assert_array_equal(lesion[0].boxes, [[22, 29, 28, 34]])
    assert records[2]["boxes"] == [[22.0, 29.0, 28.0, 34.0]] and records[2]["labels"] == [1]
    assert info["config"]["slices"] == "all"


def test_anterior_up_and_patient_right_on_the_left(tmp_path):
    # Voxel (0, 0) is the most right and anterior point under an LPS-like affine
    # (x and y steps negative); under a RAS affine it is voxel (47, 47).
    for name, affine, voxel in (
        ("lps", np.diag([-0.8, -0.8, 2.5, 1.0]), (0, 0)),
        ("ras", np.diag([0.8, 0.8, 2.5, 1.0]), (47, 47)),
    ):
        hu = np.zeros((48, 48, 2), np.float32)
        hu[voxel[0], voxel[1], :] = 1000
        write_nifti(tmp_path / name / f"{name}_ct.nii.gz", hu, affine=affine)
        write_nifti(
            tmp_path / name / f"{name}_label.nii.gz", np.zeros((48, 48, 2), np.uint8), affine=affine
        )
        _, _, samples = load_all(import_dataset(tmp_path / name, tmp_path / f"out_{name}"))
        assert samples[0].image[0, 0] == 1000 and samples[0].image.sum() == 1000


def test_msd_layout_maps_tumour_only(tmp_path):
    hu, labels = make_msd(tmp_path / "src")
    out = import_dataset(tmp_path / "src", tmp_path / "out", lesion_labels=[2])
    info, _, samples = load_all(out)
    assert info["layout"] == "msd" and info["classes"] == {"1": "cancer"}
    assert len(samples) == 6 and samples[0].id == "liver_3_s000"
    for s in samples:
        k = s.meta["slice_index"]
        np.testing.assert_array_equal(s.mask, (displayed(labels, k) == 2).astype(np.uint8))
    assert sum(s.has_lesion for s in samples) == 2
    # A strict map giving the same classes gives the same masks.
    strict = import_dataset(tmp_path / "src", tmp_path / "strict", lesion_labels={1: 0, 2: 1})
    _, _, same = load_all(strict)
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(samples, same, strict=True))


def test_default_label_map_keeps_every_label_as_a_class(tmp_path):
    make_msd(tmp_path / "src")
    info, _, samples = load_all(import_dataset(tmp_path / "src", tmp_path / "out"))
    assert info["classes"] == {"1": "liver", "2": "cancer"}
    assert set(np.unique(np.stack([s.mask for s in samples]))) == {0, 1, 2}


def test_slice_selection(tmp_path):
    make_msd(tmp_path / "src")
    nonempty = import_dataset(
        tmp_path / "src", tmp_path / "ne", slices="nonempty", lesion_labels=[2]
    )
    lesion = import_dataset(tmp_path / "src", tmp_path / "le", slices="lesion", lesion_labels=[2])
    # Liver on slices 1-4, tumour on 2-3 (make_msd).
    assert [r["slice_index"] for r in read_dataset(nonempty)[1]] == [1, 2, 3, 4]
    assert [r["slice_index"] for r in read_dataset(lesion)[1]] == [2, 3]


def test_list_map_drops_other_labels_strict_map_refuses_them(tmp_path):
    make_msd(tmp_path / "src", extra_label=3)
    out = import_dataset(tmp_path / "src", tmp_path / "ok", lesion_labels=[2])
    assert max(int(s.mask.max()) for s in load_all(out)[2]) == 1
    with pytest.raises(DataError, match=r"liver_3\.nii\.gz slice 4: unknown label value 3"):
        import_dataset(tmp_path / "src", tmp_path / "bad", lesion_labels={1: 0, 2: 1})
    assert_nothing_written(tmp_path / "bad")


def test_lits_layout_in_batch_folders_sorted_naturally(tmp_path):
    hu, labels = phantom_volume(shape=(32, 32, 3), lesion_slices=(1,))
    for n, batch in ((10, "Training Batch 2"), (2, "Training Batch 1")):
        write_nifti(tmp_path / "src" / batch / f"volume-{n}.nii", hu)
        write_nifti(tmp_path / "src" / batch / f"segmentation-{n}.nii", labels)
    info, _, samples = load_all(import_dataset(tmp_path / "src", tmp_path / "out"))
    assert info["layout"] == "lits"
    assert [s.id for s in samples] == [f"volume-{n}_s00{k}" for n in (2, 10) for k in range(3)]
    assert samples[0].patient_id == "volume-2"


def test_resample_to_size_updates_spacing(tmp_path):
    hu, _ = make_ct_ich(tmp_path / "src", cases=("001",))
    _, _, samples = load_all(import_dataset(tmp_path / "src", tmp_path / "out", size=32))
    for s in samples:
        assert s.image.shape == (32, 32) and s.meta["original_shape"] == [48, 48]
        assert s.meta["spacing"] == [1.2, 1.2]  # 0.8 mm * 48 / 32
        assert set(np.unique(s.mask)) <= {0, 1}  # nearest neighbour: no blended labels
        assert hu.min() <= s.image.min() and s.image.max() <= hu.max()
    assert [s.has_lesion for s in samples] == [False, False, True, True, False, False]


def test_same_input_gives_identical_files(tmp_path):
    make_ct_ich(tmp_path / "src", cases=("001",))
    a = import_dataset(tmp_path / "src", tmp_path / "a")
    b = import_dataset(tmp_path / "src", tmp_path / "b")
    assert (a / "manifest.jsonl").read_bytes() == (b / "manifest.jsonl").read_bytes()
    for rel in ("img/001_s002.npy", "mask/001_s002.png"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


def test_progress_bar_on_request(tmp_path, capsys):
    make_ct_ich(tmp_path / "src", cases=("001",))
    import_dataset(tmp_path / "src", tmp_path / "out", progress=True)
    assert "import src" in capsys.readouterr().err


# ---------------------------------------------------------------- PNG / NPY slices


def test_png_slices_recover_hu_from_the_window(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (2, 24, 20)).astype(np.uint8)
    for k, arr in enumerate(stored):
        (tmp_path / "src" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / "masks").mkdir(exist_ok=True)
        Image.fromarray(arr).save(tmp_path / "src" / "images" / f"p01_s{k:03d}.png")
        mask = np.zeros((24, 20), np.uint8)
        mask[3:6, 4:9] = 255  # exported 0/255, mapped to class 1 below
        Image.fromarray(mask).save(tmp_path / "src" / "masks" / f"p01_s{k:03d}.png")
    with pytest.raises(ConfigError, match="window"):
        import_dataset(tmp_path / "src", tmp_path / "out")
    assert_nothing_written(tmp_path / "out")
    out = import_dataset(tmp_path / "src", tmp_path / "out", window="brain", lesion_labels=[255])
    info, _, samples = load_all(out)
    assert info["source_format"] == "png" and info["layout"] == "images+masks"
    assert [s.id for s in samples] == ["p01_s000", "p01_s001"] and samples[0].patient_id == "p01"
    # Brain window 40/80: level v is HU 0 + v / 255 * 80 (Window.low = 0).
    np.testing.assert_allclose(samples[1].image, stored[1] / 255 * 80, atol=1e-4)
    np.testing.assert_array_equal(samples[0].boxes, [[4, 3, 9, 6]])
    assert samples[0].meta["window"] == {"center": 40.0, "width": 80.0}


def test_npy_slices_in_patient_folders(tmp_path):
    src = tmp_path / "src"
    for patient in ("p1", "p2"):
        for k in (3, 7):
            (src / "images" / patient).mkdir(parents=True, exist_ok=True)
            np.save(src / "images" / patient / f"{k}.npy", np.full((16, 16), k * 10.5, np.float32))
    _, records, samples = load_all(import_dataset(src, tmp_path / "out"))
    assert [r["id"] for r in records] == ["p1_s003", "p1_s007", "p2_s003", "p2_s007"]
    assert [s.patient_id for s in samples] == ["p1", "p1", "p2", "p2"]
    assert samples[1].image[0, 0] == 73.5 and not any(s.has_lesion for s in samples)


# ---------------------------------------------------------------------- bad input


def _truncated_nifti(src: Path) -> str:
    make_ct_ich(src)  # 049 is read and staged before 050 fails
    path = src / "ct_scans" / "050.nii"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return r"050\.nii: cannot read NIfTI"


def _random_nifti(src: Path) -> str:
    make_ct_ich(src, cases=("049",))
    (src / "ct_scans" / "049.nii").write_bytes(np.random.default_rng(1).bytes(4096))
    return r"049\.nii: cannot read NIfTI"


def _corrupt_dicom(src: Path) -> str:
    write_dicom_series(src / "series", np.zeros((3, 8, 8)))
    (src / "series" / "IM0001.dcm").write_bytes(np.random.default_rng(2).bytes(600))
    return r"IM0001\.dcm: corrupt DICOM"


def _truncated_dicom(src: Path) -> str:
    write_dicom_series(src / "series", np.zeros((3, 32, 32)))
    path = src / "series" / "IM0002.dcm"
    path.write_bytes(path.read_bytes()[:-1500])
    return r"IM0002\.dcm: corrupt DICOM"


def _shape_mismatch(src: Path) -> str:
    hu, labels = phantom_volume()
    write_nifti(src / "ct_scans" / "049.nii", hu)
    write_nifti(src / "masks" / "049.nii", labels[:, :40])
    return r"masks/049\.nii: mask shape \(48, 40, 6\) differs from image shape \(48, 48, 6\)"


def _non_finite(value: float):
    def make(src: Path) -> str:
        hu, labels = phantom_volume()
        hu[3, 3, 4] = value
        write_nifti(src / "x_ct.nii.gz", hu)
        write_nifti(src / "x_label.nii.gz", labels)
        return r"x_ct\.nii\.gz slice 4: NaN or infinite HU"

    return make


def _empty(src: Path) -> str:
    src.mkdir()
    return "folder is empty"


def _missing_mask(src: Path) -> str:
    make_ct_ich(src)
    write_nifti(src / "ct_scans" / "051.nii", phantom_volume()[0])
    return r"051\.nii: missing mask"


def _missing_png_mask(src: Path) -> str:
    for folder in ("images", "masks"):
        (src / folder).mkdir(parents=True)
    for name in ("a_1", "a_2"):
        np.save(src / "images" / f"{name}.npy", np.zeros((8, 8), np.float32))
    np.save(src / "masks" / "a_1.npy", np.zeros((8, 8), np.uint8))
    return r"a_2\.npy: missing mask"


def _no_layout(src: Path) -> str:
    write_nifti(src / "scan.nii.gz", phantom_volume()[0])
    return "no known layout"


@pytest.mark.parametrize(
    "make",
    [
        _truncated_nifti,
        _random_nifti,
        _corrupt_dicom,
        _truncated_dicom,
        _shape_mismatch,
        _non_finite(np.nan),
        _non_finite(np.inf),
        _empty,
        _missing_mask,
        _missing_png_mask,
        _no_layout,
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, make):
    pattern = make(tmp_path / "src")
    with pytest.raises(DataError, match=pattern) as err:
        import_dataset(tmp_path / "src", tmp_path / "out")
    assert "\n" not in str(err.value)
    assert_nothing_written(tmp_path / "out")


def test_failed_overwrite_keeps_the_old_dataset(tmp_path):
    make_ct_ich(tmp_path / "src", cases=("001",))
    out = import_dataset(tmp_path / "src", tmp_path / "out")
    before = (out / "manifest.jsonl").read_bytes()
    with pytest.raises(DataError, match="already exists"):
        import_dataset(tmp_path / "src", out)
    os.remove(tmp_path / "src" / "masks" / "001.nii")
    with pytest.raises(DataError, match="missing mask"):
        import_dataset(tmp_path / "src", out, overwrite=True)
    assert (out / "manifest.jsonl").read_bytes() == before


def test_options_are_checked_before_reading(tmp_path):
    make_ct_ich(tmp_path / "src", cases=("001",))
    for kwargs in ({"fmt": "tiff"}, {"slices": "some"}, {"size": 0}, {"lesion_labels": ["a"]}):
        with pytest.raises(ConfigError):
            import_dataset(tmp_path / "src", tmp_path / "out", **kwargs)
    with pytest.raises(ConfigError, match="inside the source"):
        import_dataset(tmp_path / "src", tmp_path / "src" / "out")
    assert_nothing_written(tmp_path / "out")


# ---------------------------------------------------------------------- label maps


def test_parse_lesion_labels():
    assert parse_lesion_labels("2") == [2]
    assert parse_lesion_labels("1, 2") == [1, 2]
    assert parse_lesion_labels("1:0,2:1") == {1: 0, 2: 1}
    for bad in ("", "a", "1:0,2", "1:x"):
        with pytest.raises(ConfigError):
            parse_lesion_labels(bad)


def test_label_map_apply():
    labels = np.array([[0, 1, 2, 3]])
    np.testing.assert_array_equal(LabelMap.from_spec([3, 1]).apply(labels, "m"), [[0, 2, 0, 1]])
    np.testing.assert_array_equal(LabelMap.from_spec(None).apply(labels, "m"), labels)
    assert LabelMap.from_spec(2) == LabelMap.from_spec("2") == LabelMap({2: 1}, strict=False)
    with pytest.raises(DataError, match="m: unknown label value 3"):
        LabelMap.from_spec({1: 1, 2: 0}).apply(labels, "m")
    with pytest.raises(DataError, match="non-integer"):
        LabelMap.from_spec(None).apply(np.array([[0.0, 0.5]]), "m")
    with pytest.raises(DataError, match="outside 0..255"):
        LabelMap.from_spec(None).apply(np.array([[0, 300]]), "m")
