"""Test-wide settings: one torch thread (tiny tensors run faster on one, and CI has two cores),
and the ``device`` fixture: a test that takes it runs on the CPU and, where one is present, on
a CUDA GPU (CI has none, so its CUDA cases show as skipped)."""

import pytest
import torch

torch.set_num_threads(1)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU")),
]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)
