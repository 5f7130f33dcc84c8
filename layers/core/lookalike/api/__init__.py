"""HTTP edge: the Powertools resolver factory, request helpers, and one router per surface."""
