"""The five seed API surfaces: each a package with one router module per Lambda function that
serves it, named for that function (``xgen.reverse_search``, ``imgen.generate``,
``imgen.taxonomy``, ...), translating its document's contract into the one service below
(``lookalike.service``) and back. Nothing here searches, filters or ranks."""
