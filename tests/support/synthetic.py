"""Synthetic embeddings shaped like real CLIP vectors, for testing and benchmarking vector indexes.

Uniform random unit vectors are the worst case for approximate search (every point is about
equally far from every other, so no coarse quantizer can help) and make ANN recall look broken.
Real CLIP embeddings are nothing like that: they share a strong common direction (pairwise
cosines around 0.4-0.6 rather than 0), most of their variance lies in a few dozen directions,
and they form many clusters of very different sizes (near-duplicates, series, topics).

``ClusteredDistribution`` models exactly those three properties; ``clustered_vectors`` draws an
indexed set from it and ``clustered_queries`` draws queries from the same distribution that are
not in the set, which is what a recall measurement needs.
"""

from __future__ import annotations

import numpy as np

_CHUNK = 65_536


class ClusteredDistribution:
    """A fixed mixture of anisotropic clusters around a shared mean direction.

    ``n_clusters`` centres live in a random ``intrinsic_dim``-dimensional subspace whose axes
    have a decaying spectrum (axis i has scale proportional to ``1/sqrt(1+i/4)``, centres of norm about 1); cluster weights are
    log-normal (a few large clusters, many small ones). A sample is
    ``mean_weight * m + centre + spread * latent noise + isotropic noise of norm noise``, L2-normalised.
    """

    def __init__(
        self,
        dim: int = 512,
        seed: int = 0,
        *,
        n_clusters: int = 1000,
        intrinsic_dim: int = 64,
        mean_weight: float = 0.8,
        spread: float = 0.5,
        noise: float = 0.25,
    ):
        rng = np.random.default_rng([seed, 0])
        self.dim = dim
        self.r = min(intrinsic_dim, dim)
        self.basis = np.linalg.qr(rng.standard_normal((dim, self.r)))[0].T.astype(np.float32)  # r x dim
        scales = 1.0 / np.sqrt(1.0 + np.arange(self.r) / 4.0)
        self.scales = (scales / np.linalg.norm(scales)).astype(np.float32)  # centres have norm about 1
        mean = rng.standard_normal(dim).astype(np.float32)
        self.mean = mean / np.linalg.norm(mean) * mean_weight
        self.centres = (rng.standard_normal((n_clusters, self.r)) * self.scales).astype(np.float32)
        weights = rng.lognormal(0.0, 1.2, n_clusters)
        self.weights = weights / weights.sum()
        # Some clusters are tight (near-duplicates), others loose (broad topics).
        self.spreads = (spread * rng.uniform(0.3, 1.5, n_clusters)).astype(np.float32)
        self.noise = noise
        self.seed = seed

    def sample(self, n: int, stream: int = 1) -> np.ndarray:
        """``n`` unit vectors (float32, C-contiguous); each ``stream`` is an independent draw."""
        rng = np.random.default_rng([self.seed, stream])
        out = np.empty((n, self.dim), np.float32)
        for start in range(0, n, _CHUNK):
            m = min(_CHUNK, n - start)
            which = rng.choice(len(self.weights), size=m, p=self.weights)
            latent = self.centres[which] + (
                rng.standard_normal((m, self.r), dtype=np.float32) * self.scales * self.spreads[which, None]
            )
            block = latent @ self.basis + self.mean
            block += rng.standard_normal((m, self.dim), dtype=np.float32) * (self.noise / np.sqrt(self.dim))
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            out[start:start + m] = block
        return out


def clustered_vectors(n: int, dim: int = 512, seed: int = 0, **shape) -> np.ndarray:
    """``n`` L2-normalised float32 vectors shaped like CLIP embeddings (see the module docstring)."""
    return ClusteredDistribution(dim, seed, **shape).sample(n, stream=1)


def clustered_queries(n: int, dim: int = 512, seed: int = 0, **shape) -> np.ndarray:
    """``n`` queries from the same distribution as ``clustered_vectors(..., seed)`` but not in it."""
    return ClusteredDistribution(dim, seed, **shape).sample(n, stream=2)


__all__ = ["ClusteredDistribution", "clustered_queries", "clustered_vectors"]
