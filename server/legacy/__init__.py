"""The legacy ``avap.DefinitionEngine`` contract, served from the same snapshot.

Existing AVAP language servers and workers call ``GetCommand(CommandRequest)``
and a unary ``SyncCatalog(Empty)``. Their ``.proto`` was never published, so
the field numbers are matched by *field name*: by default those of the
bundled ``proto/avap/definition_engine.proto``; with ``--legacy-proto PATH``
those of a deployment's own copy, so clients generated from it decode our
answers whatever numbering it uses.

    codec.py     the message classes answers are encoded with (bundled, or compiled from --legacy-proto)
    answers.py   every answer of one snapshot version, encoded once (a GetCommand is a dict lookup)
    service.py   the two RPCs over the live snapshot's answers
"""

SERVICE_NAME = "avap.DefinitionEngine"
