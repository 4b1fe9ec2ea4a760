//! Reading columns that may hold a value of the wrong type. SQLite lets any column hold any
//! type; a row edited by hand, by another tool or by a bit flip must fail alone, named, rather
//! than fail every read and every claim that meets it.

use rusqlite::Row;
use rusqlite::types::{FromSql, ValueRef};

/// Column `index` of `row`, or, when it holds a value that is not `T`, `T`'s default with the
/// problem described in `problems`. `expected` says what belongs there ("an integer").
pub(super) fn lenient<T: FromSql + Default>(
    row: &Row<'_>,
    index: usize,
    expected: &str,
    problems: &mut Vec<String>,
) -> T {
    match row.get::<_, T>(index) {
        Ok(value) => value,
        Err(e) => {
            let name = row.as_ref().column_name(index).unwrap_or("?");
            let found = match row.get_ref(index) {
                Ok(ValueRef::Null) => "NULL".to_string(),
                Ok(ValueRef::Integer(i)) => format!("the integer {i}"),
                Ok(ValueRef::Real(r)) => format!("the number {r}"),
                Ok(ValueRef::Text(t)) => format!("the text {:?}", String::from_utf8_lossy(t)),
                Ok(ValueRef::Blob(b)) => format!("a blob of {} bytes", b.len()),
                Err(_) => e.to_string(),
            };
            problems.push(format!(
                "column `{name}` holds {found} where {expected} belongs"
            ));
            T::default()
        }
    }
}
