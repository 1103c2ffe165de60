"""Sentence-encoder embeddings (all-MiniLM-L6-v2 from the PyPI package by default), loaded once per process."""
from __future__ import annotations

import functools

import numpy as np

DEFAULT_ENCODER = "builtin:all-minilm-l6-v2"


@functools.lru_cache(maxsize=4)
def load_encoder(name: str = DEFAULT_ENCODER):
    from sentence_transformers import SentenceTransformer

    from polya.models import resolve

    return SentenceTransformer(resolve(name), device="cpu")


def embed(texts: list[str], name: str = DEFAULT_ENCODER, batch_size: int = 64) -> np.ndarray:
    """Unit-normalised embeddings, shape (len(texts), d)."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    enc = load_encoder(name)
    vecs = enc.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vecs, dtype=np.float32)
