"""avap-export: reads the AVAP definitions tables in PostgreSQL and publishes versioned snapshot files."""
