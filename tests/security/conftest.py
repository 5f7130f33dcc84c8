"""One deployment with two tenants, served over real HTTP by `lookalike serve`'s gateway on a
thread *in the test process*, so pytest-socket's loopback-only guard covers every connection
the server makes (URL fetches included): a bug in an SSRF check cannot reach out."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import requests

from lookalike.api import request as api_request
from lookalike.gateway import Gateway
from lookalike.server import LocalServer, ServerOptions
from lookalike.workers import InProcessPool
from tests.conftest import ROOT, catalog_images, free_port, write_deployment

JWT_SECRETS = {"demo": "demo-jwt-secret-" + "d" * 40, "globex": "globex-jwt-secret-" + "g" * 40}


@dataclass(frozen=True)
class Tenant:
    """How one tenant authenticates on every surface, and what it owns."""

    name: str
    key: str
    collection: str
    marqo_index_id: str

    def jwt(self) -> str:
        return jwt.encode({"iss": f"https://auth.example/{self.name}", "sub": "u", "exp": int(time.time()) + 600},
                          JWT_SECRETS[self.name], algorithm="HS256")


def jwt_headers(tenant: Tenant | None = None) -> dict[str, str]:
    """Visual Layer's credentials: a bearer JWT of ``tenant`` (default: demo)."""
    return {"Authorization": f"Bearer {(tenant or DEMO).jwt()}"}


DEMO = Tenant("demo", "demo-key", "clothing", "idx-demo-4b1e8f2a9c")
GLOBEX = Tenant("globex", "globex-key", "things", "idx-globex-6d2b9e1f")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[str]:
    home = tmp_path_factory.mktemp("security") / "home"
    tenants = {}
    for t in (DEMO, GLOBEX):
        tenants[t.name] = {
            "api_keys": [{"sha256": hashlib.sha256(t.key.encode()).hexdigest()}],
            "default_collection": t.collection,
            "jwt": {"issuer": f"https://auth.example/{t.name}", "secret_env": f"SECURITY_JWT_{t.name.upper()}"},
            "collections": {t.collection: {"marqo_index_id": t.marqo_index_id}}}
    write_deployment(home, {"tenants": tenants})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOKALIKE_HOME", str(home))
        mp.setenv("LOOKALIKE_MODEL_DIR", str(model_dir))
        mp.setenv("LOOKALIKE_ALLOW_LOOPBACK_URLS", "true")  # the SSRF tests' origins are on loopback
        mp.delenv("LOOKALIKE_CONFIG", raising=False)
        for t in (DEMO, GLOBEX):
            mp.setenv(f"SECURITY_JWT_{t.name.upper()}", JWT_SECRETS[t.name])
        api_request.set_service(None)
        service = api_request.service()
        images = catalog_images()
        for t, chosen in ((DEMO, images[:6]), (GLOBEX, images[6:8])):
            tenant = service.tenant(t.name)
            tenant.create_collection(t.collection)
            report = tenant.put_items(t.collection, [
                (f"{t.name}-{n}", p.read_bytes(), {"category": p.parent.name, "owner": t.name,
                                                   "caption": f"{t.name} {p.parent.name}"})
                for n, p in enumerate(chosen)])
            assert not report.failed
        gateway = Gateway(ROOT / "template.yaml")
        server = LocalServer(gateway, ServerOptions(port=free_port(), workers=1), pool=InProcessPool(gateway))
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.port}"
        try:
            yield base
        finally:
            server.stop()
            thread.join(30)
            api_request.set_service(None)


def healthy(base: str) -> None:
    """The server still answers a real search after whatever the test threw at it."""
    with catalog_images()[0].open("rb") as f:
        r = requests.post(f"{base}/v1/collections/{DEMO.collection}/search", files={"image": f},
                          headers={"Authorization": f"Bearer {DEMO.key}"}, timeout=60)
    assert r.status_code == 200 and r.json()["hits"], r.text
