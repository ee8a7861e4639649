"""Shared fixtures. Real inputs only: models and engines come from recipes, cached."""

from __future__ import annotations
