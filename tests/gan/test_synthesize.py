"""Synthetic datasets on disk: labels, provenance, determinism, atomicity, exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from augment.errors import CheckpointError, ConfigError, DataError
from augment.folder import load_sample, read_dataset, write_dataset
from augment.sample import boxes_from_mask
from augment.storage import sha256_file
from gan.base import GENERATORS
from gan.synthesize import chunk_seed, synthesize_dataset
from gan.train.config import TrainConfig
from gan.train.trainer import train
from tests.gan.test_trainer import TinyGan, tiny, tiny_slices


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step TinyGan run on a dataset folder: ``(checkpoint, data folder)``."""
    GENERATORS[TinyGan.name] = TinyGan
    root = tmp_path_factory.mktemp("synth")
    data = write_dataset(
        root / "data",
        tiny_slices(6),
        provenance="phantom",
        config={"kind": "head-ich"},
        classes={1: "IPH"},
        spacing=[0.8, 0.8],
    )
    cfg = TrainConfig(
        steps=2, batch_size=2, out=root / "run", device="cpu", grid_n=0, progress=False
    )
    result = train(tiny(), tiny_slices(6), None, cfg, data_info={"folder": str(data.resolve())})
    yield Path(result["checkpoint"]), data
    GENERATORS.pop(TinyGan.name, None)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_writes_labelled_dataset_with_provenance(run, tmp_path):
    ckpt, data = run
    out = synthesize_dataset(ckpt, 5, tmp_path / "syn", seed=3, chunk=2, device="cpu")
    info, records = read_dataset(out)
    hosts = {r["id"]: load_sample(data, r) for r in read_dataset(data)[1]}
    sha = sha256_file(ckpt)
    assert info["provenance"] == "synthetic" and info["anatomy"] == "head-ich" and info["n_samples"] == 5
    assert info["checkpoint"] == {"path": str(ckpt.resolve()), "sha256": sha, "step": 2}
    assert info["generator"] == "tiny-test" and info["seed"] == 3 and info["chunk"] == 2
    assert info["model_config"] == {"width": 4, "window": [40.0, 200.0], "lr": 2e-3}
    assert info["classes"] == {"1": "IPH"} and info["spacing"] == [0.8, 0.8]
    assert info["hosts"] == str(data.resolve())
    assert "torch" in info["versions"]
    assert [r["id"] for r in records] == [f"syn_{i:06d}" for i in range(5)]
    for r in records:
        s = load_sample(out, r, verify=True)
        host = hosts[r["host_id"]]
        assert r["synthetic"] is True and r["generator"] == "tiny-test"
        assert r["checkpoint_sha256"] == sha and r["seed"] == 3
        assert r["config"] == info["model_config"]
        assert r["patient_id"] == host.patient_id  # synthetic data inherits the host patient
        boxes, labels = boxes_from_mask(s.mask)
        np.testing.assert_array_equal(s.boxes, boxes)
        np.testing.assert_array_equal(s.labels, labels)
        # TinyGan repaints only inside the mask: the host is untouched outside it.
        outside = s.mask == 0
        np.testing.assert_array_equal(s.image[outside], host.image[outside])
        assert s.image.dtype == np.float32
    assert [r["chunk_seed"] for r in records] == [chunk_seed(3, c) for c in (0, 0, 1, 1, 2)]


def test_same_seed_byte_identical_and_chunks_prefix_stable(run, tmp_path):
    ckpt, _ = run
    a = synthesize_dataset(ckpt, 5, tmp_path / "a", seed=1, chunk=2, device="cpu")
    b = synthesize_dataset(ckpt, 5, tmp_path / "b", seed=1, chunk=2, device="cpu")
    c = synthesize_dataset(ckpt, 5, tmp_path / "c", seed=2, chunk=2, device="cpu")
    assert folder_bytes(a) == folder_bytes(b)
    assert folder_bytes(a) != folder_bytes(c)
    # Chunk c depends only on (seed, c): a shorter run repeats the first full chunk.
    short = synthesize_dataset(ckpt, 3, tmp_path / "short", seed=1, chunk=2, device="cpu")
    for name in ("img/syn_000000.npy", "img/syn_000001.npy", "mask/syn_000001.png"):
        assert (short / name).read_bytes() == (a / name).read_bytes()


