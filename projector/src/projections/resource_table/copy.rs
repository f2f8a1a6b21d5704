//! New rows written with `COPY … from stdin` instead of the upsert, for a
//! table nothing else writes to (a rebuild's fresh table, during its load):
//! there a stream that begins in a batch has no row yet, and COPY is what
//! PostgreSQL writes rows fastest with (a quarter of the upsert's server
//! time per row, measured in BENCHMARKS.md "rebuild").
//!
//! The rows are the same folded states, serialised by the same serde derive
//! and taken column by column from the same `COLUMNS` as the upsert's
//! `jsonb_to_recordset`, each value written as that function reads it (a
//! string as its text, a number or a boolean as its JSON text, an array of
//! scalars into a `…[]` column as an array literal, anything into a `jsonb`
//! column as its JSON, `null` or a missing field as NULL), so both writers
//! produce the same rows; the tests check it table by table.

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;

/// Inserts `rows` (new: no row of theirs may exist) with one `COPY`. A row
/// already in the table fails the whole batch on the primary key, as the
/// upsert fails on a row at or past the version being written: events
/// applied twice.
pub(super) async fn insert<T: Serialize>(
    conn: &mut PgConnection,
    table: &str,
    columns: &[(&str, &str)],
    rows: &[T],
) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    // Encoded whole before the COPY starts: a row that cannot be written
    // then never leaves a COPY half sent.
    let data =
        encode(columns, rows).with_context(|| format!("failed to encode rows of {table}"))?;
    let statement = copy_sql(table, columns);
    let mut copy = conn
        .copy_in_raw(&statement)
        .await
        .with_context(|| format!("failed to start `{statement}`"))?;
    copy.send(data)
        .await
        .with_context(|| format!("failed to send rows of {table}"))?;
    let written = copy
        .finish()
        .await
        .with_context(|| format!("failed to copy {} new rows into {table}", rows.len()))?;
    anyhow::ensure!(
        written == rows.len() as u64,
        "COPY wrote {written} of {} rows into {table}",
        rows.len()
    );
    Ok(())
}

/// `copy <table> (<every column>) from stdin`: text format, the default.
fn copy_sql(table: &str, columns: &[(&str, &str)]) -> String {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    format!("copy {table} ({}) from stdin", names.join(", "))
}

/// `rows` in COPY's text format: one line per row, its fields in `columns`
/// order, separated by tabs.
fn encode<T: Serialize>(columns: &[(&str, &str)], rows: &[T]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(rows.len() * 64 * columns.len());
    for row in rows {
        let Value::Object(fields) =
            serde_json::to_value(row).context("failed to serialise a row")?
        else {
            anyhow::bail!("a row does not serialise to a JSON object");
        };
        for (i, &(name, ty)) in columns.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            let value = fields.get(name).unwrap_or(&Value::Null);
            field(&mut out, value, ty).with_context(|| format!("column {name} ({ty})"))?;
        }
        out.push(b'\n');
    }
    Ok(out)
}

/// One value of a column of SQL type `ty`, as `jsonb_to_recordset` reads it.
fn field(out: &mut Vec<u8>, value: &Value, ty: &str) -> anyhow::Result<()> {
    let json = ty == "jsonb" || ty == "json";
    match value {
        Value::Null => out.extend_from_slice(b"\\N"),
        _ if json => escape(out, &value.to_string()),
        Value::String(text) => escape(out, text),
        Value::Number(n) => escape(out, &n.to_string()),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Array(items) if ty.ends_with("[]") => escape(out, &array_literal(items)?),
        // jsonb_to_recordset would write PostgreSQL's own JSON text here,
        // spaced unlike serde_json's: no column of ours takes one.
        Value::Array(_) | Value::Object(_) => {
            anyhow::bail!("a JSON {value} cannot be written to a column of type {ty}")
        }
    }
    Ok(())
}

/// A one-dimensional array of scalars as PostgreSQL's array literal:
/// `{"a","b\"c",NULL}`.
fn array_literal(items: &[Value]) -> anyhow::Result<String> {
    let mut literal = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            literal.push(',');
        }
        let text = match item {
            Value::Null => {
                literal.push_str("NULL");
                continue;
            }
            Value::String(text) => text.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Array(_) | Value::Object(_) => {
                anyhow::bail!("an array holding {item} is not an array of scalars")
            }
        };
        literal.push('"');
        for c in text.chars() {
            if c == '"' || c == '\\' {
                literal.push('\\');
            }
            literal.push(c);
        }
        literal.push('"');
    }
    literal.push('}');
    Ok(literal)
}

/// COPY's text-format escapes: backslash, and the tab, newline and carriage
/// return that would otherwise end the field or the row.
fn escape(out: &mut Vec<u8>, text: &str) {
    for &byte in text.as_bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(byte),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn line(columns: &[(&str, &str)], row: Value) -> String {
        String::from_utf8(encode(columns, &[row]).expect("encodes")).expect("UTF-8")
    }

    #[test]
    fn fields_are_escaped_and_nulls_and_missing_fields_are_null() {
        let columns = [
            ("id", "uuid"),
            ("name", "text"),
            ("notes", "text"),
            ("missing", "text"),
            ("n", "bigint"),
            ("on", "boolean"),
        ];
        let row = json!({"id": "0193", "name": "a\tb\nc\rd\\e \\N é", "notes": null, "n": -7, "on": false});
        assert_eq!(
            line(&columns, row),
            "0193\ta\\tb\\nc\\rd\\\\e \\\\N é\t\\N\t\\N\t-7\tfalse\n"
        );
    }

    #[test]
    fn arrays_become_array_literals_and_json_stays_json() {
        let columns = [
            ("events", "text[]"),
            ("secrets", "jsonb"),
            ("word", "jsonb"),
        ];
        let row = json!({"events": ["lead.created", "a\"b\\c", null], "secrets": [{"k": "x\ty"}], "word": "w"});
        assert_eq!(
            line(&columns, row),
            "{\"lead.created\",\"a\\\\\"b\\\\\\\\c\",NULL}\t[{\"k\":\"x\\\\ty\"}]\t\"w\"\n"
        );
    }

    #[test]
    fn a_nested_value_in_a_scalar_column_is_refused() {
        assert!(encode(&[("name", "text")], &[json!({"name": {"a": 1}})]).is_err());
        assert!(encode(&[("tags", "text[]")], &[json!({"tags": [["a"]]})]).is_err());
        assert!(encode(&[("name", "text")], &[json!("not an object")]).is_err());
    }

    #[test]
    fn the_copy_names_every_column() {
        assert_eq!(
            copy_sql("t_rebuild", &[("id", "uuid"), ("name", "text")]),
            "copy t_rebuild (id, name) from stdin"
        );
    }
}
