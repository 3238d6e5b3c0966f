# The commands a user types. Each script bootstraps what it needs (scripts/bootstrap).
.PHONY: test demo bench bootstrap install regress fmt clippy

test:           ## everything: cargo pgrx test, pg_regress, dump/restore, concurrency, migration, upgrade, crash, replica, the docs' examples
	@scripts/test

demo:           ## a throwaway cluster with Supabase Auth and legacy tables: the whole story (scripts/demo.sql)
	@scripts/demo $(ARGS)

bench:          ## release build; nura_users against the alternatives, medians and ratios
	@scripts/bench

bootstrap:      ## install PostgreSQL 15 dev packages, cargo-pgrx 0.18.1, cargo pgrx init
	@scripts/bootstrap

install: bootstrap  ## build and install the extension into PostgreSQL 15
	@bash -c '. scripts/lib.sh && install_extension $(PROFILE)'

regress: bootstrap  ## pg_regress and the shell tests, without cargo pgrx test (ARGS=pg_regress test names: only those)
	@scripts/regress $(ARGS)

fmt:
	cargo fmt

clippy:
	cargo clippy --features "pg15 pg_test" --all-targets -- -D warnings
