"""Container backends; :func:`make_backend` picks one by name."""

from __future__ import annotations

from hyperhive.common.config import Settings
from hyperhive.common.errors import ConfigError
from hyperhive.lifecycle.backends.base import AgentSpec, Backend, Exit


def make_backend(settings: Settings) -> Backend:
    """The backend named by ``settings.lifecycle.backend``.

    Raises:
        ConfigError: unknown backend, or its settings are incomplete.
    """
    kind = settings.lifecycle.backend
    if kind == "process":
        from hyperhive.lifecycle.backends.process import ProcessBackend

        return ProcessBackend(settings)
    if kind == "nixos":
        from hyperhive.lifecycle.backends.nixos import NixosBackend

        return NixosBackend(settings)
    raise ConfigError(f"unknown lifecycle.backend {kind!r}: use process or nixos")


__all__ = ["AgentSpec", "Backend", "Exit", "make_backend"]
