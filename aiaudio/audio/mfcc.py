"""MFCC statistics of log-mel segments: the no-learning floor of the few-shot tables.

An MFCC is the orthonormal DCT-II of a log-mel frame over its mel bands (librosa's ``mfcc(S=...)``); a segment is
summarised by the mean and standard deviation of its first ``n_mfcc`` coefficients over time. The few-shot log-mel
store keeps log-mels normalised by one global mean and std: since the DCT is linear, that only scales every
coefficient by the same factor and shifts coefficient 0, which the per-dimension standardisation of the readout
removes (:func:`~aiaudio.eval.fewshot.floor_row`).
"""

from __future__ import annotations

import math

import torch


def dct_matrix(n_mels: int, n_mfcc: int) -> torch.Tensor:
    """The orthonormal DCT-II ``[n_mfcc, n_mels]``: row k is ``c_k cos(pi k (2 m + 1) / (2 n_mels))`` with
    ``c_0 = sqrt(1 / n_mels)`` and ``c_k = sqrt(2 / n_mels)``."""
    if not 1 <= n_mfcc <= n_mels:
        raise ValueError(f"n_mfcc must lie in [1, n_mels = {n_mels}], got {n_mfcc}")
    k = torch.arange(n_mfcc, dtype=torch.float64)[:, None]
    m = torch.arange(n_mels, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * k * (2 * m + 1) / (2 * n_mels)) * math.sqrt(2.0 / n_mels)
    basis[0] /= math.sqrt(2.0)
    return basis.float()


def mfcc_statistics(logmels: torch.Tensor, n_mfcc: int = 20) -> torch.Tensor:
    """``[B, 2 * n_mfcc]``: per segment, the mean over time of each of the first ``n_mfcc`` MFCCs, then their
    standard deviations, from log-mels ``[B, n_mels, T]`` (or ``[B, 1, n_mels, T]``)."""
    if logmels.dim() == 4:
        logmels = logmels.squeeze(1)
    if logmels.dim() != 3:
        raise ValueError(f"log-mels must be [B, n_mels, T] or [B, 1, n_mels, T], got {list(logmels.shape)}")
    coefficients = torch.einsum("km,bmt->bkt", dct_matrix(logmels.shape[1], n_mfcc).to(logmels.device),
                                logmels.float())
    return torch.cat([coefficients.mean(-1), coefficients.std(-1, correction=0)], dim=1)
