//! The virtual table of one class ([`ClassTab`]) and its cursor: which constraints a
//! table takes (equality on key properties), what it asks its class for, and the values
//! between the model's types and SQLite's (`docs/query.md`, "Types and units").

use std::borrow::Cow;
use std::ffi::{CStr, CString, c_int};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use purveyor_model::{
    ClassPath, ClassSchema, Identifier, Instance, InstanceKey, PropertyDef, ScalarType, Timestamp,
    Value, ValueType,
};
use rusqlite::Error as SqlError;
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::vtab::{
    Context, CreateVTab, Filters, IndexConstraintOp, IndexInfo, VTab, VTabConnection, VTabCursor,
    VTabKind, sqlite3_vtab, sqlite3_vtab_cursor,
};

use crate::{Enumerated, Env, Query, QueryError, quote};

/// A property's value for SQLite.
fn to_sql(value: &Value) -> ToSqlOutput<'_> {
    ToSqlOutput::Owned(match value {
        Value::I64(i) => SqlValue::Integer(*i),
        Value::U64(u) => match i64::try_from(*u) {
            Ok(i) => SqlValue::Integer(i),
            Err(_) => SqlValue::Real(*u as f64),
        },
        Value::F64(f) => SqlValue::Real(*f),
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::String(s) => return ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        Value::Bytes(b) => return ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        Value::Timestamp(t) => SqlValue::Integer(t.0),
        Value::Array(_) => SqlValue::Text(serde_json::to_string(value).unwrap_or_default()),
    })
}

/// A constraint's value as a key property's value; `None` when no value of the
/// property's type can equal it.
fn key_value(v: SqlValue, ty: ValueType) -> Option<Value> {
    let ValueType::Scalar(scalar) = ty else {
        return None;
    };
    // SQLite compares a numeric column with text that is a number as that number.
    let v = match v {
        SqlValue::Text(t) if scalar != ScalarType::String => {
            let t = t.trim();
            match t.parse::<i64>() {
                Ok(i) => SqlValue::Integer(i),
                Err(_) => SqlValue::Real(t.parse().ok()?),
            }
        }
        v => v,
    };
    Some(match (v, scalar) {
        (SqlValue::Integer(i), ScalarType::U64) => Value::U64(u64::try_from(i).ok()?),
        (SqlValue::Integer(i), ScalarType::I64) => Value::I64(i),
        (SqlValue::Integer(i), ScalarType::Bool) => Value::Bool(i != 0),
        (SqlValue::Integer(i), ScalarType::Timestamp) => Value::Timestamp(Timestamp(i)),
        (SqlValue::Integer(i), ScalarType::F64) => Value::F64(i as f64),
        (SqlValue::Real(f), ScalarType::F64) => Value::F64(f),
        (SqlValue::Real(f), ScalarType::U64) if f >= 0.0 && f.fract() == 0.0 => {
            Value::U64(f as u64)
        }
        (SqlValue::Text(s), ScalarType::String) => Value::String(s),
        (SqlValue::Blob(b), ScalarType::Bytes) => Value::Bytes(b),
        _ => return None,
    })
}

