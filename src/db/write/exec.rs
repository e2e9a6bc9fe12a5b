//! The executor the critical-path writes run on: a statement with its arguments in, nothing, the
//! first column of the first row, or every row out. Two implementations: [`PoolExec`] on a sqlx
//! connection (a pooled transaction, on either backend) and [`SqliteExec`] on the SQLite
//! committer's own rusqlite connection. The statement sequences (`statements`) are written once
//! against the [`Exec`] trait; this file is the only place that knows how either library binds
//! an argument or reads a column.
//!
//! [`SqliteExec`] does no I/O of its own that could wait: each of its futures is ready the first
//! time it is polled, so the committer thread runs a whole batch in one poll ([`ready`]) and
//! never hops threads per statement.

use std::future::Future;

use rusqlite::types::{ToSql, ToSqlOutput};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, Row as _};

use crate::db::{Backend, Error};

/// One value for a `$n` placeholder: `args[n - 1]`. Nulls are typed, as PostgreSQL wants a
/// NULL of the column's type (`event_lz4` is `BYTEA`).
#[derive(Debug, Clone, Copy)]
pub(super) enum Arg<'a> {
    Int(i64),
    Real(f64),
    Text(&'a str),
    OptInt(Option<i64>),
    OptText(Option<&'a str>),
    OptBlob(Option<&'a [u8]>),
}

impl From<i64> for Arg<'_> {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<f64> for Arg<'_> {
    fn from(value: f64) -> Self {
        Self::Real(value)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(value: &'a str) -> Self {
        Self::Text(value)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(value: &'a String) -> Self {
        Self::Text(value)
    }
}

impl From<crate::model::Channel> for Arg<'_> {
    fn from(value: crate::model::Channel) -> Self {
        Self::Text(value.as_str())
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(value: Option<i64>) -> Self {
        Self::OptInt(value)
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(value: Option<&'a str>) -> Self {
        Self::OptText(value)
    }
}

impl<'a> From<Option<&'a [u8]>> for Arg<'a> {
    fn from(value: Option<&'a [u8]>) -> Self {
        Self::OptBlob(value)
    }
}

/// `[Arg; n]` from values that convert into one: `args![id, size, None::<&str>]`.
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        [$($crate::db::write::exec::Arg::from($value)),*]
    };
}
pub(super) use args;

/// A column value either library can read.
pub(super) trait Column: Sized {
    fn from_pool(row: &AnyRow, idx: usize) -> Result<Self, Error>;
    fn from_sqlite(row: &rusqlite::Row<'_>, idx: usize) -> Result<Self, Error>;
}

impl<T> Column for T
where
    T: rusqlite::types::FromSql + for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    fn from_pool(row: &AnyRow, idx: usize) -> Result<Self, Error> {
        Ok(row.try_get(idx)?)
    }

    fn from_sqlite(row: &rusqlite::Row<'_>, idx: usize) -> Result<Self, Error> {
        Ok(row.get(idx)?)
    }
}

/// A row read as a tuple of its columns, in `SELECT`/`RETURNING` order.
pub(super) trait FromRow: Sized {
    fn from_pool(row: &AnyRow) -> Result<Self, Error>;
    fn from_sqlite(row: &rusqlite::Row<'_>) -> Result<Self, Error>;
}

macro_rules! tuple_from_row {
    ($($column:ident $idx:tt),+) => {
        impl<$($column: Column),+> FromRow for ($($column,)+) {
            fn from_pool(row: &AnyRow) -> Result<Self, Error> {
                Ok(($($column::from_pool(row, $idx)?,)+))
            }

            fn from_sqlite(row: &rusqlite::Row<'_>) -> Result<Self, Error> {
                Ok(($($column::from_sqlite(row, $idx)?,)+))
            }
        }
    };
}
tuple_from_row!(A 0);
tuple_from_row!(A 0, B 1);
tuple_from_row!(A 0, B 1, C 2);

/// Where a write's statements run: inside a transaction its caller opened and commits.
pub(super) trait Exec {
    /// The dialect differences the statements care about (the claim's row lock).
    fn backend(&self) -> Backend;

    /// Whether a message's event is stored compressed in `event_lz4` (migration 0013) rather
    /// than as text in `event_json`. The SQLite committer compresses: a third of the pages, each
    /// written to the WAL and again by the checkpoint. So does PostgreSQL's pool: left to
    /// PostgreSQL, the event is compressed by TOAST with pglz, which was about a quarter of the
    /// database's CPU per message (BENCHMARKS.md), on the one server every node shares; LZ4
    /// on the node costs a fraction of that. In-memory SQLite keeps the text.
    fn compresses_events(&self) -> bool;

    /// Runs a statement, ignoring any rows it returns.
    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<(), Error>;

    /// The first column of the first row a statement returns, if any.
    async fn first<T: Column>(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Option<T>, Error>;

    /// Every row a statement returns.
    async fn rows<R: FromRow>(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<R>, Error>;

    /// Runs a statement whose text grows with a batch (a multi-row `INSERT` of `rows` rows).
    /// Texts of up to [`POOL_CACHED_ROWS`] rows stay prepared on a pooled connection, and of
    /// up to [`SQLITE_CACHED_ROWS`] on the SQLite committer's; a bigger batch, rare, is
    /// prepared for its one run.
    async fn execute_sized(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        rows: usize,
    ) -> Result<(), Error>;

    /// Every row a statement whose text grows with a batch returns; see
    /// [`Exec::execute_sized`].
    async fn rows_sized<R: FromRow>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        rows: usize,
    ) -> Result<Vec<R>, Error>;

    /// Statements run so far: on PostgreSQL each is a round trip, which is what a batch saves.
    fn statements(&self) -> u64;
}

/// Statements on a sqlx connection: a pooled transaction of the group committer, or a pooled
/// connection for a read.
pub(super) struct PoolExec<'c> {
    pub(super) conn: &'c mut sqlx::AnyConnection,
    pub(super) backend: Backend,
    pub(super) statements: u64,
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, AnyArguments<'q>>;

fn bind_pool<'q>(mut query: AnyQuery<'q>, args: &[Arg<'q>]) -> AnyQuery<'q> {
    for arg in args {
        query = match *arg {
            Arg::Int(value) => query.bind(value),
            Arg::Real(value) => query.bind(value),
            Arg::Text(value) => query.bind(value),
            Arg::OptInt(value) => query.bind(value),
            Arg::OptText(value) => query.bind(value),
            Arg::OptBlob(value) => query.bind(value),
        };
    }
    query
}

impl Exec for PoolExec<'_> {
    fn backend(&self) -> Backend {
        self.backend
    }

    fn compresses_events(&self) -> bool {
        self.backend == Backend::Postgres
    }

    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<(), Error> {
        self.statements += 1;
        bind_pool(sqlx::query(sql), args)
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }

    async fn first<T: Column>(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Option<T>, Error> {
        self.statements += 1;
        bind_pool(sqlx::query(sql), args)
            .fetch_optional(&mut *self.conn)
            .await?
            .map(|row| T::from_pool(&row, 0))
            .transpose()
    }

    async fn rows<R: FromRow>(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<R>, Error> {
        self.statements += 1;
        bind_pool(sqlx::query(sql), args)
            .fetch_all(&mut *self.conn)
            .await?
            .iter()
            .map(R::from_pool)
            .collect()
    }

    async fn execute_sized(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        rows: usize,
    ) -> Result<(), Error> {
        self.statements += 1;
        bind_pool(sqlx::query(sql), args)
            .persistent(rows <= POOL_CACHED_ROWS)
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }

    async fn rows_sized<R: FromRow>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        rows: usize,
    ) -> Result<Vec<R>, Error> {
        self.statements += 1;
        bind_pool(sqlx::query(sql), args)
            .persistent(rows <= POOL_CACHED_ROWS)
            .fetch_all(&mut *self.conn)
            .await?
            .iter()
            .map(R::from_pool)
            .collect()
    }

    fn statements(&self) -> u64 {
        self.statements
    }
}

/// Rows up to which a pooled connection keeps a batch statement's text prepared. On
/// PostgreSQL a statement not prepared yet is two round trips (sqlx parses and describes it,
/// then binds and runs it) and is planned anew, and a busy node's batches are mostly of a
/// few rows: with one text per size and kind (about five kinds), their statements fit the
/// connection's cache ([`crate::db::POOL_STATEMENT_CACHE`]) beside everything else it runs.
pub(super) const POOL_CACHED_ROWS: usize = 16;

/// Rows up to which the SQLite committer keeps a batch statement's text prepared. Preparing a
/// multi-row insert anew for each batch was a quarter of the committer's instructions
/// (BENCHMARKS.md); with at most five such texts per size, their statements fit the
/// connection's cache (`write::sqlite`), and a bigger batch, rare, is prepared once.
pub(super) const SQLITE_CACHED_ROWS: usize = 64;

/// Statements on the SQLite committer's connection, as cached prepared statements.
pub(super) struct SqliteExec<'c> {
    pub(super) conn: &'c rusqlite::Connection,
    pub(super) statements: u64,
}

impl ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Self::Int(value) => value.to_sql(),
            Self::Real(value) => value.to_sql(),
            Self::Text(value) => value.to_sql(),
            Self::OptInt(value) => value.to_sql(),
            Self::OptText(value) => value.to_sql(),
            Self::OptBlob(value) => value.to_sql(),
        }
    }
}

impl SqliteExec<'_> {
    fn prepare(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<rusqlite::CachedStatement<'_>, Error> {
        self.statements += 1;
        let mut statement = self.conn.prepare_cached(sql)?;
        bind_numbered(&mut statement, sql, args)?;
        Ok(statement)
    }
}

