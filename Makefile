# The commands a user types. Each script bootstraps what it needs (scripts/bootstrap).
# PG=15 or PG=18 picks one PostgreSQL version; `make test` runs both unless told one, the other
# commands use 15 unless told 18.
.PHONY: test demo bench bootstrap install regress fmt clippy

test:           ## everything, on PostgreSQL 15 and 18: cargo pgrx test, pg_regress, dump/restore, concurrency, migration, upgrade, crash, replica, the docs' examples
	@scripts/test

demo:           ## a throwaway cluster with Supabase Auth and legacy tables: the whole story (scripts/demo.sql)
	@scripts/demo $(ARGS)

bench:          ## release build; nura_users against the alternatives, medians and ratios
	@scripts/bench

bootstrap:      ## install PostgreSQL 15 dev packages and PostgreSQL 18, cargo-pgrx 0.18.1, cargo pgrx init
	@scripts/bootstrap

install: bootstrap  ## build and install the extension into PostgreSQL 15 (PG=18: into the tree bootstrap set up)
	@bash -c '. scripts/lib.sh && install_extension $(PROFILE)'

regress: bootstrap  ## pg_regress and the shell tests, without cargo pgrx test (ARGS=pg_regress test names: only those)
	@scripts/regress $(ARGS)

fmt:
	cargo fmt

clippy:         ## both versions' builds, warnings as errors
	cargo clippy --features "pg15 pg_test" --all-targets -- -D warnings
	cargo clippy --no-default-features --features "pg18 pg_test" --all-targets -- -D warnings