/// A key value as the plan shows it.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::I64(i) => i.to_string(),
        Value::U64(u) => u.to_string(),
        Value::F64(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Timestamp(t) => t.0.to_string(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// One class as a table.
#[repr(C)]
pub(crate) struct ClassTab {
    /// SQLite's part; must come first.
    base: sqlite3_vtab,
    class: ClassPath,
    schema: Arc<ClassSchema>,
    env: Arc<Env>,
}

/// After this many gets of one class in one query (a join looking it up row by row),
/// the class is enumerated once and the rest are answered from that.
const GETS_BEFORE_ENUMERATE: usize = 8;

impl ClassTab {
    /// The instances matching `key` (the whole key when `whole`): a get, or this query's
    /// one enumeration of the class, made on first need (or after
    /// [`GETS_BEFORE_ENUMERATE`] gets) and filtered here. Every provider read is a plan
    /// line and counts against the query's instance limit.
    fn read(
        &self,
        query: &Query,
        key: &InstanceKey,
        whole: bool,
    ) -> rusqlite::Result<Vec<Instance>> {
        let class = self.class.as_str().to_string();
        let (all, gets) = {
            let mut reads = query.reads.lock().unwrap_or_else(|p| p.into_inner());
            let reads = reads.entry(class.clone()).or_default();
            if whole && reads.all.is_none() {
                reads.gets += 1;
            }
            (reads.all.clone(), reads.gets)
        };
        let all = match all {
            Some(all) => all,
            None if whole && gets <= GETS_BEFORE_ENUMERATE => {
                let rows = self.fetch(query, key, true)?;
                query.note(format!(
                    "{}: get {} → {} instance{}",
                    self.class,
                    pairs(key),
                    rows.len(),
                    if rows.len() == 1 { "" } else { "s" }
                ));
                return Ok(rows);
            }
            None => {
                let instances = self.fetch(query, &InstanceKey::new(), false)?;
                let by_key = instances
                    .iter()
                    .enumerate()
                    .map(|(at, i)| (self.key_text(|name| i.get(name)), at))
                    .collect();
                let rows = Arc::new(Enumerated { instances, by_key });
                query.note(format!(
                    "{}: enumerate every instance{} → {} instance{}",
                    self.class,
                    if whole { " (instead of more gets)" } else { "" },
                    rows.instances.len(),
                    if rows.instances.len() == 1 { "" } else { "s" }
                ));
                query
                    .reads
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(class)
                    .or_default()
                    .all = Some(rows.clone());
                rows
            }
        };
        if whole {
            let at = all.by_key.get(&self.key_text(|name| key.get(name)));
            return Ok(at
                .map(|&at| all.instances[at].clone())
                .into_iter()
                .collect());
        }
        Ok(all
            .instances
            .iter()
            .filter(|i| i.matches(key))
            .cloned()
            .collect())
    }

    /// An instance's whole key as text, from its key properties' values.
    fn key_text<'v>(&self, value: impl Fn(&str) -> Option<&'v Value>) -> String {
        let parts: Vec<String> = self
            .schema
            .keys()
            .map(|k| {
                value(k.name.as_str())
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default()
            })
            .collect();
        parts.join("\u{1f}")
    }

    /// One read from the class's provider, counted against the instance limit.
    fn fetch(
        &self,
        query: &Query,
        key: &InstanceKey,
        whole: bool,
    ) -> rusqlite::Result<Vec<Instance>> {
        let rows = query
            .source
            .fetch(&self.class, key, whole)
            .map_err(|e| query.fail(QueryError::Class(e)))?;
        let read = query.read.fetch_add(rows.len(), Ordering::SeqCst) + rows.len();
        if read > query.instances {
            return Err(query.fail(QueryError::Limit(format!(
                "the query reads more than its limit of {} instances",
                query.instances
            ))));
        }
        Ok(rows)
    }

    /// The first read of this table in a query checks that the class's schema is still
    /// the one the table was made with; if not, the query is run again on a new
    /// connection ([`Engine`]).
    fn check_schema(&self, query: &Query) -> rusqlite::Result<()> {
        let first = query
            .checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.class.as_str().to_string());
        if !first {
            return Ok(());
        }
        match query.source.schema(&self.class) {
            Ok(Some(now)) if *now == *self.schema => Ok(()),
            Ok(Some(_)) => {
                query.stale.store(true, Ordering::SeqCst);
                Err(SqlError::ModuleError(format!(
                    "the schema of {} changed",
                    self.class
                )))
            }
            Ok(None) => Err(query.fail(QueryError::UnknownClass {
                class: self.class.to_string(),
                offset: None,
            })),
            Err(e) => Err(query.fail(QueryError::Class(e))),
        }
    }
}

/// What each argument of `filter` is, as `best_index` wrote it: whether it is a key's
/// value (or only checked for its type), and its column.
fn arguments(idx: Option<&str>) -> Vec<(bool, usize)> {
    idx.unwrap_or("")
        .split(',')
        .filter_map(|a| {
            let (kind, column) = a.split_at_checked(1)?;
            Some((kind == "k", column.parse().ok()?))
        })
        .collect()
}

