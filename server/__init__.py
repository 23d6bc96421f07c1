"""The AVAP definition server: serves the newest valid snapshot over gRPC."""
