"""The ``lookalike`` command: set up, ingest, search, find duplicates, embed, list, serve."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from lookalike.config import ApiKey, DeploymentConfig, Settings, TenantConfig, hash_key, parse_config, write_config
from lookalike.errors import LookalikeError
from lookalike.plugins import DEFAULT_PLUGINS, make_plugin_manager
from lookalike.process import Lookalike
from lookalike.service import ImageRef, TenantService


def _service() -> Lookalike:
    return Lookalike(Settings())


def _tenant(app: Lookalike, tenant_id: str | None) -> TenantService:
    tenants = list(app.config().tenants)
    if tenant_id is None:
        if len(tenants) != 1:
            raise click.UsageError(f"choose a tenant with --tenant (configured: {', '.join(tenants) or 'none'})")
        tenant_id = tenants[0]
    if tenant_id not in tenants:
        raise click.UsageError(f"unknown tenant {tenant_id!r}")
    return app.tenant(tenant_id)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LookalikeError as exc:
            raise click.ClickException(exc.message) from exc


@click.group(cls=_Group)
def main() -> None:
    """Lookalike: image search you host yourself."""


@main.command()
@click.option("--tenant", default="demo", show_default=True)
@click.option("--api-key", help="Use this key instead of generating one (development only).")
@click.option("--force", is_flag=True, help="Overwrite an existing configuration.")
@click.option("--default-collection", help="The collection Imgen and XGen clients search.")
def init(tenant: str, api_key: str | None, force: bool, default_collection: str | None) -> None:
    """Write a configuration with one tenant and print its API key."""
    settings = Settings()
    path = settings.config_path
    if path.exists() and not force:
        config = parse_config(path.read_text(encoding="utf-8"))
        if tenant in config.tenants and api_key and config.tenant_for_key(api_key) == tenant:
            if default_collection and config.tenants[tenant].default_collection != default_collection:
                config.tenants[tenant].default_collection = default_collection
                write_config(path, config)
            click.echo(f"{path} already has tenant {tenant!r} with that key")
            return
        if not api_key:
            raise click.ClickException(f"{path} exists: pass --force to overwrite or `lookalike keys add`")
    else:
        config = DeploymentConfig()
    key = api_key or f"lk_{secrets.token_urlsafe(24)}"
    existing = config.tenants.get(tenant, TenantConfig())
    existing.api_keys.append(ApiKey(sha256=hash_key(key), label="init"))
    if default_collection:
        existing.default_collection = default_collection
    config.tenants[tenant] = existing
    write_config(path, config)
    click.echo(f"wrote {path}\ntenant: {tenant}\napi key: {key}")


@main.group()
def keys() -> None:
    """Manage API keys (only their SHA-256 is stored)."""


@keys.command("add")
@click.option("--tenant", required=True)
@click.option("--label", default="")
def keys_add(tenant: str, label: str) -> None:
    """Add a key to a tenant; the old keys stay valid until removed (rotation without downtime)."""
    settings = Settings()
    config = parse_config(settings.config_path.read_text(encoding="utf-8"))
    if tenant not in config.tenants:
        raise click.UsageError(f"unknown tenant {tenant!r}")
    key = f"lk_{secrets.token_urlsafe(24)}"
    config.tenants[tenant].api_keys.append(ApiKey(sha256=hash_key(key), label=label))
    write_config(settings.config_path, config)
    click.echo(key)


#: SSM parameter sizes (AWS docs, "Managing parameter tiers"): standard 4 KB, advanced 8 KB.
SSM_STANDARD_BYTES, SSM_ADVANCED_BYTES = 4096, 8192
#: Backends a Lambda function refuses (each execution environment has its own /tmp).
ON_LAMBDA_REFUSED = {"search": "local", "blobs": "filesystem"}


@main.group()
def config() -> None:
    """The configuration document: check it and publish it to a stack."""


@config.command("publish")
@click.option("--ssm", "parameter", required=True, help="The stack's TenantConfigParameter, e.g. /lookalike/config.")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The document (default: this deployment's config.yaml).")
@click.option("--dry-run", is_flag=True, help="Check it and say which tier it needs, without writing.")
def config_publish(parameter: str, path: Path | None, dry_run: bool) -> None:
    """Validate the document for the stack and write it to SSM as a SecureString, in the
    smallest tier it fits (standard up to 4 KB, advanced up to 8 KB)."""
    document = parse_config((path or Settings().config_path).read_text(encoding="utf-8"))
    # Without the built-in defaults (`lookalike init` writes them out): on the stack, its own
    # bucket and search domain are the defaults of what the document leaves out.
    value = document.model_dump_json(exclude_defaults=True)
    published = parse_config(value)
    for kind, refused in ON_LAMBDA_REFUSED.items():
        choices = [("defaults", getattr(published.defaults, kind))] if kind in published.defaults.model_fields_set \
            else []
        choices += [(f"tenant {t}", getattr(c, kind)) for t, c in published.tenants.items() if getattr(c, kind)]
        for where, choice in choices:
            if choice.name == refused:
                raise click.ClickException(f"{where}: {kind}: {refused} cannot serve on Lambda (each execution "
                                           f"environment has its own /tmp); leave {kind} out to use the stack's")
    size = len(value.encode())
    if size > SSM_ADVANCED_BYTES:
        raise click.ClickException(f"the document is {size} bytes, over SSM's {SSM_ADVANCED_BYTES}: keep it in "
                                   "AppConfig instead (the stack's TenantConfigAppConfig parameter)")
    tier = "Standard" if size <= SSM_STANDARD_BYTES else "Advanced"
    if not dry_run:
        import boto3

        boto3.client("ssm").put_parameter(Name=parameter, Value=value, Type="SecureString", Overwrite=True,
                                          Tier=tier)
    click.echo(f"{'checked' if dry_run else 'published'} {parameter}: {size} bytes, {tier} tier")


@main.command()
def tenants() -> None:
    """List tenants and their backends."""
    config = _service().config()
    for tenant_id in config.tenants:
        click.echo(f"{tenant_id}\tembedder={config.embedder_for(tenant_id).name}\t"
                   f"search={config.search_for(tenant_id).name}\tkeys={len(config.tenants[tenant_id].api_keys)}")


@main.group(cls=_Group, invoke_without_command=True)
@click.option("--tenant")
@click.pass_context
def collections(ctx: click.Context, tenant: str | None) -> None:
    """List a tenant's collections, with the x-marqo-index-id each answers to on the Marqo
    surface; or copy or reindex one (lookalike collections copy --help, reindex --help)."""
    if ctx.invoked_subcommand is not None:
        return
    t = _tenant(_service(), tenant)
    for c in t.list_collections():
        click.echo(f"{c.name}\titems={c.item_count}\tmodel={c.model_id}\tstatus={c.status}"
                   f"\tmarqo_index_id={t.marqo_index_id(c) or '-'}")


@contextmanager
def _progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (tqdm, as ingest's) and its ``progress(done, total)`` callback."""
    from tqdm import tqdm

    with tqdm(total=1, desc=label, unit="item", file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = max(total, done, 1)
            bar.update(done - bar.n)

        yield progress


def _located(spec: str, config: Path | None) -> tuple[TenantService, str]:
    """``tenant/collection`` (or ``collection`` where the deployment has one tenant) in the
    deployment of ``config`` (default: this one's)."""
    tenant_id, _, name = spec.rpartition("/")
    app = Lookalike(Settings(config=config)) if config else _service()
    return _tenant(app, tenant_id or None), name


@collections.command("copy")
@click.argument("source")
@click.argument("destination")
@click.option("--from-config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The source's deployment document (default: this deployment's), e.g. a stack's: S3 + OpenSearch.")
@click.option("--to-config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The destination's deployment document (default: this deployment's).")
@click.option("--page-size", type=click.IntRange(1, 5000), default=200, show_default=True,
              help="Items read, copied and written at a time (bounds the memory used).")
@click.option("--threads", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Photos copied at once.")
@click.option("--verify-sample", type=click.IntRange(0, 10_000), default=32, show_default=True,
              help="Items compared byte for byte at the end (0: no verification).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def collections_copy(source: str, destination: str, from_config: Path | None, to_config: Path | None,
                     page_size: int, threads: int, verify_sample: int, as_json: bool) -> None:
    """Copy SOURCE into DESTINATION (each TENANT/COLLECTION), vectors, caption and prompt vectors,
    metadata, photos and local features, without re-embedding. Rerun after a kill, it resumes
    where it stopped. Exits 1 if the verification finds a difference."""
    from lookalike import transfer

    src, src_name = _located(source, from_config)
    dst, dst_name = _located(destination, to_config)
    if (src.id, src_name, from_config) == (dst.id, dst_name, to_config):
        raise click.UsageError("the source and the destination are the same collection")
    with _progress_bar(f"copying {source} -> {destination}") as progress:
        report = transfer.copy_collection(src, src_name, dst, dst_name, page_size=page_size, threads=threads,
                                          verify_sample=verify_sample, progress=progress)
    out = transfer.summary(report)
    if dst.embedder.model_id != (dst.collection(dst_name, create_declared=False).model_id):
        out["note"] = (f"tenant {dst.id!r} embeds with {dst.embedder.model_id}: run `lookalike collections reindex "
                       f"{destination}` before searching it by image")
    click.echo(json.dumps(out, indent=2) if as_json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    if report.verification is not None and not report.verification.ok:
        raise SystemExit(1)


@collections.command("reindex")
@click.argument("collection")
@click.option("--grace", "grace_s", type=click.FloatRange(0, 3600), default=30.0, show_default=True,
              help="Seconds the old vectors keep taking writes after the switch: more than a write request may take.")
@click.option("--page-size", type=click.IntRange(1, 1000), default=64, show_default=True)
@click.option("--threads", type=click.IntRange(1, 32), default=2, show_default=True, help="Decoding threads.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def collections_reindex(collection: str, grace_s: float, page_size: int, threads: int, as_json: bool) -> None:
    """Re-embed COLLECTION (TENANT/COLLECTION) from its stored photos under the tenant's current
    models, while it keeps serving; then switch readers to the new vectors at once and remove the
    old ones. Writes during the reindex reach both. Rerun after a kill, it resumes."""
    from lookalike import reindex

    t, name = _located(collection, None)
    with _progress_bar(f"reindexing {collection}") as progress:
        report = reindex.reindex_collection(t, name, grace_s=grace_s, page_size=page_size, threads=threads,
                                            progress=progress)
    out = report.summary()
    click.echo(json.dumps(out, indent=2) if as_json else "\n".join(f"{k}: {v}" for k, v in out.items()))


@main.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--collection", required=True)
@click.option("--tenant")
@click.option("--threads", default=2, show_default=True, help="Image decoding threads.")
@click.option("--update", is_flag=True, help="Re-index items that are already indexed.")
@click.option("--limit", type=int, help="Ingest at most this many images.")
def ingest(source: Path, collection: str, tenant: str | None, threads: int, update: bool, limit: int | None) -> None:
    """Index a folder of images or a JSONL manifest (id, image path or URL, metadata)."""
    from tqdm import tqdm

    from lookalike.ingest import folder_sources, ingest_sources, manifest_sources

    t = _tenant(_service(), tenant)
    if not any(c.name == collection for c in t.list_collections()):
        t.create_collection(collection)
        click.echo(f"created collection {collection!r}")
    else:
        t.sweep(collection)  # what a killed ingest of it left behind
    skipped: list[tuple[str, str]] = []
    failed: list[tuple[str, str]] = []
    sources = manifest_sources(source, failed) if source.is_file() else folder_sources(source, skipped)
    if limit is not None:
        sources = sources[:limit]
    with tqdm(total=len(sources), unit="img", desc="ingest", file=sys.stderr) as bar:
        report = ingest_sources(t, collection, sources, skip_existing=not update, threads=threads, progress=bar)
    report.skipped = skipped + report.skipped
    report.failed = failed + report.failed
    click.echo(f"indexed {len(report.indexed)}, skipped {len(report.skipped)}, failed {len(report.failed)}")
    if report.indexed:
        started = time.perf_counter()
        built = t.search_backend.optimize(t.id, collection)
        if built:
            click.echo(f"approximate index built in {time.perf_counter() - started:.1f} s: "
                       + ", ".join(f"{space} {n}" for space, n in built.items()))
    reasons: dict[str, int] = {}
    for _, reason in report.skipped:
        reasons[f"skipped: {reason}"] = reasons.get(f"skipped: {reason}", 0) + 1
    for name, reason in report.failed[:20]:
        click.echo(f"  failed {name}: {reason}")
    for reason, n in sorted(reasons.items()):
        click.echo(f"  {reason}: {n}")
    if report.failed and not report.indexed:
        sys.exit(1)


@main.command()
@click.option("--tenant", help="Only this tenant (default: every tenant).")
@click.option("--older-than", type=click.FloatRange(0), default=600, show_default=True,
              help="Spare files younger than this many seconds (they may belong to a write in flight).")
def repair(tenant: str | None, older_than: float) -> None:
    """Remove what killed or failed writes left: images no item refers to, temporary files;
    reset an INDEXING status whose ingest is gone. `serve` and `ingest` do this on start."""
    app = _service()
    if tenant is not None:
        _tenant(app, tenant)
    done = app.repair([tenant] if tenant else None, older_than_s=older_than)
    click.echo(f"removed {done['images']} unreferenced images, {done['temporaries']} temporary files")


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--collection", required=True)
@click.option("--tenant")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between scans of the folder.")
@click.option("--polls", type=int, help="Stop after this many scans (default: until Ctrl-C).")
def watch(folder: Path, collection: str, tenant: str | None, interval: float, polls: int | None) -> None:
    """Keep COLLECTION in step with FOLDER: new or changed images (or their .json sidecars)
    are indexed, deleted ones removed, through the same path as S3 events."""
    from lookalike.ingest import watch_folder

    service = _tenant(_service(), tenant)
    click.echo(f"watching {folder} -> {service.id}/{collection} (Ctrl-C to stop)")
    try:
        watch_folder(service, collection, folder, interval=interval, polls=polls,
                     on_change=lambda name, outcome: click.echo(f"{name}: {outcome}"))
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--collection", required=True)
@click.option("--tenant")
@click.option("--limit", default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def search(image: Path, collection: str, tenant: str | None, limit: int, as_json: bool) -> None:
    """Search a collection with an image file."""
    t = _tenant(_service(), tenant)
    page = t.search(collection, ImageRef(data=image.read_bytes()), limit=limit)
    if as_json:
        click.echo(json.dumps({"total": page.total, "hits": [
            {"id": h.id, "score": round(h.score, 6), "metadata": dict(h.metadata)} for h in page.hits]}, indent=2))
        return
    for rank, h in enumerate(page.hits, 1):
        label = h.metadata.get("category") or h.metadata.get("path") or ""
        click.echo(f"{rank:>3}  {h.score:.4f}  {h.id}  {label}")


@main.command()
@click.option("--collection", required=True)
@click.option("--tenant")
@click.option("--json", "as_json", is_flag=True, help="Print {\"groups\": [[id, ...], ...]}.")
def duplicates(collection: str, tenant: str | None, as_json: bool) -> None:
    """List the groups of verified near-duplicates in COLLECTION: the same photo again,
    cropped, turned, resized or re-encoded (local features, as `rerank` searches verify)."""
    t = _tenant(_service(), tenant)
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % 500 == 0:
            click.echo(f"  checked {done}/{total} items", err=True)

    groups = t.duplicate_groups(collection, progress)
    if as_json:
        click.echo(json.dumps({"groups": groups}))
        return
    for n, group in enumerate(groups, 1):
        click.echo(f"{n:>4}  {len(group)} items: {' '.join(group)}")
    click.echo(f"{len(groups)} groups of verified duplicates ({sum(map(len, groups))} items) "
               f"in {time.perf_counter() - started:.1f} s")


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant")
def embed(image: Path, tenant: str | None) -> None:
    """Print an image's embedding as JSON."""
    t = _tenant(_service(), tenant)
    vector = t.embed(ImageRef(data=image.read_bytes()))
    click.echo(json.dumps({"model_id": t.embedder.model_id, "dimension": len(vector),
                           "embedding": [round(float(x), 7) for x in vector]}))


def default_template() -> Path:
    here = Path.cwd() / "template.yaml"
    if here.exists():
        return here
    return Path(__file__).resolve().parents[3] / "template.yaml"


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
@click.option("--template", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--workers", type=click.IntRange(0, 64), default=lambda: int(os.environ.get("LOOKALIKE_WORKERS", "0")),
              help="Worker processes, each answering one request at a time [default: CPUs + 1, at least 2].")
@click.option("--expensive-workers", type=click.IntRange(0, 64), default=0,
              help="Workers that may re-rank, find duplicates or fetch image URLs at once "
                   "[default: half the CPUs, at least 1].")
@click.option("--waiting-per-tenant", type=click.IntRange(0, 10_000), default=0,
              help="Requests a tenant may have waiting for a worker; more are answered 429 "
                   "[default: 64].")
@click.option("--connection-limit", type=click.IntRange(1, 10_000), default=512, show_default=True,
              help="Open connections at most; more wait in the listen backlog.")
@click.option("--idle-timeout", type=click.IntRange(1, 3600), default=30, show_default=True,
              help="Seconds before an idle or stalled connection is closed.")
def serve(host: str, port: int, template: Path | None, workers: int, expensive_workers: int,
          waiting_per_tenant: int, connection_limit: int, idle_timeout: int) -> None:
    """Serve the API on 127.0.0.1, routed by template.yaml to the Lambda handlers.

    Tenants take turns at the workers (one queue each); see SECURITY.md, "Fair shares".

    SIGTERM or Ctrl-C stops it gracefully: requests in flight are answered first."""
    from lookalike.gateway import Gateway
    from lookalike.server import LocalServer, ServerOptions

    # Locally there is no CloudWatch or X-Ray to receive them; set these to "false" to see them.
    # Set before the workers start: they inherit the environment.
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")

    if host not in ("127.0.0.1", "localhost", "::1"):
        raise click.UsageError("the local server binds to loopback only; deploy with `sam deploy` to serve others")
    gateway = Gateway((template or default_template()).resolve())
    app = _service()
    app.config()  # fail now, not at the first request, when there is no configuration
    # What a killed process left behind, swept beside the serving (it only removes old, unreferenced files).
    threading.Thread(target=_repair_quietly, args=(app,), daemon=True, name="lookalike-repair").start()
    options = ServerOptions(host=host, port=port, workers=workers, expensive_workers=expensive_workers,
                            waiting_per_tenant=waiting_per_tenant, connection_limit=connection_limit,
                            channel_timeout_s=idle_timeout)
    server = LocalServer(gateway, options)
    click.echo(f"Lookalike serving {len(gateway.routes)} routes on http://{host}:{server.port}"
               f" with {options.worker_count()} workers (and {options.expensive_worker_count()} for re-ranking,"
               " duplicates and URL fetches)")
    server.run()


def _repair_quietly(app: Lookalike) -> None:
    try:
        app.repair()
    except LookalikeError as exc:
        click.echo(f"repair skipped: {exc.message}", err=True)


def _plugin_commands() -> None:
    """Plugins add their own commands (the local plugin's ``lookalike models build``, for one):
    those that are installed (a layer's build has only some of them)."""
    installed = tuple(m for m in DEFAULT_PLUGINS if importlib.util.find_spec(m) is not None)
    make_plugin_manager(builtins=installed).hook.register_commands(register=main.add_command)


_plugin_commands()


if __name__ == "__main__":
    main()
