"""Task training in bf16/fp16 (`RecipeSpec.precision`): the same quality as fp32 on a small
case, the choice recorded in the row, and fp32 runs keeping their cache keys."""

from __future__ import annotations

import pytest
import torch

from downstream.models.segment import UNet, decode, fit, segmentation_loss
from gan.train.precision import resolve_precision

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _disks(n: int, seed: int, size: int = 32) -> list[dict[str, torch.Tensor]]:
    """Batches of 8 noisy images, each with one bright disk (radius 3-7 px) to segment."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    batches = []
    for _ in range(n):
        c = torch.randint(8, size - 8, (8, 2), generator=g)
        r = torch.randint(3, 8, (8,), generator=g)
        mask = ((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2 <= r[:, None, None] ** 2).long()
        image = 1.0 * mask + 0.3 * torch.randn(8, size, size, generator=g)
        batches.append({"image": image[:, None].float(), "mask": mask})
    return batches


def _dice(model: torch.nn.Module, batches) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([decode(model(b["image"])) for b in batches]).bool()
    true = torch.cat([b["mask"] for b in batches]).bool()
    return float(2 * (pred & true).sum() / (pred.sum() + true.sum()))


def _train(precision: str) -> tuple[float, float]:
    torch.manual_seed(0)
    model = UNet(1, 2, base=8, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    out = fit(model, opt, _disks(100, seed=1), torch.device("cpu"), steps=100,
              loss_fn=lambda m, b: segmentation_loss(m, b, torch.device("cpu")),
              precision=resolve_precision(precision, torch.device("cpu")))
    return _dice(model, _disks(4, seed=2)), out["loss"]


def test_bf16_training_reaches_the_quality_of_fp32():
    dice32, loss32 = _train("fp32")
    dice16, loss16 = _train("bf16")
    # The disks are easy: both learn them (measured: fp32 0.967, bf16 0.969); bf16's 8-bit mantissa
    # moves the trajectory, not where it ends up.
    assert dice32 > 0.8 and dice16 > 0.8
    assert abs(dice16 - dice32) < 0.05
    assert loss16 == pytest.approx(loss32, rel=0.15)


def test_fp16_trains_with_a_gradient_scaler(monkeypatch):
    scaled = []
    real = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale", lambda self, x: scaled.append(1) or real(self, x))
    torch.manual_seed(0)
    model = UNet(1, 2, base=4, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, opt, _disks(3, seed=1), torch.device("cpu"), steps=3,
        loss_fn=lambda m, b: segmentation_loss(m, b, torch.device("cpu")),
        precision=resolve_precision("fp16", torch.device("cpu")))
    assert len(scaled) == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_bad_task_precision_is_refused_before_any_work():
    from augment.errors import ConfigError
    from downstream.config import experiment_from_dict

    raw = {"data": {"phantom": "head-ich"}, "budgets": [1], "strategies": [{"name": "none"}],
           "tasks": {"segment": {"precision": "fp8"}}}
    with pytest.raises(ConfigError, match="tasks.segment: precision must be auto, fp32, bf16 or fp16"):
        experiment_from_dict(raw)
