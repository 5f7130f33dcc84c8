"""The hook contract (with a plugin defined here), the entry-point allow-list, tenant fallbacks."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from lookalike import hookspecs, plugins
from lookalike.config import (
    BackendChoice,
    ConfigSource,
    DeploymentConfig,
    Limits,
    Settings,
    hash_key,
    parse_config,
)
from lookalike.errors import ConfigurationError, NotFound, Unauthorized
from lookalike.hookspecs import hookimpl
from lookalike.process import Lookalike
from tests.conftest import ROOT, write_deployment
from tests.fakes import ColorHistogramEmbedder, MemoryBlobStore, MemoryIndex, TestPlugin

HOOKS = [name for name in dir(hookspecs) if name.startswith("register_")]


def test_builtin_plugins_register_every_kind() -> None:
    registry = plugins.collect(plugins.make_plugin_manager(load_entry_points=False))
    assert set(registry.embedders) >= {"efficientnet-lite0"}
    assert set(registry.search_backends) >= {"local"}
    assert set(registry.blob_stores) >= {"filesystem", "s3"}


def test_plugin_defined_in_tests_registers_through_every_hook() -> None:
    registry = plugins.collect(plugins.make_plugin_manager(extra_plugins=(TestPlugin(),), load_entry_points=False))
    assert registry.embedders["test-color"] is ColorHistogramEmbedder
    assert registry.search_backends["memory"] is MemoryIndex
    assert registry.blob_stores["memory"] is MemoryBlobStore
    assert registry.lookup("search_backends", "memory") is MemoryIndex
    with pytest.raises(ConfigurationError, match="unknown search backend 'nope'"):
        registry.lookup("search_backends", "nope")


def test_misspelled_hookimpl_fails_at_startup() -> None:
    class Typo:
        @hookimpl
        def register_embeders(self, register: Callable) -> None:  # one 'd' short
            pass

    with pytest.raises(Exception, match="register_embeders"):
        plugins.make_plugin_manager(extra_plugins=(Typo(),), load_entry_points=False)


def test_registering_a_non_backend_or_a_name_twice_fails() -> None:
    class Wrong:
        @hookimpl
        def register_search_backends(self, register: Callable) -> None:
            register("bad", dict)

    with pytest.raises(ConfigurationError, match="not a SearchBackend"):
        plugins.collect(plugins.make_plugin_manager(extra_plugins=(Wrong(),), load_entry_points=False))

    class Twice:
        @hookimpl
        def register_search_backends(self, register: Callable) -> None:
            register("local", MemoryIndex)  # "local" is the built-in's name

    with pytest.raises(ConfigurationError, match="registered twice"):
        plugins.collect(plugins.make_plugin_manager(extra_plugins=(Twice(),), load_entry_points=False))


def test_entry_points_respect_the_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []

    def entry(name: str) -> SimpleNamespace:
        def load() -> TestPlugin:
            loaded.append(name)
            return TestPlugin()
        return SimpleNamespace(name=name, load=load)

    monkeypatch.setattr("importlib.metadata.entry_points",
                        lambda group: [entry("third")] if group == "lookalike" else [])
    pm = plugins.make_plugin_manager(allow="none")
    assert loaded == [] and "memory" not in plugins.collect(pm).search_backends
    pm = plugins.make_plugin_manager(allow="other,names")
    assert loaded == []
    pm = plugins.make_plugin_manager(allow="third")
    assert loaded == ["third"] and "memory" in plugins.collect(pm).search_backends
    monkeypatch.setenv("LOOKALIKE_PLUGINS", "none")
    loaded.clear()
    plugins.make_plugin_manager()
    assert loaded == []


def test_every_hook_is_documented_and_tested() -> None:
    readme = (ROOT / "README.md").read_text()
    this_file = Path(__file__).read_text()
    for hook in HOOKS:
        assert f"`{hook}" in readme, f"README does not document {hook}"
        assert getattr(hookspecs, hook).__doc__ and ":param register:" in getattr(hookspecs, hook).__doc__
        assert re.search(rf"def {hook}\(", (ROOT / "tests" / "fakes.py").read_text() + this_file), hook


# ---------------------------------------------------------------- tenant configuration


def config_with(tenant: dict, defaults: dict | None = None) -> DeploymentConfig:
    return parse_config({"defaults": defaults or {}, "tenants": {"acme": tenant}})


def test_tenant_falls_back_to_deployment_defaults_then_builtins() -> None:
    bare = config_with({})
    assert bare.embedder_for("acme") == BackendChoice(name="efficientnet-lite0")
    assert bare.search_for("acme") == BackendChoice(name="local")
    assert bare.blobs_for("acme") == BackendChoice(name="filesystem")
    assert bare.limits_for("acme") == Limits()
    assert bare.collection_settings("acme", "anything").reverse_search_enabled is True

    defaults = {"search": {"name": "local", "options": {"path": "/d.sqlite"}}, "limits": {"max_limit": 50},
                "blobs": {"name": "s3", "options": {"bucket": "b"}}}
    inherited = config_with({}, defaults)
    assert inherited.search_for("acme").options == {"path": "/d.sqlite"}
    assert inherited.blobs_for("acme").name == "s3"
    assert inherited.limits_for("acme").max_limit == 50

    own = config_with({"search": {"name": "local", "options": {"extra": 1}}, "blobs": {"name": "filesystem"},
                       "limits": {"max_limit": 5}, "collections": {"shop": {"reverse_search_enabled": False}}},
                      defaults)
    assert own.search_for("acme").options == {"path": "/d.sqlite", "extra": 1}  # same backend: options merged
    assert own.blobs_for("acme") == BackendChoice(name="filesystem")  # other backend: replaced whole
    assert own.limits_for("acme").max_limit == 5
    assert own.collection_settings("acme", "shop").reverse_search_enabled is False


def test_keys_are_hashed_and_rotate() -> None:
    cfg = config_with({"api_keys": [{"sha256": hash_key("old")}, {"sha256": hash_key("new")}]})
    assert cfg.tenant_for_key("old") == "acme" and cfg.tenant_for_key("new") == "acme"
    assert cfg.tenant_for_key("other") is None and cfg.tenant_for_key("") is None and cfg.tenant_for_key(None) is None
    assert "old" not in cfg.model_dump_json()


@pytest.mark.parametrize("bad", [
    {"tenants": {"../x": {}}},
    {"tenants": {"a": {"api_keys": [{"sha256": "short"}]}}},
    {"tenants": {"a": {"unknown": 1}}},
    {"defaults": {"limits": {"max_limit": "many"}}},
    "tenants: [unclosed",
])
def test_invalid_config_is_a_configuration_error(bad: object) -> None:
    with pytest.raises(ConfigurationError):
        parse_config(bad)  # type: ignore[arg-type]


def test_file_source_rereads_after_change(tmp_path: Path) -> None:
    path = write_deployment(tmp_path)
    source = ConfigSource(Settings(home=tmp_path))
    assert set(source.get().tenants) == {"demo", "globex"}
    cfg = parse_config(path.read_text())
    cfg.tenants.pop("globex")
    path.write_text(cfg.model_dump_json())
    import os
    os.utime(path, ns=(1, 1))
    assert set(source.get().tenants) == {"demo"}
    with pytest.raises(ConfigurationError, match="lookalike init"):
        ConfigSource(Settings(home=tmp_path / "none")).get()


def test_stack_bucket_is_the_default_blob_store_unless_the_document_picks_one(tmp_path: Path) -> None:
    write_deployment(tmp_path)
    on_stack = ConfigSource(Settings(home=tmp_path, blobs_bucket="stack-anchors")).get()
    assert on_stack.blobs_for("demo").model_dump() == {"name": "s3", "options": {"bucket": "stack-anchors"}}
    write_deployment(tmp_path, {"defaults": {"blobs": {"name": "filesystem", "options": {}}}})
    explicit = ConfigSource(Settings(home=tmp_path, blobs_bucket="stack-anchors")).get()
    assert explicit.blobs_for("demo").name == "filesystem"
    assert ConfigSource(Settings(home=tmp_path)).get().blobs_for("demo").name == "filesystem"


def test_stack_domain_is_the_default_search_backend_unless_the_document_picks_one(tmp_path: Path) -> None:
    write_deployment(tmp_path)
    stack = {"blobs_bucket": "stack-anchors", "opensearch_endpoint": "https://search-x.us-east-1.es.amazonaws.com",
             "opensearch_index_prefix": "shop"}
    on_stack = ConfigSource(Settings(home=tmp_path, **stack)).get()
    assert on_stack.search_for("demo").model_dump() == {"name": "opensearch", "options": {
        "url": "https://search-x.us-east-1.es.amazonaws.com", "auth": "sigv4", "index_prefix": "shop"}}
    write_deployment(tmp_path, {"defaults": {"search": {"name": "local", "options": {}}}})
    assert ConfigSource(Settings(home=tmp_path, **stack)).get().search_for("demo").name == "local"


def test_lambda_refuses_backends_that_keep_data_in_its_own_tmp(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Lambda execution environment has its own /tmp: an index or images kept there would
    be seen by no other function and lost with the environment."""
    write_deployment(tmp_path, {"defaults": {"search": {"name": "local", "options": {}}}})
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "lookalike-ReverseSearchFunction")
    with pytest.raises(ConfigurationError, match="configure search: opensearch"):
        Lookalike(Settings(home=tmp_path)).tenant("demo")
    write_deployment(tmp_path, {"defaults": {"search": {"name": "memory", "options": {}},
                                             "blobs": {"name": "filesystem", "options": {}}}})
    registry = plugins.collect(plugins.make_plugin_manager(extra_plugins=(TestPlugin(),), load_entry_points=False))
    app = Lookalike(Settings(home=tmp_path), registry=registry)
    with pytest.raises(ConfigurationError, match="configure blobs: s3"):
        app.tenant("demo")


