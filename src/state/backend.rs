//! The one seam between the store's transitions and its two databases.
//!
//! Every transition in [`super::Store`] is written once, against [`Tx`]:
//! `execute`, `query_row`, `query_opt` and `query_all` take SQL with `?N`
//! placeholders and owned [`Value`] parameters (built with [`p!`]) and
//! return owned [`Row`]s with typed getters. SQLite runs that SQL as it is;
//! PostgreSQL gets `?N` rewritten to `$N` ([`to_dollar`]). The few places
//! where the dialects differ are the fields of [`Dialect`], never an
//! `if postgres` in a transition.
//!
//! Portable types: timestamps are TEXT (RFC 3339, milliseconds, `Z`) in
//! both; integers are INTEGER (SQLite) / BIGINT (PostgreSQL); the sealed
//! secret is BLOB / BYTEA; booleans are 0/1 integers in columns (a boolean
//! *expression* such as `EXISTS (…)` comes back as a PostgreSQL `bool`, and
//! [`Row::get`] reads either as `bool`).

use rusqlite::types::{ToSqlOutput, ValueRef};

use super::StoreError;

/// One SQL parameter or result cell, owned (it crosses to the PostgreSQL
/// store thread and back).
#[derive(Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Bool(bool),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl std::fmt::Debug for Value {
    // A cell may be the sealed secret (ciphertext) or anything else a
    // transition binds: never print contents, only the kind.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Value::Null => "Null",
            Value::Int(_) => "Int(…)",
            Value::Bool(_) => "Bool(…)",
            Value::Real(_) => "Real(…)",
            Value::Text(_) => "Text(…)",
            Value::Blob(_) => "Blob(…)",
        })
    }
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Bool(_) => "a boolean",
            Value::Real(_) => "a real",
            Value::Text(_) => "text",
            Value::Blob(_) => "a blob",
        }
    }
}

/// Conversion of a Rust value into a [`Value`] parameter (used by [`p!`]).
pub(crate) trait ToValue {
    fn to_value(&self) -> Value;
}

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for i64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}
impl ToValue for u32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
/// Stored as 0/1 (what rusqlite binds for a `bool`).
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

/// Parameters for [`Tx`] methods: `p![a, b]` is `&[Value]` of `a`, `b`
/// (each taken by reference).
macro_rules! p {
    () => { &[] as &[$crate::state::backend::Value] };
    ($($x:expr),+ $(,)?) => {
        &[$($crate::state::backend::ToValue::to_value(&$x)),+] as &[$crate::state::backend::Value]
    };
}
pub(crate) use p;

/// One result row, owned.
#[derive(Debug, Clone)]
pub(crate) struct Row(pub(crate) Vec<Value>);

impl Row {
    /// Column `i` as `T`. A cell of the wrong kind is
    /// [`StoreError::Value`] (a row some other program wrote).
    pub(crate) fn get<T: FromValue>(&self, i: usize) -> Result<T, StoreError> {
        let v = self.0.get(i).unwrap_or(&Value::Null);
        T::from_value(v).ok_or_else(|| StoreError::Value {
            column: i,
            want: T::WANT,
            found: v.kind(),
        })
    }
}

/// Reading a [`Value`] cell as a Rust type.
pub(crate) trait FromValue: Sized {
    const WANT: &'static str;
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    const WANT: &'static str = "an integer";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }
}
impl FromValue for u32 {
    const WANT: &'static str = "a non-negative 32-bit integer";
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u32::try_from(i).ok())
    }
}
impl FromValue for bool {
    const WANT: &'static str = "a boolean";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i != 0),
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
}
impl FromValue for String {
    const WANT: &'static str = "text";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl FromValue for Vec<u8> {
    const WANT: &'static str = "a blob";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    const WANT: &'static str = T::WANT;
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// What differs between the two SQL dialects, as data.
#[derive(Debug)]
pub(crate) struct Dialect {
    /// The two-argument "larger of" function (`MAX(a, b)` / `GREATEST(a, b)`).
    pub greatest: &'static str,
    /// Whether a query may pin its index (`INDEXED BY name`, SQLite only;
    /// PostgreSQL's planner has no such hint and needs none here).
    pub index_hints: bool,
}

impl Dialect {
    /// `INDEXED BY index` where the dialect takes index hints, else empty.
    pub(crate) fn indexed_by(&self, index: &str) -> String {
        if self.index_hints {
            format!("INDEXED BY {index}")
        } else {
            String::new()
        }
    }
}

pub(crate) const SQLITE: Dialect = Dialect {
    greatest: "MAX",
    index_hints: true,
};

pub(crate) const POSTGRES: Dialect = Dialect {
    greatest: "GREATEST",
    index_hints: false,
};

/// One transaction (or, for reads, one connection) of either backend.
pub(crate) trait Tx {
    /// Run a statement; the number of rows it changed.
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize, StoreError>;
    /// Every row of a query.
    fn query_all(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// The first row of a query, if any.
    fn query_opt(&self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError>;
    /// The first row of a query; none is an error (SQLite:
    /// `QueryReturnedNoRows`, as before the PostgreSQL backend).
    fn query_row(&self, sql: &str, params: &[Value]) -> Result<Row, StoreError>;
    fn dialect(&self) -> &'static Dialect;
}

// ------------------------------------------------------------------ SQLite

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
            Value::Real(r) => ToSqlOutput::Borrowed(ValueRef::Real(*r)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn sqlite_row(r: &rusqlite::Row) -> rusqlite::Result<Row> {
    let n = r.as_ref().column_count();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(match r.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            ValueRef::Real(v) => Value::Real(v),
            ValueRef::Text(t) => Value::Text(
                std::str::from_utf8(t)
                    .map_err(|e| rusqlite::Error::Utf8Error(i, e))?
                    .to_string(),
            ),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        });
    }
    Ok(Row(out))
}

/// SQLite: a `Connection` (a `Transaction` derefs to one). Statements go
/// through the connection's prepared-statement cache.
impl Tx for rusqlite::Connection {
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize, StoreError> {
        let mut st = self.prepare_cached(sql)?;
        Ok(st.execute(rusqlite::params_from_iter(params.iter()))?)
    }

