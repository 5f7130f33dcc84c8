"""Where backend credentials come from: the environment locally, AWS on AWS.

A backend's options name *where* a secret lives (an environment variable, a Secrets Manager
secret, an SSM SecureString parameter), never the secret itself, so configuration documents
can be logged and committed. Values read from AWS are cached by Powertools for five minutes,
so a rotated secret is picked up without a redeploy.
"""

from __future__ import annotations

import os

from lookalike.errors import ConfigurationError

CACHE_SECONDS = 300


def read_secret(what: str, env: str | None = None, secret: str | None = None, parameter: str | None = None) -> str:
    """The first of: the environment variable ``env``, Secrets Manager ``secret``, SSM ``parameter``."""
    if env and os.environ.get(env):
        return os.environ[env]
    if secret:
        from aws_lambda_powertools.utilities import parameters

        return str(parameters.get_secret(secret, max_age=CACHE_SECONDS))
    if parameter:
        from aws_lambda_powertools.utilities import parameters

        return str(parameters.get_parameter(parameter, decrypt=True, max_age=CACHE_SECONDS))
    where = f"set ${env}" if env else "set an environment variable"
    raise ConfigurationError(f"{what} is missing: {where}, or name a Secrets Manager secret or SSM parameter")
