"""The bytes: every file format of the catalog, in both directions.

``wire`` (protobuf framing read and written by hand), ``snapshot`` (the
snapshot file: header, write, read, verify), ``reader`` (a snapshot streamed
from disk), ``delta`` (record-level deltas between versions), ``package``
(the signed code package legacy clients run). Pure: no folder, no network.
"""