impl Exec for SqliteExec<'_> {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn compresses_events(&self) -> bool {
        true
    }

    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<(), Error> {
        self.prepare(sql, args)?.raw_execute()?;
        Ok(())
    }

    async fn first<T: Column>(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Option<T>, Error> {
        let mut statement = self.prepare(sql, args)?;
        let mut rows = statement.raw_query();
        match rows.next()? {
            Some(row) => Ok(Some(T::from_sqlite(row, 0)?)),
            None => Ok(None),
        }
    }

    async fn rows<R: FromRow>(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<R>, Error> {
        let mut statement = self.prepare(sql, args)?;
        let mut found = Vec::new();
        let mut rows = statement.raw_query();
        while let Some(row) = rows.next()? {
            found.push(R::from_sqlite(row)?);
        }
        Ok(found)
    }

    async fn execute_sized(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        rows: usize,
    ) -> Result<(), Error> {
        if rows <= SQLITE_CACHED_ROWS {
            return self.execute(sql, args).await;
        }
        self.statements += 1;
        let mut statement = self.conn.prepare(sql)?;
        bind_numbered(&mut statement, sql, args)?;
        statement.raw_execute()?;
        Ok(())
    }

    async fn rows_sized<R: FromRow>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        rows: usize,
    ) -> Result<Vec<R>, Error> {
        if rows <= SQLITE_CACHED_ROWS {
            return self.rows(sql, args).await;
        }
        self.statements += 1;
        let mut statement = self.conn.prepare(sql)?;
        bind_numbered(&mut statement, sql, args)?;
        let mut found = Vec::new();
        let mut result = statement.raw_query();
        while let Some(row) = result.next()? {
            found.push(R::from_sqlite(row)?);
        }
        Ok(found)
    }

    fn statements(&self) -> u64 {
        self.statements
    }
}

