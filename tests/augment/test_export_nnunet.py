"""nnU-Net v2 and MONAI NIfTI, in and out: import a raw nnU-Net folder, export real +
synthetic folders, round trips, and nnU-Net's own integrity check when it is installed."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from augment.datasets import load_samples
from augment.errors import ConfigError, DataError
from augment.folder import read_dataset, write_dataset
from augment.io.ct import import_dataset
from augment.io.nnunet import export_nifti, export_nnunet, patient_folds
from augment.sample import Sample
from downstream.cli import main
from tests.augment.ct_builders import displayed, phantom_volume, write_nifti

CLASSES = {1: "IPH", 2: "IVH"}


def slice_sample(patient: int, k: int, synthetic: bool = False, sid: str | None = None) -> Sample:
    """A 24x20 slice with distinct HU (fractions too) and a lesion of class 1 or 2."""
    rng = np.random.default_rng([patient, k, synthetic])
    image = (rng.normal(30, 20, (24, 20)) + 0.25).astype(np.float32)
    mask = np.zeros((24, 20), np.uint8)
    mask[3 + k : 8 + k, 4:9] = 1 + (patient + k) % 2
    mask[15:18, 12:19] = 2 if k % 2 else 0
    meta = {
        "id": sid or f"p{patient}_s{k:03d}",
        "patient_id": f"p{patient}",
        "slice_index": k,
        "spacing": [0.8, 0.7],
        "slice_thickness": 2.5,
        "synthetic": synthetic,
    }
    return Sample(image=image, mask=mask, meta=meta)


@pytest.fixture
def real(tmp_path) -> Path:
    samples = [slice_sample(p, k) for p in range(3) for k in range(3)]
    return write_dataset(
        tmp_path / "real", samples, provenance="phantom", config={"kind": "head-ich"},
        classes=CLASSES, spacing=[0.8, 0.7],
    )  # fmt: skip


@pytest.fixture
def synthetic(tmp_path) -> Path:
    # Two synthetic slices on host p0 slice 1: the same (patient, slice index) twice.
    samples = [slice_sample(0, 1, True, "syn_000000"), slice_sample(0, 1, True, "syn_000001")]
    samples.append(slice_sample(2, 0, True, "syn_000002"))
    return write_dataset(
        tmp_path / "syn", samples, provenance="synthetic", classes=CLASSES,
        extra={"generator": "pix2pix"},
    )  # fmt: skip


def nnunet_raw(src: Path, labels: dict, channels: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An nnU-Net v2 raw folder: two training cases, one unlabelled test case."""
    hu, tumour = phantom_volume()
    seg = np.zeros_like(tumour)
    seg[10:38, 10:38, 1:5] = 1
    seg[tumour == 1] = 2
    channels = channels or {"0": "CT"}
    for case in ("case0", "case1"):
        for c in channels:
            write_nifti(src / "imagesTr" / f"{case}_{int(c):04d}.nii.gz", hu + 100 * int(c))
        write_nifti(src / "labelsTr" / f"{case}.nii.gz", seg)
    write_nifti(src / "imagesTs" / "case9_0000.nii.gz", hu)
    meta = {"channel_names": channels, "labels": labels, "numTraining": 2, "file_ending": ".nii.gz"}
    (src / "dataset.json").write_text(json.dumps(meta))
    return hu, seg


