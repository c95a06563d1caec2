"""The README's dataloader example runs as written, on a phantom and a tiny pix2pix run."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from augment.phantoms.render import write_phantom
from gan.train.trainer import train_generator

README = Path(__file__).resolve().parent.parent / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text[text.index("## Generators in your own dataloader") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_dataloader_example_runs(tmp_path, capsys):
    data = write_phantom(tmp_path / "data", "head-ich", 16, size=64, seed=0, slices_per_patient=8)
    run = train_generator(
        "pix2pix", data, None, tmp_path / "run", steps=1, batch_size=2, seed=0, device="cpu",
        model_config={"ngf": 4, "ndf": 4, "n_layers_d": 2}, progress=False, grid_n=0,
    )  # fmt: skip
    scope = {"DATA": data, "CHECKPOINT": run["checkpoint"]}
    exec(compile(_example(), str(README), "exec"), scope)  # noqa: S102 (our own README)
    batch = scope["batch"]
    assert batch["image"].shape == (4, 1, 64, 64)
    assert batch["image"].dtype == torch.float32 and batch["image"].abs().max() <= 1.0
    assert batch["synthetic"].dtype == torch.bool
    mixed = scope["mixed"]
    flags = [mixed[i].meta["synthetic"] for i in range(len(mixed))]
    assert any(flags) and not all(flags)  # ratio 0.5 over 16 items: both kinds drawn
    assert "torch.Size([4, 1, 64, 64])" in capsys.readouterr().out
