"""Hadamard construction for non-power-of-two sizes (Paley I ⊗ Sylvester)."""
from __future__ import annotations

import pytest
import scipy.linalg
import torch

from refimpl.core.hadamard import hadamard, is_supported, paley, sylvester


@pytest.mark.parametrize("n", [1, 12, 64, 96, 384, 576, 1536])
def test_orthogonal_with_equal_magnitude_entries(n):
    H = hadamard(n, dtype=torch.float64)
    assert torch.allclose(H @ H.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    # every entry is ±1/√n: a rotation that spreads one coordinate evenly over all n
    assert torch.allclose(H.abs(), torch.full_like(H, n ** -0.5))


def test_sylvester_matches_scipy():
    assert torch.equal(sylvester(64), torch.from_numpy(scipy.linalg.hadamard(64)).double())


@pytest.mark.parametrize("q", [3, 7, 11, 19, 71])
def test_paley_is_an_integer_hadamard_matrix(q):
    H = paley(q)
    assert set(H.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(H @ H.T, (q + 1) * torch.eye(q + 1, dtype=torch.float64))


@pytest.mark.parametrize("n", [0, 6, 7, 36, 100, -4, 2.0, True, "64"])
def test_unsupported_size_is_a_value_error_naming_n(n):
    assert not is_supported(n)
    with pytest.raises(ValueError, match=r"^n: "):
        hadamard(n)


def test_dtype_and_device_follow_the_arguments():
    H = hadamard(48, dtype=torch.float16)
    assert H.dtype == torch.float16 and H.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_hadamard():
    H = hadamard(576, device="cuda")
    assert H.is_cuda and torch.allclose(H @ H.T, torch.eye(576, device="cuda"), atol=1e-5)
