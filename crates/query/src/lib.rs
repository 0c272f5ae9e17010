//! SQL over classes (`docs/query.md`): each class is a SQLite virtual table, each of its
//! properties a column, and SQLite (bundled, through `rusqlite`) does the parsing,
//! planning, joins, aggregates and expressions. This crate knows no host: it reads classes
//! through a [`Source`], which the host implements as the caller (access policy, loading,
//! deadlines), and the tests with fixed instances.
//!
//! **Names.** `system.process` in SQL is SQLite's schema `system`, table `process`: a
//! class `NS.NAME` is found under its namespace as a schema, attached on first use, so it
//! is written unquoted as in `purveyor get`. A quoted `"NS.NAME"` (any depth) is found too.
//! Tables are made only for the classes a statement names.
//!
//! **Pushdown.** SQLite tells each table which constraints it may use
//! ([`ClassTab::best_index`]); equality on key properties is taken. Every key property
//! equal to a value: the class is asked for that one instance (a `get`); some of them: an
//! `enumerate` with those as its selector; none: an `enumerate` of every instance. SQLite
//! still checks every constraint on the rows it gets. What each class was asked is kept
//! as the plan ([`Answer::plan`]).
//!
//! **Limits.** A statement must only read (a `SELECT`, or `WITH … SELECT`); its SQL is at
//! most [`MAX_SQL`] bytes; it runs for at most [`Limits::time`] (SQLite's progress
//! handler interrupts it), returns at most [`Limits::rows`] rows and reads at most
//! [`Limits::instances`] instances from classes; each is an error naming the limit.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use purveyor_model::{
    ClassPath, ClassSchema, Instance, InstanceKey, ScalarType, Timestamp, Value, ValueType,
};
use purveyor_protocol::{ErrorCode, QueryColumn, QueryRows, RemoteError};
use rusqlite::types::ValueRef;
use rusqlite::vtab::Module;
use rusqlite::{Connection, Error as SqlError};

mod vtab;

use vtab::ClassTab;

/// The longest SQL text accepted, in bytes.
pub const MAX_SQL: usize = 64 * 1024;
/// The most classes one statement may name.
const MAX_TABLES: usize = 16;

/// Where a query reads classes from: the host, as the caller.
pub trait Source: Send + Sync {
    /// The class's schema; `Ok(None)` when there is no such class. An error (the caller
    /// may not read it, its provider failed to load) ends the query with it.
    fn schema(&self, class: &ClassPath) -> Result<Option<Arc<ClassSchema>>, RemoteError>;
    /// The instances of `class` whose properties equal `key`'s; `whole` when `key` holds
    /// every key property (one instance at most: a `get`, whose "not found" is no rows).
    fn fetch(
        &self,
        class: &ClassPath,
        key: &InstanceKey,
        whole: bool,
    ) -> Result<Vec<Instance>, RemoteError>;
}

/// What one query may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub rows: usize,
    pub instances: usize,
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rows: 100_000,
            instances: 1_000_000,
            time: Duration::from_secs(30),
        }
    }
}

/// A query's answer.
pub type Answer = QueryRows;

/// Why a query failed; [`QueryError::remote`] gives its wire form.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryError {
    /// The SQL is wrong: SQLite's message, and the byte offset it points at when known.
    Sql {
        message: String,
        offset: Option<usize>,
    },
    /// A class the statement names does not exist (at this byte offset, when found).
    UnknownClass {
        class: String,
        offset: Option<usize>,
    },
    /// Reading a class failed, as the host said (access denied, the provider's error).
    Class(RemoteError),
    /// A limit was reached: which, and its value.
    Limit(String),
    /// A column is compared with a value of another kind (`pid = 'abc'`): the column
    /// (`class.property`), its type, the value as SQL writes it, and the value's byte
    /// offset in the statement when found there.
    TypeMismatch {
        column: String,
        expected: String,
        found: String,
        offset: Option<usize>,
    },
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at =
            |offset: &Option<usize>| offset.map(|o| format!(" at byte {o}")).unwrap_or_default();
        match self {
            QueryError::Sql { message, offset } => write!(f, "SQL error{}: {message}", at(offset)),
            QueryError::UnknownClass { class, offset } => {
                write!(f, "no class {class}{}", at(offset))
            }
            QueryError::Class(e) => write!(f, "{}", e.message),
            QueryError::Limit(what) => write!(f, "{what}"),
            QueryError::TypeMismatch {
                column,
                expected,
                found,
                offset,
            } => write!(
                f,
                "type mismatch{}: {column} is {expected}, compared with {found}",
                at(offset)
            ),
        }
    }
}

