"""The plugin manager: built-ins by module path, third-party plugins by entry point.

Built-in backends live in ``plugins/`` as packages shaped like third-party plugins and are
registered from ``DEFAULT_PLUGINS``. Third-party packages declare an entry point in the
``lookalike`` group; ``LOOKALIKE_PLUGINS`` (a comma-separated allow-list of entry point
names, or ``none``) restricts which of them load.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pluggy

from lookalike import hookspecs
from lookalike.contracts import BlobStore, Embedder, SearchBackend
from lookalike.errors import ConfigurationError

DEFAULT_PLUGINS: tuple[str, ...] = ("lookalike_local", "lookalike_aws", "lookalike_opensearch", "lookalike_pixlab",
                                     "lookalike_marqo")
ENTRY_POINT_GROUP = "lookalike"


#: What each kind of plugin must subclass.
BASES: dict[str, type] = {"embedders": Embedder, "search_backends": SearchBackend, "blob_stores": BlobStore}


@dataclass
class Registry:
    """What the plugins registered, by kind and name: a class, or a ``"module:Class"``
    reference imported on first lookup (so a cold start imports only the backends its
    tenants use: the built-ins register references)."""

    embedders: dict[str, type[Embedder] | str] = field(default_factory=dict)
    search_backends: dict[str, type[SearchBackend] | str] = field(default_factory=dict)
    blob_stores: dict[str, type[BlobStore] | str] = field(default_factory=dict)

    def lookup(self, kind: str, name: str) -> type[Any]:
        table: dict[str, type[Any] | str] = getattr(self, kind)
        try:
            entry = table[name]
        except KeyError:
            known = ", ".join(sorted(table)) or "none"
            raise ConfigurationError(f"unknown {kind[:-1].replace('_', ' ')} {name!r} (known: {known})") from None
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            if not (isinstance(entry, type) and issubclass(entry, BASES[kind])):
                raise ConfigurationError(f"{kind} plugin {name!r} is not a {BASES[kind].__name__}")
            table[name] = entry
        return entry


def _allow_list(raw: str | None) -> set[str] | None:
    """None means every installed entry point may load."""
    if raw is None or raw.strip() in ("", "*", "all"):
        return None
    if raw.strip().lower() == "none":
        return set()
    return {name.strip() for name in raw.split(",") if name.strip()}


def make_plugin_manager(
    builtins: tuple[str, ...] = DEFAULT_PLUGINS,
    extra_plugins: tuple[object, ...] = (),
    load_entry_points: bool = True,
    allow: str | None = None,
) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for module_path in builtins:
        pm.register(importlib.import_module(module_path), name=module_path)
    if load_entry_points:
        allowed = _allow_list(allow if allow is not None else os.environ.get("LOOKALIKE_PLUGINS"))
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if allowed is not None and ep.name not in allowed:
                continue
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            pm.register(ep.load(), name=ep.name)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()  # a misspelled hookimpl fails at start-up, not at first use
    return pm


def collect(pm: pluggy.PluginManager) -> Registry:
    registry = Registry()
    for kind, base in BASES.items():
        table: dict[str, type[Any] | str] = getattr(registry, kind)

        def register(name: str, cls: type | str, _table: dict = table, _base: type = base, _kind: str = kind) -> None:
            reference = isinstance(cls, str) and re.fullmatch(r"[\w.]+:\w+", cls)
            if not reference and not (isinstance(cls, type) and issubclass(cls, _base)):
                raise ConfigurationError(f"{_kind} plugin {name!r} is not a {_base.__name__}")
            if name in _table and _table[name] != cls:  # a class by identity, a reference by value
                raise ConfigurationError(f"{_kind} name {name!r} registered twice")
            _table[name] = cls

        getattr(pm.hook, f"register_{kind}")(register=register)
    return registry


@cache
def default_registry() -> Registry:
    """The process-wide registry, built once per cold start."""
    return collect(make_plugin_manager())
