-- Email matching under an ICU collation (docs/sync.md): lower() folds otherwise there (İ becomes
-- i with a combining dot), and matching follows it, as the unique index does, in Rust and SQL
-- alike. A server built without ICU (the PostgreSQL 18 tree the tests use) has no ICU locales
-- (initdb imported none): email_icu_1.out is that case.
SELECT EXISTS (SELECT FROM pg_catalog.pg_collation WHERE collname = 'und-x-icu') AS has_icu \gset
\if :has_icu
DROP DATABASE IF EXISTS nura_robust_icu;
CREATE DATABASE nura_robust_icu TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'und' LOCALE 'C.UTF-8';
\c nura_robust_icu
CREATE EXTENSION nura_users;
SELECT lower('İnci') = 'i' || chr(775) || 'nci' AS icu_lower;
SELECT nura_sync_user('{"id": "91000000-0000-4000-8000-000000000001", "email": "İnci@example.com"}') ->> 'sync_type' AS first;
SELECT nura_sync_user('{"id": "91000000-0000-4000-8000-000000000002", "email": "i\u0307nci@example.com"}') -> 'error' ->> 'code' AS same_address;
SELECT nura_sync_user('{"id": "91000000-0000-4000-8000-000000000003", "email": "inci@example.com"}') ->> 'sync_type' AS other_address;
\c nura_regress
DROP DATABASE nura_robust_icu;
\else
\echo this server was built without ICU
\endif
