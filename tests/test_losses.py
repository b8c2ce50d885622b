import numpy as np
import pytest
import torch

from aiaudio.methods.losses import nt_xent


def reference_nt_xent(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """NT-Xent written out term by term from Chen et al. (2020), eq. (1), averaged over all 2B anchors."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = z.shape[0]
    b = n // 2
    total = 0.0
    for a in range(n):
        pos = (a + b) % n
        sims = [np.exp(z[a] @ z[k] / tau) for k in range(n) if k != a]
        total += -np.log(np.exp(z[a] @ z[pos] / tau) / sum(sims))
    return total / n


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_matches_the_formula(tau):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    got = nt_xent(z1, z2, tau).item()
    assert got == pytest.approx(reference_nt_xent(z1.numpy(), z2.numpy(), tau), rel=1e-5)


def test_nt_xent_is_low_for_aligned_views_and_has_gradients():
    z = torch.randn(8, 16, requires_grad=True)
    aligned = nt_xent(z, z.detach() * 3.0, 0.1)  # scale-invariant: the same directions
    shuffled = nt_xent(z, z.detach()[torch.randperm(8)], 0.1)
    assert aligned.item() < shuffled.item()
    aligned.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_nt_xent_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3))
