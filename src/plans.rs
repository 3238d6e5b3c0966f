//! Statements prepared once per backend and kept (`SPI_keepplan`), so that the hot paths — the
//! auth trigger on every signup and sign-in, `nura_sync_user`, the reads — do not parse and plan
//! their SQL on every call.
//!
//! A plan is keyed by its SQL text (which names the extension's schema) and argument types. When
//! the tables change under a kept plan (DDL, or the extension dropped and created again),
//! PostgreSQL's plan cache notices and plans it again from the text; every name in that text is
//! schema-qualified, so it resolves the same way whatever the caller's `search_path`.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{self, OwnedPreparedStatement, SpiClient, SpiHeapTupleData};
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A statement's text and argument types.
type PlanKey = (String, Vec<pg_sys::Oid>);

thread_local! {
    static PLANS: RefCell<HashMap<(PlanKey, bool), Rc<OwnedPreparedStatement>>> =
        RefCell::new(HashMap::new());
}

/// One array argument made of `f` of every item: a column of a batch that a statement takes
/// apart again with `unnest` (one array per column, side by side in `ROWS FROM`).
pub fn column<'a, I, T>(items: &'a [I], f: impl Fn(&'a I) -> T) -> DatumWithOid<'static>
where
    Vec<T>: IntoDatum,
{
    DatumWithOid::from(items.iter().map(f).collect::<Vec<T>>())
}

/// `writes`: a plan that may change data. Running one gives the transaction an id (pgrx marks
/// it mutable), which a hot standby refuses; reads therefore use read-only plans.
fn plan_for(
    client: &SpiClient<'_>,
    sql: &str,
    args: &[DatumWithOid<'_>],
    writes: bool,
) -> spi::Result<Rc<OwnedPreparedStatement>> {
    let types: Vec<pg_sys::Oid> = args.iter().map(|a| a.oid()).collect();
    let key = ((sql.to_string(), types), writes);
    if let Some(plan) = PLANS.with(|p| p.borrow().get(&key).cloned()) {
        return Ok(plan);
    }
    let oids: Vec<PgOid> = key.0 .1.iter().map(|o| PgOid::from(*o)).collect();
    let prepared = if writes {
        client.prepare_mut(sql, &oids)?
    } else {
        client.prepare(sql, &oids)?
    };
    let plan = Rc::new(prepared.keep());
    PLANS.with(|p| p.borrow_mut().insert(key, plan.clone()));
    Ok(plan)
}

/// ERROR 25006 before any write on a hot standby, instead of PostgreSQL's internal error about
/// assigning a transaction id during recovery.
fn require_writable() {
    if unsafe { pg_sys::RecoveryInProgress() } {
        crate::errors::raise(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "cannot write on a hot standby: nura_users' write functions run on the primary",
            None,
        );
    }
}

/// Run a read-only `sql` (no transaction id, works on a hot standby; sees the snapshot of the
/// calling statement) and hand the first row (if any) to `read`.
pub fn read_first_row<R>(
    sql: &str,
    args: &[DatumWithOid<'_>],
    read: impl FnOnce(&SpiHeapTupleData<'_>) -> spi::Result<R>,
) -> spi::Result<Option<R>> {
    Spi::connect(|client| {
        let plan = plan_for(client, sql, args, false)?;
        let rows = client.select(&*plan, None, args)?;
        match rows.into_iter().next() {
            Some(row) => read(&row).map(Some),
            None => Ok(None),
        }
    })
}

/// The first column of the first row of a read-only `sql`.
pub fn read_scalar<T: FromDatum + IntoDatum>(
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> spi::Result<Option<T>> {
    read_first_row(sql, args, |row| row.get::<T>(1)).map(Option::flatten)
}

/// Run `sql`, which may write (and sees what the transaction wrote so far), and hand the first
/// row (if any) to `read`.
pub fn first_row<R>(
    sql: &str,
    args: &[DatumWithOid<'_>],
    read: impl FnOnce(&SpiHeapTupleData<'_>) -> spi::Result<R>,
) -> spi::Result<Option<R>> {
    require_writable();
    Spi::connect_mut(|client| {
        let plan = plan_for(client, sql, args, true)?;
        let rows = client.update(&*plan, None, args)?;
        match rows.into_iter().next() {
            Some(row) => read(&row).map(Some),
            None => Ok(None),
        }
    })
}

/// Run `sql` and hand every row to `read`.
pub fn rows<R>(
    sql: &str,
    args: &[DatumWithOid<'_>],
    mut read: impl FnMut(&SpiHeapTupleData<'_>) -> spi::Result<R>,
) -> spi::Result<Vec<R>> {
    require_writable();
    Spi::connect_mut(|client| {
        let plan = plan_for(client, sql, args, true)?;
        let rows = client.update(&*plan, None, args)?;
        rows.into_iter().map(|row| read(&row)).collect()
    })
}

/// Run `sql` and return the first column of its first row (`None` for no row or NULL).
pub fn scalar<T: FromDatum + IntoDatum>(
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> spi::Result<Option<T>> {
    first_row(sql, args, |row| row.get::<T>(1)).map(Option::flatten)
}

/// Run `sql` for its effect and return how many rows it processed (a statement without
/// `RETURNING`: no result tuple is formed and copied out of SPI).
pub fn execute_count(sql: &str, args: &[DatumWithOid<'_>]) -> spi::Result<usize> {
    require_writable();
    Spi::connect_mut(|client| {
        let plan = plan_for(client, sql, args, true)?;
        client.update(&*plan, None, args).map(|rows| rows.len())
    })
}

/// Run `sql` for its effect.
pub fn execute(sql: &str, args: &[DatumWithOid<'_>]) -> spi::Result<()> {
    execute_count(sql, args).map(|_| ())
}

/// Run `sql` for its effect once, without keeping its plan: for a statement a backend runs once
/// in a while (a migration's plan, its temporary table, ANALYZE), whose kept plan would only
/// hold memory for the life of the backend.
pub fn execute_once(sql: &str, args: &[DatumWithOid<'_>]) -> spi::Result<()> {
    require_writable();
    Spi::run_with_args(sql, args)
}

/// How many kept plans have SQL starting with `prefix` (tests).
#[cfg(any(test, feature = "pg_test"))]
pub fn kept_plans_starting_with(prefix: &str) -> usize {
    PLANS.with(|p| {
        p.borrow()
            .keys()
            .filter(|((sql, _), _)| sql.starts_with(prefix))
            .count()
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn a_kept_plan_survives_its_table_being_dropped_and_created_again() {
        let count = || super::scalar::<i64>("SELECT count(*) FROM public.plan_probe", &[]).unwrap();
        Spi::run(
            "CREATE TABLE public.plan_probe (x int); INSERT INTO public.plan_probe VALUES (1)",
        )
        .unwrap();
        assert_eq!(count(), Some(1));
        Spi::run(
            "DROP TABLE public.plan_probe; CREATE TABLE public.plan_probe (y text, x int); \
             INSERT INTO public.plan_probe VALUES ('a', 1), ('b', 2)",
        )
        .unwrap();
        assert_eq!(count(), Some(2));
        let none =
            super::scalar::<i32>("SELECT x FROM public.plan_probe WHERE x > $1", &[5.into()])
                .unwrap();
        assert_eq!(none, None);
    }
}
