"""The shared core of the AVAP Definition Server: contract, snapshot format, client.

Imported by both the exporter and the server (they never import each other).
"""
