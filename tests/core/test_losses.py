import numpy as np
import pytest
import torch

from aiaudio.methods.losses import moco_infonce, moco_v3_contrastive, nt_xent
from aiaudio.methods.moco import MoCoV2, cosine_momentum


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


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_moco_infonce_matches_the_formula():
    g = torch.Generator().manual_seed(1)
    q, k, queue = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g), torch.randn(10, 6, generator=g)
    queue = torch.nn.functional.normalize(queue, dim=1)
    tau = 0.2
    qn, kn, qu = _unit(q.numpy().astype(np.float64)), _unit(k.numpy().astype(np.float64)), queue.numpy().astype(np.float64)
    expected = np.mean([
        -np.log(np.exp(qn[b] @ kn[b] / tau) / (np.exp(qn[b] @ kn[b] / tau) + np.exp(qu @ qn[b] / tau).sum()))
        for b in range(4)
    ])
    assert moco_infonce(q, k, queue, tau).item() == pytest.approx(expected, rel=1e-5)


def test_moco_v3_contrastive_matches_the_formula_and_normalises_both_sides():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    tau = 0.5
    qn, kn = _unit(q.numpy().astype(np.float64)), _unit(k.numpy().astype(np.float64))
    logits = qn @ kn.T / tau
    expected = np.mean([-(logits[b, b] - np.log(np.exp(logits[b]).sum())) for b in range(5)]) * 2 * tau
    assert moco_v3_contrastive(q, k, tau).item() == pytest.approx(expected, rel=1e-5)
    # scale-invariant in both q and k (the public code's forgotten normalisation would break this)
    assert moco_v3_contrastive(3 * q, 0.1 * k, tau).item() == pytest.approx(expected, rel=1e-5)


def test_cosine_momentum_rises_from_its_base_to_one():
    assert cosine_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 50, 100) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 100, 100) == pytest.approx(1.0)


def test_moco_v2_enqueue_wraps_around_its_own_queue_only():
    encoder = torch.nn.Linear(3, 4)
    encoder.num_features = 4
    method = MoCoV2(_Wrapped(encoder), torch.nn.Linear(4, 2), torch.eye(3), queue_size=5)
    before = method.queue.clone()
    keys = torch.nn.functional.normalize(torch.randn(4, 2), dim=1)
    method.enqueue(torch.tensor(1), keys)
    method.enqueue(torch.tensor(1), keys[:3])
    assert method.queue_ptr.tolist() == [0, 2, 0]
    # the first batch filled slots 0-3; the second wrapped around: slots 4, 0, 1 took keys 0, 1, 2
    torch.testing.assert_close(method.queue[1], keys[[1, 2, 2, 3, 0]])
    torch.testing.assert_close(method.queue[[0, 2]], before[[0, 2]], rtol=0, atol=0)
    assert int(method.queue_index(torch.tensor([0.0, 0.0, 1.0]))) == 2


class _Wrapped(torch.nn.Module):
    """A linear layer with the encoder signature ``forward(x, i)``."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.linear, self.num_features = linear, linear.out_features

    def forward(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