def assert_same_slices(a: list[Sample], b: list[Sample]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(y.image, x.image, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(y.mask, x.mask)


# --------------------------------------------------------------------------- import


def test_import_nnunet_v2_raw_folder(tmp_path):
    labels = {"background": 0, "liver": 1, "tumor": 2}
    hu, seg = nnunet_raw(tmp_path / "src", labels)
    out = import_dataset(tmp_path / "src", tmp_path / "out")
    info, _ = read_dataset(out)
    assert info["layout"] == "nnunet" and info["classes"] == {"1": "liver", "2": "tumor"}
    samples = load_samples(out)
    # The channel suffix is stripped: case ids pair with labelsTr; imagesTs is not imported.
    assert {s.patient_id for s in samples} == {"case0", "case1"} and len(samples) == 12
    assert samples[0].id == "case0_s000"
    for s in samples:
        k = s.meta["slice_index"]
        np.testing.assert_array_equal(s.image, displayed(hu, k))
        np.testing.assert_array_equal(s.mask, displayed(seg, k))
    tumour = import_dataset(tmp_path / "src", tmp_path / "tumour", lesion_labels=[2])
    assert read_dataset(tumour)[0]["classes"] == {"1": "tumor"}


def test_import_nnunet_picks_the_ct_channel_and_drops_ignore(tmp_path):
    labels = {"background": 0, "liver": 1, "tumor": 2, "ignore": 3}
    hu, seg = nnunet_raw(tmp_path / "src", labels, channels={"0": "PET", "1": "CT"})
    out = import_dataset(tmp_path / "src", tmp_path / "out")
    assert read_dataset(out)[0]["classes"] == {"1": "liver", "2": "tumor"}
    first = load_samples(out)[0]
    np.testing.assert_array_equal(first.image, displayed(hu + 100, 0))  # channel 0001
    nnunet_raw(tmp_path / "two", labels, channels={"0": "PET", "1": "MR"})
    with pytest.raises(DataError, match=r"2 image channels \(0000 \(PET\), 0001 \(MR\)\)"):
        import_dataset(tmp_path / "two", tmp_path / "no")
    meta = json.loads((tmp_path / "src" / "dataset.json").read_text())
    (tmp_path / "src" / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".mha"}))
    with pytest.raises(DataError, match=r"file_ending '\.mha'"):
        import_dataset(tmp_path / "src", tmp_path / "no")


def test_decathlon_layout_without_suffix_still_pairs_by_name(tmp_path):
    # MSD names image and label alike, even when the name ends in 4 digits.
    hu, seg = phantom_volume()
    write_nifti(tmp_path / "src" / "imagesTr" / "case_0001.nii.gz", hu)
    write_nifti(tmp_path / "src" / "labelsTr" / "case_0001.nii.gz", seg)
    out = import_dataset(tmp_path / "src", tmp_path / "out")
    info, records = read_dataset(out)
    assert info["layout"] == "msd" and records[0]["id"] == "case_0001_s000"


# --------------------------------------------------------------------------- export


def test_export_2d_cases_real_and_synthetic(real, synthetic, tmp_path):
    out = export_nnunet([real, synthetic], tmp_path / "raw", dataset_id=7, name="ICH")
    assert out == tmp_path / "raw" / "Dataset007_ICH"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "IPH": 1, "IVH": 2}
    assert meta["numTraining"] == 12
    assert meta["lesionforge"]["n_real"] == 9 and meta["lesionforge"]["n_synthetic"] == 3
    images = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert images[0] == "p0_s000_0000.nii.gz" and "syn_000002_0000.nii.gz" in images
    assert len(list((out / "labelsTr").iterdir())) == 12
    img = nib.load(out / "imagesTr" / "p0_s001_0000.nii.gz")
    assert img.shape == (20, 24, 1) and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.header.get_zooms(), (0.7, 0.8, 2.5))
    np.testing.assert_allclose(np.asarray(img.dataobj)[:, :, 0].T, slice_sample(0, 1).image)
    rows = [json.loads(line) for line in (out / "lesionforge_cases.jsonl").read_text().splitlines()]
    assert rows[-1]["synthetic"] and rows[-1]["samples"] == ["syn_000002"]
    assert rows[-1]["generator"] == "pix2pix"
    # Folds by patient; synthetic cases train, never validate, and never with their host's
    # patient on the validation side.
    folds = json.loads((out / "splits_final.json").read_text())
    assert len(folds) == 3
    for fold in folds:
        val_patients = {c.split("_")[0] for c in fold["val"]}
        assert len(val_patients) == 1 and not any(c.startswith("syn") for c in fold["val"])
        assert not val_patients & {c.split("_")[0] for c in fold["train"] if c.startswith("p")}
        assert ("syn_000002" in fold["train"]) == (val_patients != {"p2"})
    # Round trip: the exported folder imports back to the same HU and masks, per patient.
    back = import_dataset(out, tmp_path / "back")
    info, _ = read_dataset(back)
    assert info["layout"] == "nnunet" and info["classes"] == {"1": "IPH", "2": "IVH"}
    again = load_samples(back)
    assert_same_slices(load_samples(real) + load_samples(synthetic), again)
    assert [s.patient_id for s in again[:4]] == ["p0", "p0", "p0", "p1"]
    assert again[0].meta["spacing"] == [0.8, 0.7]