    fn query_all(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut st = self.prepare_cached(sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(params.iter()), sqlite_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn query_opt(&self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        let mut st = self.prepare_cached(sql)?;
        let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
        Ok(match rows.next()? {
            Some(r) => Some(sqlite_row(r)?),
            None => None,
        })
    }

    fn query_row(&self, sql: &str, params: &[Value]) -> Result<Row, StoreError> {
        self.query_opt(sql, params)?
            .ok_or(StoreError::Sql(rusqlite::Error::QueryReturnedNoRows))
    }

    fn dialect(&self) -> &'static Dialect {
        &SQLITE
    }
}

// -------------------------------------------------------------- PostgreSQL

/// Rewrite `?N` placeholders as `$N` (outside quoted strings and
/// identifiers), for PostgreSQL.
pub(crate) fn to_dollar(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '?' && chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                out.push('$');
            }
            None => out.push(c),
        }
    }
    out
}

/// Binding a [`Value`] to whatever type PostgreSQL inferred for the
/// parameter: integers to any integer, float or boolean column, text to
/// text-like columns (and, parsed, to `timestamptz`). Text holding U+0000,
/// which PostgreSQL text cannot store, is stored with each NUL as `\u{0}`.
impl tokio_postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::{IsNull, Type};
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                _ => i.to_string().to_sql(ty, out),
            },
            Value::Bool(b) => match *ty {
                Type::BOOL => b.to_sql(ty, out),
                Type::INT8 => i64::from(*b).to_sql(ty, out),
                Type::INT4 => i32::from(*b).to_sql(ty, out),
                _ => b.to_string().to_sql(ty, out),
            },
            Value::Real(r) => match *ty {
                Type::FLOAT4 => (*r as f32).to_sql(ty, out),
                Type::FLOAT8 => r.to_sql(ty, out),
                _ => r.to_string().to_sql(ty, out),
            },
            Value::Text(s) => match *ty {
                Type::TIMESTAMPTZ => {
                    let t = chrono::DateTime::parse_from_rfc3339(s)?.with_timezone(&chrono::Utc);
                    t.to_sql(ty, out)
                }
                Type::INT8 => s.parse::<i64>()?.to_sql(ty, out),
                // PostgreSQL text cannot hold U+0000 (a provider's error
                // body or key name may): stored as `\u{0}`, the notation
                // of `logging::escape`, instead of failing the write.
                _ if s.contains('\0') => s.replace('\0', "\\u{0}").to_sql(ty, out),
                _ => s.as_str().to_sql(ty, out),
            },
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A PostgreSQL row as [`Value`]s (timestamps become the store's RFC 3339
/// text; `json`/`numeric` and other types are read as their text).
pub(crate) fn pg_row(r: &tokio_postgres::Row) -> Result<Row, tokio_postgres::Error> {
    use tokio_postgres::types::Type;
    let mut out = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let v = match *col.type_() {
            Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Value::Int),
            Type::INT4 => r
                .try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::INT2 => r
                .try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::BOOL => r.try_get::<_, Option<bool>>(i)?.map(Value::Bool),
            Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?.map(Value::Real),
            Type::FLOAT4 => r
                .try_get::<_, Option<f32>>(i)?
                .map(|v| Value::Real(v.into())),
            Type::BYTEA => r.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob),
            Type::TIMESTAMPTZ => r
                .try_get::<_, Option<chrono::DateTime<chrono::Utc>>>(i)?
                .map(|t| Value::Text(super::ts(t))),
            _ => r.try_get::<_, Option<String>>(i)?.map(Value::Text),
        };
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollar_numbers_outside_quotes_only() {
        assert_eq!(
            to_dollar("SELECT '?1', \"a?2\" FROM t WHERE a = ?1 AND b = ?12"),
            "SELECT '?1', \"a?2\" FROM t WHERE a = $1 AND b = $12"
        );
        assert_eq!(to_dollar("SELECT ? FROM t"), "SELECT ? FROM t");
    }

    #[test]
    fn a_value_never_prints_its_contents() {
        let v = Value::Text("sk-live-SECRET".into());
        assert!(!format!("{v:?}").contains("SECRET"));
        let b = Value::Blob(b"sk-live-SECRET".to_vec());
        assert!(!format!("{b:?}").contains("SECRET"));
    }

    #[test]
    fn a_boolean_expression_reads_as_bool_from_either_backend() {
        let r = Row(vec![Value::Int(1), Value::Bool(false), Value::Null]);
        assert!(r.get::<bool>(0).unwrap());
        assert!(!r.get::<bool>(1).unwrap());
        assert_eq!(r.get::<Option<bool>>(2).unwrap(), None);
        assert!(matches!(
            r.get::<String>(0),
            Err(StoreError::Value { column: 0, .. })
        ));
    }
}