/// The operators whose value is checked against the column's type.
fn compares(op: IndexConstraintOp) -> bool {
    use IndexConstraintOp::*;
    matches!(
        op,
        SQLITE_INDEX_CONSTRAINT_EQ
            | SQLITE_INDEX_CONSTRAINT_GT
            | SQLITE_INDEX_CONSTRAINT_LE
            | SQLITE_INDEX_CONSTRAINT_LT
            | SQLITE_INDEX_CONSTRAINT_GE
            | SQLITE_INDEX_CONSTRAINT_NE
    )
}

/// Whether comparing a column of `property`'s type with `value` is a type mismatch:
/// a number with text that is not a number or with a blob, text with a blob, a blob
/// with anything but a blob. `NULL` never is (the comparison is simply never true).
fn mismatch(property: &PropertyDef, value: &SqlValue) -> bool {
    match (declared(property), value) {
        (_, SqlValue::Null) => false,
        ("BLOB", SqlValue::Blob(_)) => false,
        ("BLOB", _) => true,
        (_, SqlValue::Blob(_)) => true,
        ("INTEGER" | "REAL", SqlValue::Text(t)) => t.trim().parse::<f64>().is_err(),
        _ => false,
    }
}

/// A compared value as SQL writes it, to find it in the statement and to show it.
fn literal(value: &SqlValue) -> String {
    match value {
        SqlValue::Text(t) => format!("'{}'", t.replace('\'', "''")),
        SqlValue::Blob(b) => format!("a blob of {} bytes", b.len()),
        SqlValue::Integer(i) => i.to_string(),
        SqlValue::Real(f) => f.to_string(),
        SqlValue::Null => "NULL".into(),
    }
}

// SAFETY: `ClassTab` is `repr(C)` with `sqlite3_vtab` first, as the trait requires.
unsafe impl<'vtab> VTab<'vtab> for ClassTab {
    type Aux = Arc<Env>;
    type Cursor = ClassCursor<'vtab>;

    fn connect(
        _db: &mut VTabConnection,
        aux: Option<&Arc<Env>>,
        _module: &[u8],
        _database: &[u8],
        _table: &[u8],
        args: &[&[u8]],
    ) -> rusqlite::Result<(Cow<'static, CStr>, ClassTab)> {
        let env = aux
            .cloned()
            .ok_or_else(|| SqlError::ModuleError("no environment".into()))?;
        let name = args
            .first()
            .map(|a| {
                String::from_utf8_lossy(a)
                    .trim_matches('"')
                    .replace("\"\"", "\"")
            })
            .ok_or_else(|| SqlError::ModuleError("no class named".into()))?;
        let schema = env
            .schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .cloned()
            .ok_or_else(|| SqlError::ModuleError(format!("no schema for {name}")))?;
        let class = ClassPath::new(&name).map_err(|e| SqlError::ModuleError(e.to_string()))?;
        let columns: Vec<String> = schema
            .properties()
            .iter()
            .map(|p| format!("{} {}", quote(p.name.as_str()), declared(p)))
            .collect();
        let sql = CString::new(format!("CREATE TABLE x({})", columns.join(", ")))
            .map_err(|e| SqlError::ModuleError(e.to_string()))?;
        Ok((
            Cow::Owned(sql),
            ClassTab {
                base: sqlite3_vtab::default(),
                class,
                schema,
                env,
            },
        ))
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<bool> {
        let properties = self.schema.properties();
        let is_key = |c: c_int| {
            usize::try_from(c)
                .ok()
                .and_then(|c| properties.get(c))
                .is_some_and(|p| p.semantic == purveyor_model::Semantic::Key)
        };
        // What each argument of `filter` is, in order: a key's value (`k`) or a value
        // passed only to check its type against its column's (`c`).
        let mut args: Vec<(char, usize)> = Vec::new();
        let mut used = 0;
        for (constraint, mut usage) in info.constraints_and_usages() {
            let Ok(column) = usize::try_from(constraint.column()) else {
                continue;
            };
            if !constraint.is_usable() || !compares(constraint.operator()) {
                continue;
            }
            let key = constraint.operator() == IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ
                && is_key(column as c_int)
                && !args.contains(&('k', column));
            used += usize::from(key);
            args.push((if key { 'k' } else { 'c' }, column));
            usage.set_argv_index(args.len() as c_int);
            // SQLite checks the rows too: a provider's selector is trusted for fewer
            // rows, not for the answer.
            usage.set_omit(false);
        }
        let keys = self.schema.keys().count();
        let (cost, rows) = if keys > 0 && used == keys {
            (1.0, 1)
        } else if used == 0 {
            (1e6, 10_000)
        } else {
            (1e3, 100)
        };
        info.set_estimated_cost(cost);
        info.set_estimated_rows(rows);
        let idx: Vec<String> = args.iter().map(|(k, c)| format!("{k}{c}")).collect();
        info.set_idx_str(&idx.join(","));
        Ok(true)
    }

    fn open(&'vtab mut self) -> rusqlite::Result<ClassCursor<'vtab>> {
        Ok(ClassCursor {
            base: sqlite3_vtab_cursor::default(),
            tab: self,
            rows: Vec::new(),
            at: 0,
        })
    }
}

impl CreateVTab<'_> for ClassTab {
    const KIND: VTabKind = VTabKind::Default;
}

/// A column's declared type: it gives the column SQLite's affinity for the property.
fn declared(p: &PropertyDef) -> &'static str {
    match p.ty {
        ValueType::Scalar(ScalarType::F64) => "REAL",
        ValueType::Scalar(ScalarType::String) | ValueType::Array(_) => "TEXT",
        ValueType::Scalar(ScalarType::Bytes) => "BLOB",
        ValueType::Scalar(_) => "INTEGER",
    }
}

