"""What the test suite shares: the tiny sizes the generator tests train at.

They are each generator's ``tiny`` preset (`gan.registry`): widths so small that a step
takes well under a second on a CPU; every other option stays at the model's default or
what the data implies (slice size, window, classes: `gan.train.data.data_defaults`). A
new generator brings its own with its registry entry.
"""

from __future__ import annotations

import copy

import pytest
import torch

from gan.registry import REGISTRY

TINY_GENERATORS: dict[str, dict] = {n: e.presets["tiny"]["config"] for n, e in REGISTRY.items()}
# Batch per step for those runs (pix2pix and CycleGAN draw whole slices; DCGAN lesion ROIs).
TINY_BATCH: dict[str, int] = {n: e.presets["tiny"]["batch_size"] for n, e in REGISTRY.items()}


@pytest.fixture
def tiny_generator():
    """``tiny_generator(name, **overrides)``: a fresh copy of a generator's tiny options."""

    def make(name: str, **overrides) -> dict:
        return {**copy.deepcopy(TINY_GENERATORS[name]), **overrides}

    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures(...)``):
    tiny nets on the 2 shared cores only contend with more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_phantom_pair(root, n: int, size: int, **kw):
    """Head-ICH phantom folders of the same anatomy in scanner domains A and B (2 slices
    per patient), for tests that train generators."""
    from augment.phantoms.render import write_phantom

    kw = dict(size=size, seed=0, slices_per_patient=2, **kw)
    return tuple(write_phantom(root / d, "head-ich", n, domain=d, **kw) for d in "AB")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Eight 64 px head-ICH slices in domains A and B (a module may define its own)."""
    return write_phantom_pair(tmp_path_factory.mktemp("phantom"), 8, 64)
