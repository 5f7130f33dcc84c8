"""The CLI in-process: init, keys, tenants, collections, ingest (folder and manifest), search, embed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lookalike.cli import main
from lookalike.config import Settings, parse_config
from tests.conftest import FIXTURES, query_image


@pytest.fixture()
def runner(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("LOOKALIKE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LOOKALIKE_MODEL_DIR", str(model_dir))
    monkeypatch.delenv("LOOKALIKE_CONFIG", raising=False)
    return CliRunner()


def run(runner: CliRunner, *args: str, code: int = 0) -> str:
    result = runner.invoke(main, list(args))
    assert result.exit_code == code, result.output
    return result.output


def json_of(runner: CliRunner, *args: str) -> Any:
    """A command's JSON answer (its stdout alone: the progress bars go to stderr)."""
    result = runner.invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cli_workflow(runner: CliRunner, tmp_path: Path) -> None:
    out = run(runner, "init", "--tenant", "acme")
    key = out.split("api key: ")[1].strip()
    assert key.startswith("lk_")
    run(runner, "init", "--tenant", "acme", code=1)  # refuses to overwrite
    second = run(runner, "keys", "add", "--tenant", "acme").strip()
    config = parse_config(Settings().config_path.read_text())
    assert config.tenant_for_key(key) == config.tenant_for_key(second) == "acme"
    assert key not in Settings().config_path.read_text()  # only hashes are stored
    assert run(runner, "tenants").startswith("acme\tembedder=efficientnet-lite0\tsearch=local\tkeys=2")

    manifest = tmp_path / "items.jsonl"
    shoes = sorted((FIXTURES / "images" / "shoes").iterdir())
    manifest.write_text("\n".join([
        json.dumps({"id": "s1", "image": str(shoes[0]), "metadata": {"category": "shoes"}}),
        json.dumps({"id": "s2", "image": str(shoes[1])}),
        "not json",
        json.dumps({"id": "s3", "image": "missing.jpg"}),
        json.dumps({"id": "bad/id", "image": str(shoes[2])}),
    ]) + "\n")
    out = run(runner, "ingest", str(manifest), "--collection", "shop")
    assert "created collection 'shop'" in out and "indexed 2, skipped 0, failed 3" in out
    assert "failed line 3" in out and "failed s3: FileNotFoundError" in out and "failed bad/id: item id" in out

    folder = tmp_path / "photos"
    shutil.copytree(FIXTURES / "images" / "hat", folder / "hat")
    (folder / "hat" / sorted(p.name for p in (folder / "hat").iterdir())[0]).with_suffix(".json").write_text(
        json.dumps({"caption": "a woollen hat"}))
    out = run(runner, "ingest", str(folder), "--collection", "shop", "--threads", "1")
    assert "indexed 4, skipped 0, failed 0" in out
    assert run(runner, "collections").startswith("shop\titems=6\t")

    out = json.loads(run(runner, "search", str(query_image("hat")), "--collection", "shop", "--json", "--limit", "3"))
    assert out["total"] == 6 and out["hits"][0]["metadata"]["category"] == "hat"
    text = run(runner, "search", str(query_image("hat")), "--collection", "shop")
    assert text.splitlines()[0].split()[0] == "1"
    vec = json.loads(run(runner, "embed", str(query_image("hat"))))
    assert vec["dimension"] == 1280 == len(vec["embedding"])
    assert "Collection not found" in run(runner, "search", str(query_image()), "--collection", "nope", code=1)


def test_cli_needs_a_tenant_when_several(runner: CliRunner) -> None:
    run(runner, "init", "--tenant", "a")
    run(runner, "init", "--tenant", "b", "--api-key", "second-key", "--default-collection", "shop")
    assert parse_config(Settings().config_path.read_text()).tenants["b"].default_collection == "shop"
    assert "choose a tenant with --tenant" in run(runner, "collections", code=2)
    assert "no configuration" in CliRunner().invoke(main, ["tenants"], env={"LOOKALIKE_HOME": "/nonexistent"}).output


