"""The embed function's /v1 route: an image's embedding."""

from __future__ import annotations

from aws_lambda_powertools.event_handler.api_gateway import Router

from lookalike.api.request import (
    tenant_from_bearer,
    validate,
)
from lookalike.api.v1.common import image_ref, image_request
from lookalike.schemas import (
    EmbedOptions,
    EmbedRequest,
    EmbedResponse,
)

router = Router()


@router.post("/v1/embed")
def embed() -> EmbedResponse:
    tenant = tenant_from_bearer(router.current_event)
    data, upload = image_request(router.current_event)
    if upload is not None:
        options = validate(EmbedOptions, data)
        ref = upload
    else:
        body = validate(EmbedRequest, data)
        options, ref = EmbedOptions(dimension=body.dimension), image_ref(body, None)
    vector = tenant.embed(ref)
    if options.dimension:
        vector = tenant.embedder.project(vector[None], options.dimension)[0]
    return EmbedResponse(model_id=tenant.embedder.model_id, dimension=int(vector.shape[0]),
                         embedding=[float(x) for x in vector])


