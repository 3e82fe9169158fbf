-- One database per service; each service creates its own tables in it at start-up.
-- Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d).
CREATE DATABASE catalog;
CREATE DATABASE sharing;
CREATE DATABASE billing;
CREATE DATABASE gateway;