def test_cli_duplicates_reports_a_turned_crop_of_a_catalog_photo(runner: CliRunner, tmp_path: Path) -> None:
    """`lookalike duplicates`: a cropped, turned, re-encoded copy of a hat photo is grouped with
    its original; the other hats (other products of the same kind) and the shoes are not."""
    from PIL import Image

    from lookalike.ingest import item_id_for

    run(runner, "init", "--tenant", "acme")
    folder = tmp_path / "catalog"
    shutil.copytree(FIXTURES / "images" / "hat", folder / "hat")
    shutil.copytree(FIXTURES / "images" / "shoes", folder / "shoes")
    original = sorted((folder / "hat").iterdir())[0]
    img = Image.open(original).convert("RGB")
    w, h = img.size
    copy = folder / "listing-copy.jpg"
    img.crop((w // 10, h // 10, w - w // 8, h - h // 8)).rotate(
        12, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255)).save(copy, quality=75)
    run(runner, "ingest", str(folder), "--collection", "shop")
    groups = json.loads(run(runner, "duplicates", "--collection", "shop", "--json"))["groups"]
    assert groups == [sorted([item_id_for(original.relative_to(folder)), item_id_for(copy.relative_to(folder))])]
    text = run(runner, "duplicates", "--collection", "shop")
    assert text.splitlines()[-1].startswith("1 groups of verified duplicates (2 items)")
    assert "Collection not found" in run(runner, "duplicates", "--collection", "nope", code=1)


def test_cli_publishes_the_document_to_ssm_in_the_tier_it_fits(runner: CliRunner, moto_server: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", moto_server)
    ssm = boto3.client("ssm", endpoint_url=moto_server)
    run(runner, "init", "--tenant", "acme")
    assert run(runner, "config", "publish", "--ssm", "/shop/config").strip().endswith("Standard tier")
    stored = ssm.get_parameter(Name="/shop/config", WithDecryption=True)["Parameter"]
    assert parse_config(stored["Value"]).tenants.keys() == {"acme"} and stored["Type"] == "SecureString"
    for _ in range(60):  # each key adds its hash (about 80 bytes): past 4 KB the advanced tier holds it
        run(runner, "keys", "add", "--tenant", "acme")
    assert run(runner, "config", "publish", "--ssm", "/shop/config").strip().endswith("Advanced tier")
    # (by name: the moto server is shared, and other tests' parameters may be listed first)
    described = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": ["/shop/config"]}])
    assert described["Parameters"][0]["Tier"] == "Advanced"
    for _ in range(55):
        run(runner, "keys", "add", "--tenant", "acme")
    assert "keep it in AppConfig" in run(runner, "config", "publish", "--ssm", "/shop/config", code=1)
    # A backend that cannot serve on Lambda is refused before anything is written.
    path = Settings().config_path
    config = parse_config(path.read_text())
    path.write_text(json.dumps({"tenants": {"acme": {"search": {"name": "local"},
                                                     "api_keys": config.tenants["acme"].api_keys[:1]}}},
                               default=lambda k: k.model_dump()))
    assert "search: local cannot serve on Lambda" in run(runner, "config", "publish", "--ssm", "/x/config", code=1)


def test_collections_copy_to_another_deployment_and_reindex(runner: CliRunner, tmp_path: Path) -> None:
    """The copy between two deployment documents (here: the same data folder, another tenant in
    the second document, its photos in a blob store of its own), then a reindex of the copy; the
    listing shows each collection once under its name."""
    run(runner, "init", "--tenant", "acme")
    shoes = sorted((FIXTURES / "images" / "shoes").iterdir())
    manifest = tmp_path / "items.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"s{n}", "image": str(p), "metadata": {"n": n}}) + "\n"
                                for n, p in enumerate(shoes)))
    assert f"indexed {len(shoes)}," in run(runner, "ingest", str(manifest), "--collection", "shop")
    other = tmp_path / "other.yaml"
    other.write_text(json.dumps({"tenants": {"big": {"blobs": {"name": "filesystem", "options": {
        "root": str(tmp_path / "big-blobs")}}}}}))
    out = json_of(runner, "collections", "copy", "acme/shop", "big/shop", "--to-config", str(other), "--json")
    assert out["copied"] == len(shoes) and out["verification"]["ok"], out
    assert any((tmp_path / "big-blobs").rglob("*")), "the photos are in the destination's own blob store"
    assert "the source and the destination are the same" in run(
        runner, "collections", "copy", "acme/shop", "acme/shop", code=2)
    report = json_of(runner, "collections", "reindex", "acme/shop", "--grace", "0", "--json")
    assert report["items"] == len(shoes) and report["embedded"] == len(shoes) and not report["failed"], report
    listing = run(runner, "collections", "--tenant", "acme")
    assert listing.startswith(f"shop\titems={len(shoes)}\t") and listing.count("\n") == 1, listing
    hits = json_of(runner, "search", str(shoes[0]), "--collection", "shop", "--json")
    assert hits["hits"][0]["id"] == "s0" and hits["hits"][0]["score"] > 0.99
