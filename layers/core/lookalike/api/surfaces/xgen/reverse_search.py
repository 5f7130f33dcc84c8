"""XGen image search (seeds/000): ``POST /customers/{customerId}/users/{userId}``, and the
``/image/...`` path its browser sample calls.

multipart/form-data only: ``image`` (required; JPEG or PNG by its bytes *and* its declared
type), ``collection`` and ``locale`` (optional). The ``access_token`` header is the tenant's
API key and ``customerId`` must be that tenant's id. Size cap 5 MB: the document says both
1 MB and 5 MB; its constraints table says 5 MB, which Lookalike follows.
"""

from __future__ import annotations

from aws_lambda_powertools.event_handler.api_gateway import Router
from pydantic import BaseModel, ConfigDict

from lookalike import images
from lookalike.api.request import content_type, header, multipart_form, service
from lookalike.errors import BadRequest, InvalidImage, PayloadTooLarge, Unauthorized
from lookalike.rules import MAX_IMAGE_BYTES
from lookalike.service import ImageRef

router = Router()
MAX_BYTES = MAX_IMAGE_BYTES  # the XGen constraints table's 5 MB is the default cap
RESULTS = 20
DECLARED_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/pjpeg", "image/x-png"}
SNIFFED_TYPES = frozenset({"image/jpeg", "image/png"})
TOO_LARGE = "File size exceeds the limit (5 MB)"


class Product(BaseModel):
    model_config = ConfigDict(extra="allow")  # the product's own fields follow prod_code and score
    prod_code: str
    score: float


class ImageSearchResponse(BaseModel):
    products_list: list[Product]
    total: int


def _search(customer_id: str, user_id: str) -> ImageSearchResponse:
    event = router.current_event
    tenant = service().authenticate(header(event, "access_token"))
    if customer_id != tenant.id:
        raise Unauthorized()  # a valid token for another customer reveals nothing more
    if content_type(event) != "multipart/form-data":
        raise BadRequest("Malformed request: the body must be multipart/form-data")
    try:
        form = multipart_form(event, max_part_bytes=MAX_BYTES)
    except PayloadTooLarge:
        raise PayloadTooLarge(TOO_LARGE) from None
    upload = form.files.get("image")
    if upload is None:
        raise BadRequest("Missing required field: image")
    if len(upload.data) > MAX_BYTES:
        raise PayloadTooLarge(TOO_LARGE)
    declared = upload.content_type.split(";")[0].strip().lower()
    if (declared and declared not in DECLARED_TYPES) or images.sniff(upload.data) not in SNIFFED_TYPES:
        raise InvalidImage("Invalid image format")
    collection = form.fields.get("collection") or tenant.config.tenants[tenant.id].default_collection
    page = tenant.search(collection, ImageRef(data=upload.data), limit=RESULTS)
    products = [Product(prod_code=h.id, score=round(h.score, 4), **{k: v for k, v in h.metadata.items()
                                                                    if k not in ("prod_code", "score")})
                for h in page.hits]
    return ImageSearchResponse(products_list=products, total=page.total)


@router.post("/customers/<customer_id>/users/<user_id>")
def image_search(customer_id: str, user_id: str) -> ImageSearchResponse:
    return _search(customer_id, user_id)


@router.post("/image/customers/<customer_id>/users/<user_id>")
def image_search_browser_path(customer_id: str, user_id: str) -> ImageSearchResponse:
    return _search(customer_id, user_id)
