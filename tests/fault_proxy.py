"""A fault proxy on loopback in front of a real OpenSearch node: it records every request and
forwards it, unless told to fail the next ones (a status, a malformed body, a delay, a dropped
connection). The failures a real engine will not produce on demand are injected here, so the
requests still reach, and are answered by, OpenSearch itself."""

from __future__ import annotations

from typing import Any

import requests

from tests.loopback import LoopbackServer


class FaultProxy(LoopbackServer):
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session = requests.Session()
        super().__init__()

    def failure_body(self, status: int) -> Any:
        # OpenSearch's error shape (RestResponse): {"error": {"type", "reason", ...}, "status"}.
        return {"error": {"type": "injected_failure", "reason": "injected by the fault proxy"}, "status": status}

    def route(self, method: str, path: str, params: dict[str, str], headers: dict[str, str],
              raw: bytes) -> tuple[int, Any]:
        forwarded = {k: v for k, v in headers.items() if k.lower() in ("content-type", "accept")}
        r = self.session.request(method, f"{self.upstream}{path}", params=params, data=raw, headers=forwarded,
                                 timeout=60)
        return r.status_code, (r.json() if r.content else None)
