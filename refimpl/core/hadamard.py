"""Orthogonal Hadamard matrices for sizes that are not powers of two.

A Hadamard matrix H_n has entries ±1 and H_n H_nᵀ = n·I, so H_n/√n is orthogonal: rotating
a vector by it spreads any single large coordinate evenly over all n coordinates (what
QuaRot uses to remove outliers). Two classical constructions are combined:

    Sylvester:  H_1 = [1],  H_2k = [[H_k, H_k], [H_k, -H_k]]          (sizes 2^k)
    Paley I:    q prime, q ≡ 3 (mod 4):  H_{q+1} = I + S, where S is the skew-symmetric
                Jacobsthal core built from the quadratic character χ of GF(q)   (sizes q+1)
    Kronecker:  H_a ⊗ H_b is Hadamard of size a·b

so every n = (q+1)·2^k or 2^k is covered, with one Paley factor at most (`_factor` tries the
largest power of two first), e.g. 384 = 12·32 and 1536 = 12·128 (q = 11 gives H_12), and
576 = 72·8 (q = 71): 576 = 12·48 is not used, 48 not being a power of two.
"""
from __future__ import annotations

import torch


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(q ** 0.5) + 1))


def sylvester(n: int) -> torch.Tensor:
    """±1 Hadamard matrix of size n = 2^k (float64)."""
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def paley(q: int) -> torch.Tensor:
    """±1 Hadamard matrix of size q+1 for a prime q ≡ 3 (mod 4) (Paley construction I, float64)."""
    squares = {(x * x) % q for x in range(1, q)}
    # χ(a) = +1 for non-zero squares, −1 for non-squares, 0 for a = 0
    chi = [0] + [1 if a in squares else -1 for a in range(1, q)]
    # Jacobsthal matrix Q_ij = χ(j − i); skew-symmetric because χ(−1) = −1 when q ≡ 3 (mod 4)
    Q = torch.tensor([[chi[(j - i) % q] for j in range(q)] for i in range(q)], dtype=torch.float64)
    # S = [[0, 1ᵀ], [−1, Q]] is skew-symmetric with S Sᵀ = q·I, hence H = I + S is Hadamard
    S = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    S[0, 1:] = 1
    S[1:, 0] = -1
    S[1:, 1:] = Q
    return torch.eye(q + 1, dtype=torch.float64) + S


def _factor(n: int) -> tuple[int, int] | None:
    """(m, 2^k) with n = m·2^k and m = 1 or m = q+1 for a Paley prime q; None when impossible."""
    p = 1
    while n % (2 * p) == 0:
        p *= 2
    # try the largest power of two first: the Paley part then stays as small as possible
    while p >= 1:
        m = n // p
        if m == 1 or (m % 4 == 0 and _is_prime(m - 1)):
            return m, p
        p //= 2
    return None


def is_supported(n: int) -> bool:
    """Whether `hadamard(n)` can build a matrix of this size."""
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and _factor(n) is not None


def hadamard(n: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Orthogonal Hadamard matrix H/√n of size n (H Hᵀ = I); ValueError for unsupported n."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer size, got {n!r}")
    f = _factor(n)
    if f is None:
        raise ValueError(f"n: no Hadamard construction for size {n}; supported sizes are 2^k·m with "
                         f"m = 1 or m = q+1 for a prime q ≡ 3 (mod 4), e.g. 384, 576, 1536")
    m, p = f
    H = sylvester(p) if m == 1 else torch.kron(paley(m - 1), sylvester(p))
    return (H / n ** 0.5).to(dtype=dtype, device=device)
