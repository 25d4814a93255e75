"""Visual-token rules of the 2025 open-model frontier, one function per family, each written from
the processor that ships in transformers (the version is in tests/budget_vectors/vectors.json).

This module imports neither torch nor numpy.
"""

from __future__ import annotations

PRESETS: list = []
