"""Lookalike's plugin hooks.

Few hooks, each named ``register_<thing>(register)``: the core passes a callback and keeps
the registry itself (the shape of simonw/llm's and tox 4's hookspecs). A plugin module
implements any of them with ``@lookalike.hookimpl``. ``register`` takes the class, or a
``"module:Class"`` reference that is imported only when configuration first names it (a
Lambda cold start then never imports the backends its tenants do not use).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "lookalike"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_embedders(register: Callable[[str, type | str], None]) -> None:
    """Register embedder classes (subclasses of :class:`lookalike.contracts.Embedder`).

    :param register: call ``register(name, cls)`` once per embedder; ``name`` is what
        tenant configuration uses in ``embedder.name``. Names must be unique.
    """


@hookspec
def register_search_backends(register: Callable[[str, type | str], None]) -> None:
    """Register search backend classes (subclasses of :class:`lookalike.contracts.SearchBackend`).

    :param register: call ``register(name, cls)`` once per backend; ``name`` is what tenant
        configuration uses in ``search.name``. Names must be unique.
    """


@hookspec
def register_blob_stores(register: Callable[[str, type | str], None]) -> None:
    """Register blob store classes (subclasses of :class:`lookalike.contracts.BlobStore`).

    :param register: call ``register(name, cls)`` once per store; ``name`` is what
        configuration uses in ``blobs.name``. Names must be unique.
    """


@hookspec
def register_commands(register: Callable[[Any], None]) -> None:
    """Add commands to the ``lookalike`` command line (a plugin that owns files to build, such
    as model conversions, adds the command that builds them).

    :param register: call ``register(command)`` once per click command or group. Import what a
        command needs inside it: every ``lookalike`` invocation registers them all.
    """
