"""The legacy ``avap.DefinitionEngine`` contract, served from the same snapshot.

Existing AVAP language servers and workers call ``GetCommand(CommandRequest)``
and, in the newer version of the contract, a unary ``SyncCatalog(Empty)``. Its
``.proto`` was never published and the versions differ, so the server answers
from a contract file: by default the bundled ``proto/avap/definition_engine.proto``,
with ``--legacy-proto PATH`` a deployment's own copy. Fields are matched by name
and type, messages by the methods that declare them, so clients generated from
that file decode our answers whatever its numbering, message names or version
(docs/legacy.md has the table of known versions).

    codec.py     the contract: the methods it declares, and what each answer's fields carry
    answers.py   every answer of one snapshot version, encoded once (a GetCommand is a dict lookup)
    service.py   the declared RPCs over the live snapshot's answers
"""

SERVICE_NAME = "avap.DefinitionEngine"
