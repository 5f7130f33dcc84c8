"""The native /v1 API, one router module per Lambda function: ``taxonomy``, ``upload``,
``reverse_search``, ``generate`` and ``embed``; ``common`` holds what they share."""
