//! Spark DDL schema strings (`"PassengerId INT, Name STRING, tags ARRAY<STRING>"`) as Arrow
//! schemas, so `from_json` accepts the same schema text as PySpark.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};

use crate::error::{FlumenError, Result};

/// Parses a Spark DDL schema string into an Arrow [`Schema`]; every field is nullable, as in
/// Spark's `from_json`.
///
/// Types: `STRING`/`VARCHAR`/`TEXT`, `BOOLEAN`, `TINYINT`/`BYTE`, `SMALLINT`/`SHORT`,
/// `INT`/`INTEGER`, `BIGINT`/`LONG`, `FLOAT`/`REAL`, `DOUBLE`, `DECIMAL(p,s)`, `DATE`,
/// `TIMESTAMP` (microseconds, UTC), `BINARY`, `ARRAY<T>`, `MAP<K,V>`, `STRUCT<name: T, ...>`.
/// Names may be quoted with backticks.
///
/// ```
/// use flumen_engine::functions::parse_ddl_schema;
/// let schema = parse_ddl_schema("PassengerId INT, Name STRING, Age DOUBLE").unwrap();
/// assert_eq!(schema.fields().len(), 3);
/// assert_eq!(schema.field(0).name(), "PassengerId");
/// ```
pub fn parse_ddl_schema(ddl: &str) -> Result<Schema> {
    let mut parser = Parser { text: ddl, pos: 0 };
    let fields = parser.fields(None)?;
    parser.skip_ws();
    if parser.pos != ddl.len() {
        return Err(parser.error("unexpected text after the last field"));
    }
    if fields.is_empty() {
        return Err(parser.error("no fields"));
    }
    Ok(Schema::new(fields))
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, why: &str) -> FlumenError {
        FlumenError::invalid_option(
            "schema",
            format!(
                "cannot parse DDL schema '{}' at position {}: {why}; write e.g. 'id INT, name STRING'",
                self.text, self.pos
            ),
        )
    }

    fn skip_ws(&mut self) {
        while self.rest().starts_with(char::is_whitespace) {
            self.pos += self.rest().chars().next().map_or(1, char::len_utf8);
        }
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.rest().starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<()> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(&format!("expected '{c}'")))
        }
    }

    fn ident(&mut self) -> Result<String> {
        self.skip_ws();
        if let Some(rest) = self.rest().strip_prefix('`') {
            let end = rest
                .find('`')
                .ok_or_else(|| self.error("unterminated `quoted` name"))?;
            let name = rest[..end].to_string();
            self.pos += end + 2;
            return Ok(name);
        }
        let len = self
            .rest()
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.error("expected a name"));
        }
        let name = self.rest()[..len].to_string();
        self.pos += len;
        Ok(name)
    }

    /// Fields until the end of input or the closing `>` of a struct (`nested` is Some).
    fn fields(&mut self, nested: Option<char>) -> Result<Vec<Field>> {
        let mut fields = Vec::new();
        loop {
            self.skip_ws();
            if self.rest().is_empty() || nested.is_some_and(|c| self.rest().starts_with(c)) {
                break;
            }
            let name = self.ident()?;
            // Spark accepts both `name TYPE` and `name: TYPE`.
            self.eat(':');
            let data_type = self.data_type()?;
            fields.push(Field::new(name, data_type, true));
            if !self.eat(',') {
                break;
            }
        }
        Ok(fields)
    }

    fn number(&mut self) -> Result<u32> {
        self.skip_ws();
        let len = self
            .rest()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(self.rest().len());
        let n = self.rest()[..len]
            .parse()
            .map_err(|_| self.error("expected a number"))?;
        self.pos += len;
        Ok(n)
    }

    fn data_type(&mut self) -> Result<DataType> {
        let name = self.ident()?.to_ascii_uppercase();
        Ok(match name.as_str() {
            "STRING" | "VARCHAR" | "TEXT" | "CHAR" => {
                if self.eat('(') {
                    self.number()?;
                    self.expect(')')?;
                }
                DataType::Utf8
            }
            "BOOLEAN" | "BOOL" => DataType::Boolean,
            "TINYINT" | "BYTE" => DataType::Int8,
            "SMALLINT" | "SHORT" => DataType::Int16,
            "INT" | "INTEGER" => DataType::Int32,
            "BIGINT" | "LONG" => DataType::Int64,
            "FLOAT" | "REAL" => DataType::Float32,
            "DOUBLE" => DataType::Float64,
            "DATE" => DataType::Date32,
            "TIMESTAMP" | "TIMESTAMP_LTZ" => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")))
            }
            "TIMESTAMP_NTZ" => DataType::Timestamp(TimeUnit::Microsecond, None),
            "BINARY" => DataType::Binary,
            "DECIMAL" | "DEC" | "NUMERIC" => {
                let (p, s) = if self.eat('(') {
                    let p = self.number()?;
                    let s = if self.eat(',') { self.number()? } else { 0 };
                    self.expect(')')?;
                    (p, s)
                } else {
                    (10, 0)
                };
                let precision = u8::try_from(p).map_err(|_| self.error("precision too large"))?;
                let scale = i8::try_from(s).map_err(|_| self.error("scale too large"))?;
                DataType::Decimal128(precision, scale)
            }
            "ARRAY" => {
                self.expect('<')?;
                let item = self.data_type()?;
                self.expect('>')?;
                DataType::List(Arc::new(Field::new_list_field(item, true)))
            }
            "MAP" => {
                self.expect('<')?;
                let key = self.data_type()?;
                self.expect(',')?;
                let value = self.data_type()?;
                self.expect('>')?;
                let entries = Field::new(
                    "entries",
                    DataType::Struct(Fields::from(vec![
                        Field::new("keys", key, false),
                        Field::new("values", value, true),
                    ])),
                    false,
                );
                DataType::Map(Arc::new(entries), false)
            }
            "STRUCT" => {
                self.expect('<')?;
                let fields = self.fields(Some('>'))?;
                self.expect('>')?;
                DataType::Struct(Fields::from(fields))
            }
            other => return Err(self.error(&format!("unknown type {other}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_types() {
        let s = parse_ddl_schema(
            "a INT, `b c` STRING, d ARRAY<BIGINT>, e STRUCT<x: DOUBLE, y: MAP<STRING, INT>>, f DECIMAL(10, 2)",
        )
        .unwrap();
        assert_eq!(s.field(1).name(), "b c");
        assert!(matches!(s.field(3).data_type(), DataType::Struct(f) if f.len() == 2));
        assert_eq!(s.field(4).data_type(), &DataType::Decimal128(10, 2));
    }

    #[test]
    fn rejects_unknown_types_with_position() {
        let err = parse_ddl_schema("a INT, b WIDGET").unwrap_err().to_string();
        assert!(err.contains("unknown type WIDGET"), "{err}");
    }
}