def test_export_restacked_per_patient(real, synthetic, tmp_path):
    out = export_nnunet([real], tmp_path / "raw", restack=True)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [
        "p0.nii.gz", "p1.nii.gz", "p2.nii.gz",
    ]  # fmt: skip
    assert nib.load(out / "imagesTr" / "p1_0000.nii.gz").shape == (20, 24, 3)
    back = load_samples(import_dataset(out, tmp_path / "back"))
    assert_same_slices(load_samples(real), back)
    assert [s.id for s in back[:2]] == ["p0_s000", "p0_s001"]
    with pytest.raises(DataError, match=r"patient p0 has two slices at index 1 .*without --restack"):
        export_nnunet([synthetic], tmp_path / "raw2", restack=True)
    assert not (tmp_path / "raw2" / "Dataset501_Lesion").exists()


def test_export_names_classes_consecutively_and_refuses_conflicts(real, tmp_path):
    base = slice_sample(0, 1)  # class 2 lesions only
    mask = np.where(base.mask == 2, 5, 0).astype(np.uint8)
    mask[0, 0] = 1
    folder = write_dataset(tmp_path / "sparse", [base.replace(mask=mask)],
                           provenance="import", classes={1: "IPH", 5: "SAH"})  # fmt: skip
    out = export_nnunet([folder], tmp_path / "raw")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "IPH": 1, "SAH": 2}
    assert meta["lesionforge"]["class_ids"] == {"1": 1, "5": 2}
    label = np.asarray(nib.load(out / "labelsTr" / "p0_s001.nii.gz").dataobj)
    assert set(np.unique(label)) == {0, 1, 2}
    other = write_dataset(tmp_path / "other", [slice_sample(0, 0)], provenance="import",
                          classes={1: "lesion", 2: "IVH"})
    with pytest.raises(DataError, match=r"class 1 is 'lesion' here but 'IPH'"):
        export_nnunet([real, other], tmp_path / "raw3")


def test_export_overwrite_only_replaces_its_own(real, tmp_path):
    raw = tmp_path / "raw"
    out = export_nnunet([real], raw)
    with pytest.raises(DataError, match="already exists"):
        export_nnunet([real], raw)
    export_nnunet([real], raw, overwrite=True, restack=True)
    assert len(list((out / "imagesTr").iterdir())) == 3
    assert [p.name for p in raw.iterdir()] == ["Dataset501_Lesion"]  # nothing staged left
    with pytest.raises(DataError, match="Dataset501_Lesion with dataset id 501"):
        export_nnunet([real], raw, name="Other")
    mine = raw / "Dataset502_Mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not an export lesionforge wrote"):
        export_nnunet([real], raw, dataset_id=502, name="Mine", overwrite=True)
    assert (mine / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="--dataset-id"):
        export_nnunet([real], raw, dataset_id=1000)
    with pytest.raises(ConfigError, match="--name"):
        export_nnunet([real], raw, name="a b")


def test_same_input_gives_identical_files(real, tmp_path):
    a = export_nnunet([real], tmp_path / "a")
    b = export_nnunet([real], tmp_path / "b")
    for sub in ("imagesTr", "labelsTr"):
        for p in (a / sub).iterdir():
            assert p.read_bytes() == (b / sub / p.name).read_bytes(), p.name


