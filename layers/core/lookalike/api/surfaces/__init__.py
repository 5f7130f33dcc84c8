"""The five seed API surfaces: each a router translating its document's contract into the
one service below (lookalike.service) and back. Nothing here searches, filters or ranks."""
