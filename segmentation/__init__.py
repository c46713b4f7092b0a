"""Foreground masks, so that queries match objects rather than their surroundings (not built yet).

The engine is ready for it: every pooling function in :mod:`retrieval.functional` and
``Embedder.embed_batch`` take an optional foreground mask ``(N, 1, H, W)`` and pool only over it
(an empty mask falls back to the whole image).
"""
