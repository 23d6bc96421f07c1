"""What workers and language servers use: calls, a synced local cache, an in-process replica, and the CLIs on top.

``rpc`` (``DefinitionClient``: get_command, catalog_info, sync; ``load_cached``),
``follow`` (keep a cache current through WatchCatalog), ``replica``
(``Replica``: the catalog in process, kept current, for language servers),
``cli`` (``avap-sync`` and ``avap-get``). The names below are the public API::

    from avapdefs.client import DefinitionClient, Replica, load_cached
"""

from avapdefs.client.follow import follow
from avapdefs.client.replica import CatalogView, Replica, ReplicaInfo
from avapdefs.client.rpc import DefinitionClient, SyncResult, load_cached

__all__ = ["CatalogView", "DefinitionClient", "Replica", "ReplicaInfo", "SyncResult", "follow", "load_cached"]
