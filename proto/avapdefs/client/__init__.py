"""What workers and language servers use: calls, a synced local cache, an in-process replica, and the CLIs on top.

``rpc`` (``DefinitionClient``: get_command, batch_get, list_commands,
catalog_info, health, sync, watch), ``cache`` (``SyncResult``, ``load_cached``:
the local snapshot cache), ``follow`` (keep a cache current through
WatchCatalog), ``replica`` (``Replica``: the catalog in process, kept current,
for language servers), ``address`` (``HOST:PORT``), ``auth`` (the API key),
and the command-line tools: ``cli`` (``avap-sync``, ``avap-get``) and ``ctl``
(``avapctl``), on ``tool`` (what every tool shares) and ``render`` (text and
JSON output). The names below are the public API::

    from avapdefs.client import DefinitionClient, Replica, load_cached
"""

from avapdefs.client.cache import SyncResult, load_cached
from avapdefs.client.follow import follow
from avapdefs.client.replica import CatalogView, Replica, ReplicaInfo
from avapdefs.client.rpc import DefinitionClient

__all__ = ["CatalogView", "DefinitionClient", "Replica", "ReplicaInfo", "SyncResult", "follow", "load_cached"]
