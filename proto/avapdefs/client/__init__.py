"""What workers and language servers use: calls, a synced local cache, and the CLIs on top.

``rpc`` (``DefinitionClient``: get_command, catalog_info, sync; ``load_cached``),
``follow`` (keep a cache current through WatchCatalog), ``cli`` (``avap-sync``
and ``avap-get``). The names below are the public API::

    from avapdefs.client import DefinitionClient, load_cached
"""

from avapdefs.client.follow import follow
from avapdefs.client.rpc import DefinitionClient, SyncResult, load_cached

__all__ = ["DefinitionClient", "SyncResult", "follow", "load_cached"]
