-- Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d): one database per
-- service, all owned by the `hub` user of POSTGRES_USER. The services create their tables at start.
CREATE DATABASE hub_registry;
CREATE DATABASE hub_prompt;
CREATE DATABASE hub_stats;
CREATE DATABASE hub_dispatch;
CREATE DATABASE hub_gateway;
CREATE DATABASE hub_ui;