impl QueryError {
    pub fn remote(&self) -> RemoteError {
        match self {
            QueryError::Class(e) => e.clone(),
            QueryError::Sql { .. } => RemoteError::new(ErrorCode::InvalidRequest, self.to_string()),
            QueryError::UnknownClass { .. } => {
                RemoteError::new(ErrorCode::NotFound, self.to_string())
            }
            QueryError::Limit(_) => RemoteError::new(ErrorCode::LimitExceeded, self.to_string()),
            QueryError::TypeMismatch { .. } => {
                RemoteError::new(ErrorCode::InvalidRequest, self.to_string())
            }
        }
    }
}

/// What a connection's tables share: the schemas they were made with, and the query
/// running on the connection now.
#[derive(Default)]
struct Env {
    /// Schemas of the classes given tables, by class path.
    schemas: Mutex<HashMap<String, Arc<ClassSchema>>>,
    current: Mutex<Option<Arc<Query>>>,
}

impl Env {
    fn query(&self) -> rusqlite::Result<Arc<Query>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| SqlError::ModuleError("no query is running".into()))
    }
}

/// One query's state.
struct Query {
    source: Arc<dyn Source>,
    plan: Mutex<Vec<String>>,
    /// Instances read so far, against `instances`.
    read: AtomicUsize,
    instances: usize,
    /// The first class error: reported as it is instead of SQLite's wrapping of it.
    failure: Mutex<Option<QueryError>>,
    /// Classes whose table was checked against the class's schema in this query.
    checked: Mutex<HashSet<String>>,
    /// A table no longer matches its class's schema: the connection is not reused.
    stale: AtomicBool,
    /// What each class gave this query so far, by class path ([`vtab`]'s reads).
    reads: Mutex<HashMap<String, ClassReads>>,
    /// Plan lines past [`PLAN_LINES`], counted.
    more_reads: AtomicUsize,
}

/// A class's reads in one query: its gets, and its whole enumeration once made (every
/// later read of the class is answered from it).
#[derive(Default)]
struct ClassReads {
    gets: usize,
    all: Option<Arc<Enumerated>>,
}

/// A class's whole enumeration in one query, and where each whole key is in it.
struct Enumerated {
    instances: Vec<Instance>,
    by_key: HashMap<String, usize>,
}

/// The most plan lines kept; later reads are counted in one last line.
const PLAN_LINES: usize = 100;

