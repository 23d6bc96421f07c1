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

-- The exporter's role: least privilege.
-- avap-export only reads these two tables, in READ ONLY transactions, so it
-- should log in as a role that can do nothing else. As a superuser or the
-- tables' owner (a role belongs to the whole cluster, so this script, which
-- `avap-export load-sample` runs, does not create it), with your own names:
--
--   CREATE ROLE avap_export LOGIN PASSWORD 'change-me';
--   ALTER ROLE avap_export SET default_transaction_read_only = on;
--   GRANT CONNECT ON DATABASE avap TO avap_export;
--   GRANT USAGE ON SCHEMA public TO avap_export;
--   GRANT SELECT ON obex_dapl_functions, avap_bytecode TO avap_export;
--
-- Nothing more is needed: the write counters it reads
-- (pg_stat_get_tuples_*, pg_relation_filenode) are open to every role. Give
-- it to the exporter in libpq's variables (PGUSER=avap_export and the
-- password in ~/.pgpass) or in --dsn. tests/exporter/test_privileges.py runs
-- exactly these statements and the exporter as that role.
