"""Vendi score: the effective number of distinct items, exp(entropy of the similarity kernel's eigenvalues)."""
from __future__ import annotations

import numpy as np


def vendi_from_embeddings(x: np.ndarray) -> float:
    """Vendi score with the cosine kernel of (row-wise) embeddings; 1 for identical items, n for orthogonal."""
    n = x.shape[0]
    if n == 0:
        return 0.0
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    # the non-zero eigenvalues of X X^T / n equal those of X^T X / n: use the smaller matrix
    gram = (x.T @ x) / n if x.shape[1] < n else (x @ x.T) / n
    eig = np.clip(np.linalg.eigvalsh(gram.astype(np.float64)), 0.0, None)
    eig = eig[eig > 1e-12]
    return float(np.exp(-np.sum(eig * np.log(eig))))


def vendi_of_texts(texts: list[str], encoder: str | None = None) -> float:
    from polya.analysis.embeddings import DEFAULT_ENCODER, embed

    return vendi_from_embeddings(embed(texts, encoder or DEFAULT_ENCODER))