impl Query {
    /// Adds a line to the plan, or counts it past [`PLAN_LINES`].
    fn note(&self, line: String) {
        let mut plan = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        if plan.len() < PLAN_LINES {
            plan.push(line);
        } else {
            self.more_reads.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn fail(&self, e: QueryError) -> SqlError {
        let message = e.to_string();
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
        SqlError::ModuleError(message)
    }
}

/// Runs queries on a few SQLite connections kept between them, with the tables already
/// made: a repeated query skips opening a connection, attaching namespaces and making
/// tables. A table whose class's schema changed is found by the first read of it in a
/// query; that connection is dropped and the query runs again on a new one.
#[derive(Default)]
pub struct Engine {
    idle: Mutex<Vec<Pooled>>,
}

/// Connections kept idle.
const POOL: usize = 4;
/// A connection with more tables than this is not kept.
const KEPT_TABLES: usize = 64;

struct Pooled {
    conn: Connection,
    env: Arc<Env>,
    tables: Tables,
}

impl Pooled {
    fn new() -> Result<Pooled, QueryError> {
        let env = Arc::new(Env::default());
        let conn = Connection::open_in_memory().map_err(internal)?;
        const MODULE: Module<ClassTab> = Module::read_only_module();
        conn.create_module(c"purveyor", &MODULE, Some(env.clone()))
            .map_err(internal)?;
        Ok(Pooled {
            conn,
            env,
            tables: Tables::default(),
        })
    }
}

fn internal(e: SqlError) -> QueryError {
    QueryError::Sql {
        message: e.to_string(),
        offset: None,
    }
}

/// Runs `sql` against the classes `source` gives, on a connection of its own.
pub fn run(
    source: Arc<dyn Source>,
    sql: &str,
    plan: bool,
    limits: &Limits,
) -> Result<Answer, QueryError> {
    Engine::default().run(source, sql, plan, limits)
}

impl Engine {
    /// Runs `sql` against the classes `source` gives.
    pub fn run(
        &self,
        source: Arc<dyn Source>,
        sql: &str,
        plan: bool,
        limits: &Limits,
    ) -> Result<Answer, QueryError> {
        if sql.len() > MAX_SQL {
            return Err(QueryError::Limit(format!(
                "the SQL is {} bytes; the limit is {MAX_SQL}",
                sql.len()
            )));
        }
        let deadline = Instant::now() + limits.time;
        // A stale table is found once per connection: the second try is on a new one.
        for _ in 0..2 {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut pooled = match idle {
                Some(pooled) => pooled,
                None => Pooled::new()?,
            };
            let query = Arc::new(Query {
                source: source.clone(),
                plan: Mutex::default(),
                read: AtomicUsize::new(0),
                instances: limits.instances,
                failure: Mutex::default(),
                checked: Mutex::default(),
                stale: AtomicBool::new(false),
                reads: Mutex::default(),
                more_reads: AtomicUsize::new(0),
            });
            *pooled.env.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(query.clone());
            let result = execute(&mut pooled, &query, sql, plan, limits, deadline);
            *pooled.env.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
            if query.stale.load(Ordering::SeqCst) {
                // The other kept connections likely hold the same stale table.
                self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
                continue;
            }
            if pooled.tables.made.len() <= KEPT_TABLES {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < POOL {
                    idle.push(pooled);
                }
            }
            return result;
        }
        Err(QueryError::Limit(
            "the classes' schemas kept changing while the query ran".into(),
        ))
    }
}

fn execute(
    pooled: &mut Pooled,
    query: &Query,
    sql: &str,
    plan: bool,
    limits: &Limits,
    deadline: Instant,
) -> Result<Answer, QueryError> {
    let Pooled { conn, env, tables } = pooled;
    conn.progress_handler(1000, Some(move || Instant::now() >= deadline))
        .map_err(internal)?;
    let failed = |e: SqlError| -> QueryError {
        if let Some(mut f) = query
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            if let QueryError::TypeMismatch { found, offset, .. } = &mut f {
                *offset = sql.find(found.as_str());
                // Found, it is quoted cut short: the statement may be 64 KiB.
                *found = purveyor_model::shorten(found, purveyor_model::QUOTE_MAX).into_owned();
            }
            return f;
        }
        if matches!(&e, SqlError::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::OperationInterrupted)
        {
            return QueryError::Limit(format!(
                "the query ran longer than its limit of {}",
                humanize(limits.time)
            ));
        }
        sql_error(e)
    };
    let mut made = 0;
    let mut stmt = loop {
        match conn.prepare_cached(sql) {
            Ok(stmt) => break stmt,
            Err(e) => match missing_table(&e) {
                Some(name) if made < MAX_TABLES => {
                    made += 1;
                    tables.make(conn, env, query, sql, &name)?;
                }
                _ => return Err(failed(e)),
            },
        }
    };
    if !stmt.readonly() {
        return Err(QueryError::Sql {
            message: "only queries that read (SELECT) are allowed".into(),
            offset: Some(0),
        });
    }
    let columns = result_columns(&stmt, env);
    let mut rows = Vec::new();
    let mut cursor = stmt.query([]).map_err(&failed)?;
    while let Some(row) = cursor.next().map_err(&failed)? {
        if rows.len() == limits.rows {
            return Err(QueryError::Limit(format!(
                "the query returns more than its limit of {} rows",
                limits.rows
            )));
        }
        let mut values = Vec::with_capacity(columns.len());
        for (i, column) in columns.iter().enumerate() {
            let raw = row.get_ref(i).map_err(&failed)?;
            values.push(from_sql(raw, column.ty));
        }
        rows.push(values);
    }
    let plan = if plan {
        let mut lines = std::mem::take(&mut *query.plan.lock().unwrap_or_else(|p| p.into_inner()));
        let more = query.more_reads.load(Ordering::SeqCst);
        if more > 0 {
            lines.push(format!("… and {more} more reads"));
        }
        lines
    } else {
        Vec::new()
    };
    Ok(QueryRows {
        columns,
        rows,
        plan,
    })
}

fn humanize(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn sql_error(e: SqlError) -> QueryError {
    match e {
        SqlError::SqlInputError { msg, offset, .. } => QueryError::Sql {
            message: msg,
            offset: usize::try_from(offset).ok(),
        },
        SqlError::SqliteFailure(_, Some(msg)) => QueryError::Sql {
            message: msg,
            offset: None,
        },
        other => QueryError::Sql {
            message: other.to_string(),
            offset: None,
        },
    }
}

/// The table SQLite did not find, from its error.
fn missing_table(e: &SqlError) -> Option<String> {
    let message = match e {
        SqlError::SqlInputError { msg, .. } => msg.as_str(),
        SqlError::SqliteFailure(_, Some(msg)) => msg.as_str(),
        _ => return None,
    };
    message
        .strip_prefix("no such table: ")
        .map(|n| n.trim().to_string())
}

/// The classes given tables so far, and the namespaces attached as schemas.
#[derive(Default)]
struct Tables {
    made: HashSet<String>,
    attached: HashSet<String>,
}

impl Tables {
    /// Makes a table for `name` as SQLite spelled it: first as `NS`.`REST` (a schema per
    /// namespace, so the name works unquoted), then, if that name is asked for again, as
    /// one quoted name in `main`.
    fn make(
        &mut self,
        conn: &Connection,
        env: &Env,
        query: &Query,
        sql: &str,
        name: &str,
    ) -> Result<(), QueryError> {
        let unknown = || QueryError::UnknownClass {
            class: name.to_string(),
            offset: sql.find(name),
        };
        let class = ClassPath::new(name).map_err(|_| unknown())?;
        let schema = query
            .source
            .schema(&class)
            .map_err(QueryError::Class)?
            .ok_or_else(unknown)?;
        query
            .checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
        env.schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), schema);
        let (db, table) = match name.split_once('.') {
            Some((ns, rest)) if !self.made.contains(name) => {
                if self.attached.insert(ns.to_string()) {
                    conn.execute_batch(&format!("ATTACH DATABASE ':memory:' AS {}", quote(ns)))
                        .map_err(internal)?;
                }
                (ns.to_string(), rest.to_string())
            }
            _ => ("main".to_string(), name.to_string()),
        };
        self.made.insert(name.to_string());
        conn.execute_batch(&format!(
            "CREATE VIRTUAL TABLE {}.{} USING purveyor({})",
            quote(&db),
            quote(&table),
            quote(name)
        ))
        .map_err(internal)
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Each result column's name, and the type and unit of the property it is, if it is one.
fn result_columns(stmt: &rusqlite::Statement<'_>, env: &Env) -> Vec<QueryColumn> {
    let schemas = env.schemas.lock().unwrap_or_else(|p| p.into_inner());
    stmt.columns_with_metadata()
        .map(|c| {
            let property = c
                .table_name()
                .zip(c.origin_name())
                .and_then(|(table, origin)| {
                    let class = match c.database_name() {
                        Some("main") | None => table.to_string(),
                        Some(db) => format!("{db}.{table}"),
                    };
                    let schema = schemas.get(&class)?;
                    schema
                        .properties()
                        .iter()
                        .find(|p| p.name.as_str() == origin)
                        .cloned()
                });
            QueryColumn {
                name: c.name().to_string(),
                ty: property.as_ref().map(|p| p.ty),
                unit: property.map(|p| p.unit),
            }
        })
        .collect()
}

/// A SQLite value as a property's value: as the property's type when the column is one,
/// else as SQLite typed it.
fn from_sql(raw: ValueRef<'_>, ty: Option<ValueType>) -> Option<Value> {
    let scalar = match ty {
        Some(ValueType::Scalar(s)) => Some(s),
        _ => None,
    };
    Some(match raw {
        ValueRef::Null => return None,
        ValueRef::Integer(i) => match scalar {
            Some(ScalarType::U64) if i >= 0 => Value::U64(i as u64),
            Some(ScalarType::Bool) => Value::Bool(i != 0),
            Some(ScalarType::Timestamp) => Value::Timestamp(Timestamp(i)),
            _ => Value::I64(i),
        },
        ValueRef::Real(f) => match scalar {
            // A u64 above i64::MAX went in as a real.
            Some(ScalarType::U64) if f >= 0.0 && f.fract() == 0.0 => Value::U64(f as u64),
            _ => Value::F64(f),
        },
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
    })
}

#[cfg(test)]
mod tests;