def test_patient_folds_with_one_real_patient_is_none():
    rows = [{"case": "a", "patient_id": "p", "synthetic": False}]
    assert patient_folds(rows) == []


def test_nifti_export_for_monai(real, synthetic, tmp_path):
    out = export_nifti([real, synthetic], tmp_path / "monai")
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["labels"] == {"0": "background", "1": "IPH", "2": "IVH"}
    assert datalist["modality"] == {"0": "CT"} and datalist["numTraining"] == 12
    first = datalist["training"][0]
    assert first == {
        "image": "imagesTr/p0_s000.nii.gz", "label": "labelsTr/p0_s000.nii.gz",
        "patient_id": "p0", "synthetic": False,
    }  # fmt: skip
    assert all((out / e["image"]).is_file() and (out / e["label"]).is_file()
               for e in datalist["training"])  # fmt: skip
    back = import_dataset(out, tmp_path / "back")
    info, _ = read_dataset(back)
    assert info["layout"] == "msd" and info["classes"] == {"1": "IPH", "2": "IVH"}
    assert_same_slices(load_samples(real) + load_samples(synthetic), load_samples(back))
    assert load_samples(back)[3].patient_id == "p1"


def test_monai_reads_the_datalist(real, tmp_path):
    data = pytest.importorskip("monai.data", reason="MONAI not installed (pip install '.[interop]')")
    transforms = pytest.importorskip("monai.transforms")
    out = export_nifti([real], tmp_path / "monai")
    items = data.load_decathlon_datalist(out / "datalist.json", data_list_key="training")
    assert items[0]["image"] == str(out / "imagesTr" / "p0_s000.nii.gz")
    load = transforms.Compose(
        [transforms.LoadImaged(keys=["image", "label"]),
         transforms.EnsureChannelFirstd(keys=["image", "label"])]
    )  # fmt: skip
    item = load(items[1])
    assert tuple(item["image"].shape) == (1, 20, 24, 1)  # MONAI keeps the file's (x, y, z)
    np.testing.assert_allclose(np.asarray(item["image"])[0, :, :, 0].T, slice_sample(0, 1).image)


def test_cli_export(real, synthetic, tmp_path, capsys):
    raw = tmp_path / "raw"
    assert main(["data", "export", str(real), str(synthetic), "--format", "nnunet",
                 "--out", str(raw), "--dataset-id", "12", "--name", "Mixed"]) == 0  # fmt: skip
    assert "Dataset012_Mixed" in capsys.readouterr().out
    assert main(["data", "export", str(real), "--format", "nnunet", "--window", "brain",
                 "--out", str(raw)]) == 2  # fmt: skip
    assert "--window does not apply" in capsys.readouterr().err
    assert main(["data", "export", str(real), "--format", "nifti"]) == 2
    assert "give --out" in capsys.readouterr().err
    assert main(["data", "export", str(real), str(synthetic), "--format", "coco"]) == 2


# ------------------------------------------------------------- nnU-Net's own checks


def test_nnunet_accepts_the_export(real, synthetic, tmp_path, monkeypatch):
    pytest.importorskip("nnunetv2", reason="nnunetv2 not installed (pip install '.[interop]')")
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    raw = tmp_path / "nnUNet_raw"
    flat = export_nnunet([real, synthetic], raw, dataset_id=501)
    stacked = export_nnunet([real], raw, dataset_id=502, name="Stacked", restack=True)
    for folder in (flat, stacked):
        verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem
    # nnU-Net sees each 2D case as (channel, 1, H, W) with the slice as lesionforge shows it.
    images, props = SimpleITKIO().read_images([str(flat / "imagesTr" / "p0_s001_0000.nii.gz")])
    assert images.shape == (1, 1, 24, 20)
    np.testing.assert_allclose(images[0, 0], slice_sample(0, 1).image, atol=1e-4)
    np.testing.assert_allclose(props["spacing"], (2.5, 0.8, 0.7))
