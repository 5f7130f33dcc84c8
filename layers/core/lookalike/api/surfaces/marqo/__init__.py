"""Marqo reverse image search (seeds/001), served by the reverse_search function; its filter DSL in ``filter_dsl``."""
