"""Importing this module registers the built-in segmenters (each module registers itself on import)."""

from __future__ import annotations
