"""Builds the Powertools resolver every Lambda function uses, with one error mapping."""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.utilities.typing import LambdaContext

from lookalike.errors import LookalikeError, describe_validation

# Most routes emit no custom metric; that is expected, not worth a warning per request.
warnings.filterwarnings("ignore", message="No application metrics to publish")

logger = Logger(service="lookalike")
metrics = Metrics(namespace="Lookalike", service="lookalike")


def tracing_on() -> bool:
    """X-Ray tracing: on Lambda with the template's ``Tracing`` Active (LOOKALIKE_TRACING),
    unless Powertools' POWERTOOLS_TRACE_DISABLED says otherwise."""
    disabled = os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").lower() in ("1", "true")
    return (not disabled and "AWS_LAMBDA_FUNCTION_NAME" in os.environ
            and os.environ.get("LOOKALIKE_TRACING", "Active") == "Active")


def traced(handler: Any) -> Any:
    """``handler`` under Powertools' Tracer when tracing is on. The Tracer is built only then:
    building it imports the X-Ray SDK and botocore even when disabled (0.18 s of a cold start)."""
    if not tracing_on():
        return handler
    from aws_lambda_powertools import Tracer

    return Tracer(service="lookalike").capture_lambda_handler(capture_response=False)(handler)


def error_response(status: int, message: str) -> Response:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body={"error": message})


def build_app(*routers: Router) -> APIGatewayRestResolver:
    app = APIGatewayRestResolver(enable_validation=True)
    for router in routers:
        app.include_router(router)

    @app.exception_handler(LookalikeError)
    def _lookalike_error(exc: LookalikeError) -> Response:
        if exc.status >= 500:
            logger.error("request failed", extra={"error_type": type(exc).__name__, "error": exc.message})
        return error_response(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    def _invalid(exc: RequestValidationError) -> Response:
        return error_response(400, describe_validation(exc.errors(), request_locations=True))

    @app.not_found
    def _not_found(exc: NotFoundError) -> Response:
        return error_response(404, "Not found")

    @app.exception_handler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Log the type and traceback, never the request: it may carry keys and images.
        logger.exception("unhandled error", extra={"error_type": type(exc).__name__})
        return error_response(500, "Internal server error")

    return app


def build_handler(*routers: Router) -> tuple[APIGatewayRestResolver, Any]:
    """The resolver for ``routers`` and the Lambda handler that runs it with Powertools."""
    app = build_app(*routers)

    # Never log the event: it carries API keys and images (POWERTOOLS_LOGGER_LOG_EVENT stays off).
    @logger.inject_lambda_context(clear_state=True, log_event=False)
    @traced
    @metrics.log_metrics
    def handle(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        started = time.perf_counter()
        result = app.resolve(event, context)
        # One structured line per request: the route template (not the path's values), never the
        # query string, headers or body (keys travel in headers and query strings, images in bodies).
        logger.info("request", extra={"method": event.get("httpMethod"), "route": event.get("resource"),
                                      "status": result.get("statusCode"),
                                      "ms": round((time.perf_counter() - started) * 1000, 1)})
        return result

    return app, with_metrics_cleared(handle)


def with_metrics_cleared(handler: Any) -> Any:
    """Powertools keeps metrics in memory when POWERTOOLS_METRICS_DISABLED is set (the local
    server sets it): clear them after each invocation so a long-running process does not grow."""

    def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        try:
            return handler(event, context)
        finally:
            metrics.clear_metrics()

    return lambda_handler