def test_ssm_source_over_http(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """On AWS the same document comes from SSM through Powertools parameters, with a TTL."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", moto_server)
    ssm = boto3.client("ssm")
    doc = DeploymentConfig.model_validate({"tenants": {"acme": {"api_keys": [{"sha256": hash_key("k")}]}}})
    ssm.put_parameter(Name="/lookalike/test-config", Value=doc.model_dump_json(), Type="SecureString", Overwrite=True)
    source = ConfigSource(Settings(home=tmp_path, config_ssm="/lookalike/test-config", config_ttl=0))
    assert source.get().tenant_for_key("k") == "acme"
    doc.tenants["acme"].api_keys[0].sha256 = hash_key("rotated")
    ssm.put_parameter(Name="/lookalike/test-config", Value=doc.model_dump_json(), Type="SecureString", Overwrite=True)
    assert source.get().tenant_for_key("rotated") == "acme"  # TTL 0: read again
    with pytest.raises(ConfigurationError):
        ConfigSource(Settings(home=tmp_path, config_ssm="/lookalike/missing")).get()


def test_backends_built_once_and_shared(deployment: Path) -> None:
    app = Lookalike(Settings(home=deployment))
    a, b = app.tenant("demo"), app.tenant("globex")
    assert a.search_backend.inner is b.search_backend.inner and a.embedder is b.embedder  # under per-tenant aliases
    assert app.tenant("demo") is a  # cached for the process (a Lambda cold start)
    with pytest.raises(Unauthorized):
        app.authenticate("wrong")
    assert app.authenticate("demo-key-rotated") is a
    with pytest.raises(NotFound):
        app.tenant("nobody")


def test_unknown_backend_or_bad_options_is_a_configuration_error(tmp_path: Path) -> None:
    write_deployment(tmp_path, {"defaults": {"search": {"name": "nope"}}})
    with pytest.raises(ConfigurationError, match="unknown search backend"):
        Lookalike(Settings(home=tmp_path)).tenant("demo")
    write_deployment(tmp_path, {"defaults": {"search": {"name": "local", "options": {"bogus": 1}}}})
    with pytest.raises(ConfigurationError, match="invalid options for local"):
        Lookalike(Settings(home=tmp_path)).tenant("demo")


def test_plugins_own_their_commands() -> None:
    """`lookalike models build` is the local plugin's (register_commands), so the core CLI no
    longer imports a plugin to offer it (issue 27); a third-party plugin adds its own."""
    import ast

    import click

    from lookalike import cli
    from lookalike.hookspecs import hookimpl
    from lookalike.plugins import make_plugin_manager

    class ThirdParty:
        @hookimpl
        def register_commands(self, register) -> None:  # type: ignore[no-untyped-def]
            register(click.Command("hello", callback=lambda: None))

    added: list[str] = []
    make_plugin_manager(builtins=(), extra_plugins=(ThirdParty(),), load_entry_points=False).hook.register_commands(
        register=lambda command: added.append(command.name))
    assert added == ["hello"]

    group = cli.main.commands["models"]
    assert group.commands["build"].callback.__module__ == "lookalike_local"
    imported = {n.module for n in ast.walk(ast.parse(Path(cli.__file__).read_text())) if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.startswith("lookalike_") for m in imported)