#[repr(C)]
pub(crate) struct ClassCursor<'vtab> {
    /// SQLite's part; must come first.
    base: sqlite3_vtab_cursor,
    tab: &'vtab ClassTab,
    rows: Vec<Instance>,
    at: usize,
}

// SAFETY: `ClassCursor` is `repr(C)` with `sqlite3_vtab_cursor` first, as the trait
// requires.
unsafe impl VTabCursor for ClassCursor<'_> {
    fn filter(&mut self, _: c_int, idx: Option<&str>, args: &Filters<'_>) -> rusqlite::Result<()> {
        let tab = self.tab;
        let query = tab.env.query()?;
        tab.check_schema(&query)?;
        let properties = tab.schema.properties();
        let mut key = InstanceKey::new();
        let mut impossible = false;
        for (argv, (is_key, column)) in arguments(idx).into_iter().enumerate() {
            let Some(property) = properties.get(column) else {
                continue;
            };
            let value: SqlValue = args.get(argv)?;
            if mismatch(property, &value) {
                return Err(query.fail(QueryError::TypeMismatch {
                    column: format!("{}.{}", tab.class, property.name),
                    expected: property.ty.to_string(),
                    found: literal(&value),
                    offset: None,
                }));
            }
            if !is_key {
                continue;
            }
            match key_value(value, property.ty) {
                Some(v) => key.insert(property.name.clone(), v),
                None => impossible = true,
            }
        }
        let whole = tab.schema.keys().count() > 0
            && tab
                .schema
                .keys()
                .all(|k| key.get(k.name.as_str()).is_some());
        self.at = 0;
        self.rows = if impossible {
            query.note(format!(
                "{}: {} (a value no key can have: not asked) → 0 instances",
                tab.class,
                pairs(&key)
            ));
            Vec::new()
        } else {
            tab.read(&query, &key, whole)?
        };
        Ok(())
    }

    fn next(&mut self) -> rusqlite::Result<()> {
        self.at += 1;
        Ok(())
    }

    fn eof(&self) -> bool {
        self.at >= self.rows.len()
    }

    fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        let property = usize::try_from(i)
            .ok()
            .and_then(|i| self.tab.schema.properties().get(i));
        let value = property.and_then(|p| self.rows[self.at].get(p.name.as_str()));
        match value {
            Some(v) => ctx.set_result(to_sql(v)),
            None => ctx.set_result(rusqlite::types::Null),
        }
    }

    fn rowid(&self) -> rusqlite::Result<i64> {
        Ok(self.at as i64)
    }
}

pub(crate) fn pairs(key: &InstanceKey) -> String {
    key.values()
        .map(|(n, v): (&Identifier, &Value)| format!("{n}={}", shown(v)))
        .collect::<Vec<_>>()
        .join(", ")
}
