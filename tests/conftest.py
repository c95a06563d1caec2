"""What the test suite shares: the tiny sizes the generator tests train at.

Generators train at widths so small that a step takes well under a second on a CPU;
every other option stays at the model's default or what the data implies (slice size,
window, classes: `gan.train_data.data_defaults`). A new generator adds its entry here:
`tests/gan/test_contract.py` fails for a registered generator without one.
"""

from __future__ import annotations

import copy

import pytest

TINY_GENERATORS: dict[str, dict] = {
    "dcgan": {"nz": 8, "ngf": 4, "ndf": 4, "roi_size": 32},
    "pix2pix": {"ngf": 4, "ndf": 4, "n_layers_d": 2},
    "cyclegan": {"ngf": 4, "ndf": 4, "n_blocks": 1, "n_layers_d": 2, "pool_size": 2},
}
# Batch per step for those runs (pix2pix and CycleGAN draw whole slices; DCGAN lesion ROIs).
TINY_BATCH: dict[str, int] = {"dcgan": 4, "pix2pix": 2, "cyclegan": 1}


@pytest.fixture
def tiny_generator():
    """``tiny_generator(name, **overrides)``: a fresh copy of a generator's tiny options."""

    def make(name: str, **overrides) -> dict:
        return {**copy.deepcopy(TINY_GENERATORS[name]), **overrides}

    return make
