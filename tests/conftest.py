"""Shared fixtures. RSA keys are slow to make, so a small pool is generated once per session."""

from __future__ import annotations

import functools

import pytest

from p2ptls import Identity


@functools.cache
def identity_pool() -> tuple[Identity, ...]:
    return tuple(Identity.generate(2048) for _ in range(4))


@pytest.fixture
def identities() -> tuple[Identity, ...]:
    """Four RSA-2048 identities (shared across the session; they are immutable)."""
    return identity_pool()


@pytest.fixture
def pair_identities(identities: tuple[Identity, ...]) -> tuple[Identity, Identity]:
    return identities[0], identities[1]