/// Binds `values[n - 1]` to each `$n` of a statement. SQLite numbers parameters in order of
/// first appearance, whatever their names say, so they are matched by name, as sqlx does.
/// SQLite finds a parameter's name by walking its list of names from the start, so asking it
/// for each name is quadratic: for a multi-row insert of a thousand parameters that was a
/// percent of the gateway's CPU. Past [`NAMES_ASKED_UP_TO`] parameters the names are read off
/// the statement's text in one pass instead, which for a few parameters costs more than asking.
fn bind_numbered(
    statement: &mut rusqlite::Statement<'_>,
    sql: &str,
    values: &[Arg<'_>],
) -> Result<(), Error> {
    let count = statement.parameter_count();
    let from_text = (count > NAMES_ASKED_UP_TO).then(|| numbers_in_order_of_first_use(sql));
    if let Some(numbers) = &from_text
        && numbers.len() != count
    {
        return Err(Error::Corrupt(format!(
            "statement has {count} parameters, its text names {}",
            numbers.len()
        )));
    }
    for index in 1..=count {
        let number = match &from_text {
            Some(numbers) => numbers.get(index - 1).copied(),
            None => statement
                .parameter_name(index)
                .and_then(|name| name.strip_prefix('$'))
                .and_then(|number| number.parse::<usize>().ok()),
        };
        let value = number
            .and_then(|number| number.checked_sub(1))
            .and_then(|number| values.get(number))
            .ok_or_else(|| Error::Corrupt(format!("statement parameter {index} has no value")))?;
        statement.raw_bind_parameter(index, value)?;
    }
    Ok(())
}

/// Parameters up to which [`bind_numbered`] asks SQLite for their names.
const NAMES_ASKED_UP_TO: usize = 64;

/// The `n` of each distinct `$n` in `sql`, in order of first appearance. The statements here
/// have no `$` anywhere else (no string literal holds one). The `$` are found with `memchr`
/// (`match_indices` of a `char`).
fn numbers_in_order_of_first_use(sql: &str) -> Vec<usize> {
    let bytes = sql.as_bytes();
    let mut seen: Vec<bool> = Vec::new();
    let mut numbers = Vec::new();
    for (at, _) in sql.match_indices('$') {
        let mut number: usize = 0;
        for byte in bytes[at + 1..]
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
        {
            number = number
                .saturating_mul(10)
                .saturating_add(usize::from(byte - b'0'));
        }
        // A bare `$` or `$0` names no parameter; a number past any real statement's would
        // only allocate, and then fails the count check of the caller.
        if number == 0 || number > MAX_PARAMETER_NUMBER {
            continue;
        }
        if seen.len() < number {
            seen.resize(number.max(2 * seen.len()), false);
        }
        if !seen[number - 1] {
            seen[number - 1] = true;
            numbers.push(number);
        }
    }
    numbers
}

/// Above every parameter number a statement here uses (PostgreSQL's limit is 65,535).
const MAX_PARAMETER_NUMBER: usize = 65_535;

/// The output of a future run on [`SqliteExec`], which is ready at its first poll.
///
/// # Errors
/// The future's error; [`Error::Corrupt`] if it was not ready (it awaited something other than
/// a [`SqliteExec`] statement).
pub(super) fn ready<T>(future: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    futures_util::FutureExt::now_or_never(std::pin::pin!(future)).unwrap_or_else(|| {
        Err(Error::Corrupt(
            "a write on the SQLite committer's thread waited".to_owned(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::numbers_in_order_of_first_use;

    #[test]
    fn parameters_are_numbered_in_order_of_first_use_as_sqlite_does() {
        // The rate count's rows: `$1` (the time) first appears after `$2` and `$4`, and `$3`
        // only in a later clause.
        let sql = "INSERT INTO t VALUES ($2, $4, $1), ($5, $7, $1) ON CONFLICT DO UPDATE SET \
                   x = CASE b WHEN $2 THEN $3 WHEN $5 THEN $6 END, y = $10::BIGINT";
        assert_eq!(
            numbers_in_order_of_first_use(sql),
            [2, 4, 1, 5, 7, 3, 6, 10]
        );
        assert_eq!(
            numbers_in_order_of_first_use("SELECT 1"),
            Vec::<usize>::new()
        );
        assert_eq!(
            numbers_in_order_of_first_use("SELECT $ , $0, $12, $99999999999999999999999"),
            [12]
        );
    }

    #[test]
    fn a_statement_binds_each_value_to_its_own_number_whatever_the_order() {
        let conn = rusqlite::Connection::open_in_memory().expect("open");
        let sql = "SELECT $3 || $1 || $2 || $1";
        let mut statement = conn.prepare(sql).expect("prepare");
        super::bind_numbered(&mut statement, sql, &super::args!["a", "b", "c"]).expect("bind");
        let mut rows = statement.raw_query();
        let row = rows.next().expect("step").expect("a row");
        assert_eq!(row.get::<_, String>(0).expect("text"), "caba");
    }

    #[test]
    fn a_statement_of_many_parameters_binds_each_to_its_own_number_too() {
        // Past the parameters whose names SQLite is asked for: numbered from the text.
        let count = 2 * super::NAMES_ASKED_UP_TO;
        let terms: Vec<String> = (1..=count).rev().map(|n| format!("${n}")).collect();
        let sql = format!("SELECT {}", terms.join(" || ',' || "));
        let texts: Vec<String> = (1..=count).map(|n| n.to_string()).collect();
        let values: Vec<super::Arg<'_>> = texts.iter().map(super::Arg::from).collect();
        let conn = rusqlite::Connection::open_in_memory().expect("open");
        let mut statement = conn.prepare(&sql).expect("prepare");
        super::bind_numbered(&mut statement, &sql, &values).expect("bind");
        let mut rows = statement.raw_query();
        let row = rows.next().expect("step").expect("a row");
        let expected: Vec<String> = (1..=count).rev().map(|n| n.to_string()).collect();
        assert_eq!(row.get::<_, String>(0).expect("text"), expected.join(","));
    }
}
