"""Regenerate the sample events: ``python events/make_events.py``.

API events are built by the local gateway's own event builder from template.yaml, so they
are exactly what ``lookalike serve`` hands the handlers. All use the demo key ``demo-key``
and the test fixture photos; ``sam local invoke <Function> -e events/<name>.json`` replays them.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

from lookalike.gateway import Gateway

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
AUTH = ("Authorization", "Bearer demo-key")


def multipart(fields: dict[str, str], files: dict[str, Path]) -> tuple[str, bytes]:
    boundary = "lookalike" + uuid.uuid5(uuid.NAMESPACE_URL, "events").hex
    out = b""
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for name, path in files.items():
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n").encode() + path.read_bytes() + b"\r\n"
    return f"multipart/form-data; boundary={boundary}", out + f"--{boundary}--\r\n".encode()


def api_event(gw: Gateway, method: str, path: str, *, json_body: dict | None = None,
              form: tuple[str, bytes] | None = None) -> dict:
    route, params, _ = gw.match(method, path.split("?")[0])
    assert route is not None, f"no route for {method} {path}"
    headers = [AUTH, ("Host", "127.0.0.1:8080")]
    body = b""
    if json_body is not None:
        headers.append(("Content-Type", "application/json"))
        body = json.dumps(json_body).encode()
    if form is not None:
        headers.append(("Content-Type", form[0]))
        body = form[1]
    event = gw.event(route, params, method, path, headers, body, "127.0.0.1")
    event["requestContext"]["requestId"] = "00000000-0000-0000-0000-000000000000"
    event["requestContext"]["requestTimeEpoch"] = 1767225600000
    return event


def s3_record(event_name: str, key: str) -> dict:
    return {
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-01-01T00:00:00.000Z", "eventName": event_name,
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "catalog",
               "bucket": {"name": "lookalike-catalog", "arn": "arn:aws:s3:::lookalike-catalog"},
               "object": {"key": key, "size": 16666, "eTag": "0123456789abcdef0123456789abcdef",
                          "sequencer": "0062E99A88DC407460"}},
    }


def sqs_event(*records: dict) -> dict:
    return {"Records": [{
        "messageId": f"00000000-0000-0000-0000-00000000000{n}", "receiptHandle": "handle",
        "body": json.dumps({"Records": [r]}), "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:lookalike-ingest", "awsRegion": "us-east-1",
    } for n, r in enumerate(records)]}


def query_png(path: Path) -> bytes:
    from PIL import Image

    from lookalike.geometry import query_png as to_png

    return to_png(Image.open(path))


def main() -> None:
    gw = Gateway(ROOT / "template.yaml")
    shoe = FIXTURES / "queries" / "shoes.jpg"
    catalog_shoe = sorted((FIXTURES / "images" / "shoes").iterdir())[0]
    data_url = "data:image/jpeg;base64," + base64.b64encode(shoe.read_bytes()).decode()
    events = {
        "taxonomy_create_collection": api_event(gw, "POST", "/v1/collections", json_body={"name": "clothing"}),
        "taxonomy_list_collections": api_event(gw, "GET", "/v1/collections"),
        "taxonomy_facets": api_event(gw, "GET", "/v1/collections/clothing/facets?fields=category"),
        "taxonomy_ingest_status": api_event(gw, "GET", "/v1/collections/clothing/ingest"),
        "taxonomy_search_page": api_event(gw, "GET", "/ui"),
        "upload_put_item": api_event(gw, "PUT", "/v1/collections/clothing/items/shoe-1", form=multipart(
            {"metadata": json.dumps({"category": "shoes", "caption": "a pair of leather shoes"})},
            {"image": catalog_shoe})),
        "upload_stage_anchor": api_event(gw, "POST", "/v1/anchors", form=multipart({}, {"image": shoe})),
        "reverse_search": api_event(gw, "POST", "/v1/collections/clothing/search",
                                    form=multipart({"limit": "5"}, {"image": shoe})),
        "reverse_search_data_url": api_event(gw, "POST", "/v1/collections/clothing/search",
                                             json_body={"data_url": data_url, "limit": 5}),
        "embed": api_event(gw, "POST", "/v1/embed", json_body={"data_url": data_url}),
        "generate_text_search": api_event(gw, "POST", "/v1/collections/clothing/search/text",
                                          json_body={"query": "leather shoes", "limit": 5}),
        "generate": api_event(gw, "POST", "/v1/collections/clothing/generate", json_body={"prompt": "leather shoes"}),
        "ingest_object_created": sqs_event(s3_record("ObjectCreated:Put", "demo/clothing/shoe-2.jpg")),
        "ingest_object_removed": sqs_event(s3_record("ObjectRemoved:Delete", "demo/clothing/shoe-2.jpg")),
        # What reverse_search hands the rerank function: the query (grayscale PNG) and the
        # candidates' photo keys in the stack's bucket (here: the stack's AnchorsBucket name).
        "rerank": {"bucket": "lookalike-anchors", "max_bytes": 5 * 1024 * 1024, "max_pixels": 40_000_000,
                   "query_png": base64.b64encode(query_png(shoe)).decode(),
                   "candidate_keys": ["demo/collections/clothing/images/shoe-1/0123456789abcdef.jpg"]},
    }
    for name, event in events.items():
        (ROOT / "events" / f"{name}.json").write_text(json.dumps(event, indent=2) + "\n", encoding="utf-8")
        print(f"events/{name}.json")


if __name__ == "__main__":
    main()
