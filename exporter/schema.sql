-- The legacy AVAP definitions schema, as existing deployments have it.
-- Used by tests, the demo (avap-export load-sample) and new installations.
CREATE TABLE IF NOT EXISTS obex_dapl_functions (
    id serial PRIMARY KEY,
    name varchar(100),
    interface text,
    description text,
    type varchar(50),
    logic boolean,
    componenttype varchar(50),
    service varchar(50),
    command varchar(50),
    code text
);

CREATE TABLE IF NOT EXISTS avap_bytecode (
    id serial PRIMARY KEY,
    command_name varchar(100) UNIQUE NOT NULL,
    bytecode bytea,
    version integer,
    source_hash text
);