def test_interrupted_run_leaves_no_folder(run, tmp_path, monkeypatch):
    ckpt, _ = run
    calls = {"n": 0}
    original = TinyGan.synthesize

    def failing(self, n, *, rng, hosts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C in the second chunk
        return original(self, n, rng=rng, hosts=hosts)

    monkeypatch.setattr(TinyGan, "synthesize", failing)
    with pytest.raises(KeyboardInterrupt):
        synthesize_dataset(ckpt, 4, tmp_path / "syn", chunk=2, device="cpu")
    assert calls["n"] == 2
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging copy


def test_hosts_default_and_missing(run, tmp_path):
    ckpt, data = run
    moved = tmp_path / "ckpt.pt"
    shutil.copy(ckpt, moved)
    hosts = shutil.copytree(data, tmp_path / "hosts")
    out = synthesize_dataset(moved, 2, tmp_path / "syn", hosts=hosts, device="cpu")
    assert read_dataset(out)[0]["hosts"] == str(hosts.resolve())
    # A checkpoint whose training folder is gone: a one-line error naming both.
    gone = tmp_path / "gone"
    shutil.copytree(data, gone)
    cfg = TrainConfig(
        steps=1, batch_size=2, out=tmp_path / "r", device="cpu", grid_n=0, progress=False
    )
    result = train(tiny(), tiny_slices(6), None, cfg, data_info={"folder": str(gone.resolve())})
    shutil.rmtree(gone)
    with pytest.raises(
        DataError, match=r"gone: training data folder recorded in .*last\.pt no longer exists"
    ):
        synthesize_dataset(result["checkpoint"], 2, tmp_path / "x", device="cpu")
    # In-memory training data: nothing recorded, so hosts must be given.
    cfg2 = TrainConfig(
        steps=1, batch_size=2, out=tmp_path / "r2", device="cpu", grid_n=0, progress=False
    )
    result = train(tiny(), tiny_slices(6), None, cfg2)
    with pytest.raises(CheckpointError, match="records no training data folder"):
        synthesize_dataset(result["checkpoint"], 2, tmp_path / "y", device="cpu")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_export_and_refusals(run, tmp_path):
    ckpt, _ = run
    out = synthesize_dataset(ckpt, 3, tmp_path / "syn", export="coco", device="cpu")
    coco = json.loads((out / "annotations_coco.json").read_text())
    assert len(coco["images"]) == 3
    n_boxes = sum(len(r["boxes"]) for r in read_dataset(out)[1])
    assert len(coco["annotations"]) == n_boxes > 0
    voc = synthesize_dataset(ckpt, 2, tmp_path / "voc", export="voc", device="cpu")
    assert sorted(p.name for p in (voc / "voc").iterdir()) == ["syn_000000.xml", "syn_000001.xml"]
    with pytest.raises(DataError, match="already exists"):
        synthesize_dataset(ckpt, 2, out, device="cpu")
    replaced = synthesize_dataset(ckpt, 2, out, device="cpu", overwrite=True)
    assert read_dataset(replaced)[0]["n_samples"] == 2
    with pytest.raises(ConfigError, match="unknown export format"):
        synthesize_dataset(ckpt, 2, tmp_path / "z", export="yolo", device="cpu")
    with pytest.raises(ConfigError, match="n must be >= 1"):
        synthesize_dataset(ckpt, 0, tmp_path / "z", device="cpu")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        synthesize_dataset(tmp_path / "none.pt", 2, tmp_path / "z", device="cpu")
