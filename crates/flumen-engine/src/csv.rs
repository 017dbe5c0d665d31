//! Reading CSV files with Spark's options: `sep`, `quote`, `escape`, `header`, `inferSchema`,
//! `nullValue`, `dateFormat`, `timestampFormat`, `mode` and `columnNameOfCorruptRecord`.
//!
//! Records are lines (Spark's default `multiLine = false`). Quoting follows RFC 4180 unless an
//! `escape` character is given: then, as Spark's reader (univocity) does, the escape character
//! protects a quote inside a quoted field, and a quote that neither closes the field nor is
//! escaped makes the field unquoted, kept verbatim up to the next separator (quotes included).
//! So `"Anna ""Annie"""` reads `Anna "Annie"` by default and `"Anna ""Annie"""` with
//! `escape = \` (Spark's default).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::util::display::FormatOptions;

use crate::error::{FlumenError, Result};
use crate::options::Options;

/// What to do with a record that does not fit the schema (Spark's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseMode {
    /// Keep it: fields that do not fit are null, and the whole line goes to the corrupt-record
    /// column when the schema has one.
    Permissive,
    /// Leave it out.
    DropMalformed,
    /// Fail, naming the file, the line and the cause.
    FailFast,
}

/// How quotes inside a quoted field are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// RFC 4180: a quote is doubled.
    Doubled,
    /// Spark: a quote (or the escape character itself) follows this character.
    Char(char),
}

/// The CSV options of one read, validated.
#[derive(Debug, Clone)]
pub(crate) struct CsvOptions {
    sep: char,
    quote: Option<char>,
    escape: Escape,
    pub header: bool,
    pub infer_schema: bool,
    null_value: String,
    date_format: Option<String>,
    timestamp_format: Option<String>,
    pub mode: ParseMode,
    pub corrupt_column: String,
}

/// One option's single character (`\t` and `\u0009` spelt out are accepted).
fn single_char(options: &Options, key: &str, default: char) -> Result<Option<char>> {
    let Some(text) = options.get(key) else {
        return Ok(Some(default));
    };
    let text = match text {
        "\\t" => "\t",
        "\\u0000" | "" => return Ok(None),
        other => other,
    };
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Ok(Some(c)),
        _ => Err(FlumenError::invalid_option(
            key,
            format!("'{text}' is not a single character; give one character such as ',' or '\\t'"),
        )),
    }
}

impl CsvOptions {
    /// Reads and checks the options; `header` and `inferSchema` default to `defaults`.
    pub fn from_options(options: &Options, header: bool, infer_schema: bool) -> Result<Self> {
        let sep_key = if options.contains("delimiter") && !options.contains("sep") {
            "delimiter"
        } else {
            "sep"
        };
        let sep = single_char(options, sep_key, ',')?
            .ok_or_else(|| FlumenError::invalid_option(sep_key, "the separator cannot be empty"))?;
        let quote = single_char(options, "quote", '"')?;
        let escape = match options.get("escape") {
            None => Escape::Doubled,
            Some(_) => match single_char(options, "escape", '\\')? {
                Some(c) if Some(c) == quote => Escape::Doubled,
                Some(c) => Escape::Char(c),
                None => Escape::Doubled,
            },
        };
        let mode = match options.get("mode").map(str::to_ascii_uppercase).as_deref() {
            None | Some("PERMISSIVE") => ParseMode::Permissive,
            Some("DROPMALFORMED") => ParseMode::DropMalformed,
            Some("FAILFAST") => ParseMode::FailFast,
            Some(other) => {
                return Err(FlumenError::invalid_option(
                    "mode",
                    format!(
                        "'{other}' is not a parse mode; use PERMISSIVE, DROPMALFORMED or FAILFAST"
                    ),
                ));
            }
        };
        let date_format = options.get("dateFormat").map(str::to_string);
        let timestamp_format = options.get("timestampFormat").map(str::to_string);
        for (key, format) in [
            ("dateFormat", &date_format),
            ("timestampFormat", &timestamp_format),
        ] {
            if let Some(f) = format {
                chrono_format(f).map_err(|reason| FlumenError::invalid_option(key, reason))?;
            }
        }
        Ok(Self {
            sep,
            quote,
            escape,
            header: options.get_bool("header", header)?,
            infer_schema: options.get_bool("inferSchema", infer_schema)?,
            null_value: options.get("nullValue").unwrap_or("").to_string(),
            date_format,
            timestamp_format,
            mode,
            corrupt_column: options
                .get("columnNameOfCorruptRecord")
                .unwrap_or("_corrupt_record")
                .to_string(),
        })
    }

    /// The fields of one line (without its line terminator).
    pub fn split_line(&self, line: &str) -> Vec<String> {
        let chars: Vec<char> = line.chars().collect();
        let mut fields = Vec::new();
        let mut i = 0;
        loop {
            let mut field = String::new();
            if self.quote.is_some() && chars.get(i).copied() == self.quote {
                i = self.quoted_field(&chars, i + 1, &mut field);
            }
            while i < chars.len() && chars[i] != self.sep {
                field.push(chars[i]);
                i += 1;
            }
            fields.push(field);
            if i >= chars.len() {
                return fields;
            }
            i += 1; // the separator
        }
    }

    /// Reads a quoted field's content from `i` (after the opening quote) into `field`; returns
    /// where the unquoted rest of the field (normally just the separator) starts.
    fn quoted_field(&self, chars: &[char], mut i: usize, field: &mut String) -> usize {
        let quote = self.quote.unwrap_or('"');
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            match self.escape {
                Escape::Doubled if c == quote => {
                    if next == Some(quote) {
                        field.push(quote);
                        i += 2;
                        continue;
                    }
                    return i + 1;
                }
                Escape::Char(e) if c == e && (next == Some(quote) || next == Some(e)) => {
                    field.extend(next);
                    i += 2;
                    continue;
                }
                Escape::Char(_) if c == quote => {
                    if next.is_none() || next == Some(self.sep) {
                        return i + 1;
                    }
                    // An unescaped quote inside: the field is taken as unquoted, verbatim
                    // (univocity's STOP_AT_DELIMITER, Spark's default).
                    field.insert(0, quote);
                    field.push(quote);
                    return i + 1;
                }
                _ => {
                    field.push(c);
                    i += 1;
                }
            }
        }
        // An unterminated quote: the rest of the line.
        i
    }

    /// Whether a field's text stands for null.
    pub fn is_null(&self, text: &str) -> bool {
        text == self.null_value
    }
}

/// A Spark datetime pattern (`yyyy-MM-dd HH:mm:ss.SSS`, `dd/MM/yyyy`, `'T'` literals) as a
/// chrono format; fails naming a letter it does not support.
fn chrono_format(pattern: &str) -> std::result::Result<String, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let end = chars[i + 1..]
                .iter()
                .position(|&x| x == '\'')
                .ok_or_else(|| format!("'{pattern}' has an unclosed quote"))?;
            for &l in &chars[i + 1..i + 1 + end] {
                out.push_str(if l == '%' { "%%" } else { "" });
                if l != '%' {
                    out.push(l);
                }
            }
            i += end + 2;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            if c == '%' {
                out.push_str("%%");
            } else {
                out.push(c);
            }
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&x| x == c).count();
        let spec = match (c, run) {
            ('y', 4) | ('u', 4) => "%Y",
            ('y', 2) | ('u', 2) => "%y",
            ('M', 1 | 2) => "%m",
            ('M', 3) => "%b",
            ('M', 4) => "%B",
            ('d', 1 | 2) => "%d",
            ('H', 1 | 2) => "%H",
            ('h', 1 | 2) => "%I",
            ('a', 1) => "%p",
            ('m', 1 | 2) => "%M",
            ('s', 1 | 2) => "%S",
            ('S', 1..=9) => "%.f",
            ('X', 1..=3) | ('x', 1..=3) => "%:z",
            ('Z', 1..=3) => "%z",
            ('E', 3) => "%a",
            _ => {
                return Err(format!(
                    "the pattern letter '{}' ({run} times) in '{pattern}' is not supported; use letters among y M d H h a m s S X Z E",
                    c
                ));
            }
        };
        // `.SSS` in Spark is a dot then the fraction; chrono's `%.f` includes the dot.
        if spec == "%.f" && out.ends_with('.') {
            out.pop();
        }
        out.push_str(spec);
        i += run;
    }
    Ok(out)
}

/// The type a column's texts suggest (Spark's `inferSchema`): integers, then doubles, then
/// booleans, then dates and timestamps, else strings.
fn infer_type(options: &CsvOptions, texts: &StringArray) -> DataType {
    let candidates = [
        DataType::Int64,
        DataType::Float64,
        DataType::Boolean,
        DataType::Date32,
        DataType::Timestamp(TimeUnit::Microsecond, None),
    ];
    if texts.null_count() == texts.len() {
        return DataType::Utf8;
    }
    for candidate in candidates {
        if matches!(candidate, DataType::Boolean)
            && texts
                .iter()
                .flatten()
                .any(|t| !t.eq_ignore_ascii_case("true") && !t.eq_ignore_ascii_case("false"))
        {
            continue;
        }
        if let Ok((_, failed)) = convert(options, texts, &candidate)
            && failed.iter().all(|f| !f)
        {
            return candidate;
        }
    }
    DataType::Utf8
}

/// The texts as `target`: the array, and for each row whether a non-null text failed to convert.
fn convert(
    options: &CsvOptions,
    texts: &StringArray,
    target: &DataType,
) -> Result<(ArrayRef, Vec<bool>)> {
    let converted: ArrayRef = match (target, &options.date_format, &options.timestamp_format) {
        (DataType::Utf8, _, _) => Arc::new(texts.clone()),
        (DataType::Date32, Some(format), _) => {
            let format =
                chrono_format(format).map_err(|r| FlumenError::invalid_option("dateFormat", r))?;
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
            Arc::new(datafusion::arrow::array::Date32Array::from_iter(
                texts.iter().map(|t| {
                    t.and_then(|t| chrono::NaiveDate::parse_from_str(t, &format).ok())
                        .map(|d| (d - epoch).num_days() as i32)
                }),
            ))
        }
        (DataType::Timestamp(TimeUnit::Microsecond, tz), _, Some(format)) => {
            let format = chrono_format(format)
                .map_err(|r| FlumenError::invalid_option("timestampFormat", r))?;
            let values = texts.iter().map(|t| {
                t.and_then(|t| {
                    chrono::DateTime::parse_from_str(t, &format)
                        .map(|d| d.timestamp_micros())
                        .or_else(|_| {
                            chrono::NaiveDateTime::parse_from_str(t, &format)
                                .map(|d| d.and_utc().timestamp_micros())
                        })
                        .ok()
                })
            });
            Arc::new(
                datafusion::arrow::array::TimestampMicrosecondArray::from_iter(values)
                    .with_timezone_opt(tz.clone()),
            )
        }
        (DataType::Boolean, _, _) => Arc::new(datafusion::arrow::array::BooleanArray::from_iter(
            texts.iter().map(|t| {
                t.and_then(|t| {
                    if t.eq_ignore_ascii_case("true") {
                        Some(true)
                    } else if t.eq_ignore_ascii_case("false") {
                        Some(false)
                    } else {
                        None
                    }
                })
            }),
        )),
        (target, _, _) => {
            let trimmed: StringArray = texts.iter().map(|t| t.map(str::trim)).collect();
            cast_with_options(
                &trimmed,
                target,
                &CastOptions {
                    safe: true,
                    format_options: FormatOptions::default(),
                },
            )?
        }
    };
    let failed = (0..texts.len())
        .map(|i| texts.is_valid(i) && converted.is_null(i))
        .collect();
    Ok((converted, failed))
}

/// The rows of one CSV text as a batch of `schema` (or of the header's or `_cN` columns, typed
/// by inference or as strings, when `schema` is `None`). `source` names the file in errors.
pub(crate) fn read(
    text: &str,
    options: &CsvOptions,
    schema: Option<SchemaRef>,
    source: &str,
) -> Result<RecordBatch> {
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .filter(|(_, l)| !l.is_empty());
    let header = if options.header {
        lines.next().map(|(_, l)| options.split_line(l))
    } else {
        None
    };
    let records: Vec<(usize, &str, Vec<String>)> = lines
        .map(|(n, line)| (n + 1, line, options.split_line(line)))
        .collect();
    let width = schema.as_ref().map_or_else(
        || {
            header
                .as_ref()
                .map_or_else(|| records.first().map_or(0, |(_, _, f)| f.len()), Vec::len)
        },
        |s| {
            s.fields()
                .iter()
                .filter(|f| f.name() != &options.corrupt_column)
                .count()
        },
    );
    // Column texts, and which records have the wrong number of fields.
    let mut columns: Vec<Vec<Option<&str>>> = vec![Vec::with_capacity(records.len()); width];
    let mut wrong_width = Vec::with_capacity(records.len());
    for (_, _, fields) in &records {
        wrong_width.push(fields.len() != width);
        for (c, column) in columns.iter_mut().enumerate() {
            column.push(
                fields
                    .get(c)
                    .map(String::as_str)
                    .filter(|t| !options.is_null(t)),
            );
        }
    }
    let texts: Vec<StringArray> = columns.into_iter().map(StringArray::from).collect();

    let schema = match schema {
        Some(schema) => schema,
        None => {
            let names: Vec<String> = (0..width)
                .map(|i| match header.as_ref().and_then(|h| h.get(i)) {
                    Some(name) if !name.is_empty() => name.clone(),
                    _ => format!("_c{i}"),
                })
                .collect();
            let fields: Vec<Field> = names
                .iter()
                .zip(&texts)
                .map(|(name, t)| {
                    let data_type = if options.infer_schema {
                        infer_type(options, t)
                    } else {
                        DataType::Utf8
                    };
                    Field::new(name, data_type, true)
                })
                .collect();
            Arc::new(Schema::new(fields))
        }
    };

    let mut malformed = wrong_width.clone();
    let mut data_columns = Vec::with_capacity(width);
    let mut data_fields = schema
        .fields()
        .iter()
        .filter(|f| f.name() != &options.corrupt_column);
    for texts in &texts {
        let field = data_fields.next().ok_or_else(|| {
            FlumenError::IllegalState("CSV schema narrower than its columns".into())
        })?;
        let (array, failed) = convert(options, texts, field.data_type())?;
        for (row, bad) in failed.into_iter().enumerate() {
            malformed[row] |= bad;
        }
        data_columns.push(array);
    }
    if options.mode == ParseMode::FailFast
        && let Some(row) = malformed.iter().position(|&m| m)
    {
        let (line_number, line, fields) = &records[row];
        let reason = if wrong_width[row] {
            format!("{} fields where the schema has {width}", fields.len())
        } else {
            "a value does not fit its column's type".to_string()
        };
        return Err(FlumenError::MalformedRecord {
            source_name: format!("{source}:{line_number}"),
            record: line.to_string(),
            reason: format!(
                "{reason} (Parse Mode: FAILFAST); set the option mode to PERMISSIVE to read such records as nulls, or DROPMALFORMED to skip them"
            ),
        });
    }

    let rows = records.len();
    let mut columns = Vec::with_capacity(schema.fields().len());
    let mut data = data_columns.into_iter();
    for field in schema.fields() {
        if field.name() == &options.corrupt_column {
            let corrupt: StringArray = records
                .iter()
                .zip(&malformed)
                .map(|((_, line, _), &bad)| bad.then_some(*line))
                .collect();
            columns.push(Arc::new(corrupt) as ArrayRef);
        } else {
            columns.push(
                data.next()
                    .unwrap_or_else(|| new_null_array(field.data_type(), rows)),
            );
        }
    }
    let batch = RecordBatch::try_new_with_options(
        Arc::clone(&schema),
        columns,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )?;
    if options.mode == ParseMode::DropMalformed && malformed.iter().any(|&m| m) {
        let keep: datafusion::arrow::array::BooleanArray =
            malformed.iter().map(|&m| Some(!m)).collect();
        return Ok(datafusion::arrow::compute::filter_record_batch(
            &batch, &keep,
        )?);
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::util::pretty::pretty_format_batches;

    fn options(pairs: &[(&str, &str)]) -> CsvOptions {
        let options: Options = pairs.iter().copied().collect();
        CsvOptions::from_options(&options, true, true).unwrap()
    }

    #[test]
    fn doubled_quotes_by_default_and_sparks_reading_with_a_backslash_escape() {
        let line = r#"1,"McGowan, Miss. Anna ""Annie""",female"#;
        assert_eq!(
            options(&[]).split_line(line),
            vec!["1", r#"McGowan, Miss. Anna "Annie""#, "female"]
        );
        // The quote before `""Annie` is neither escaped nor before a separator: from there the
        // field is read verbatim, quotes included, up to the next separator.
        assert_eq!(
            options(&[("escape", "\\")]).split_line(line),
            vec!["1", r#""McGowan, Miss. Anna ""Annie""""#, "female"]
        );
        let titanic = r#"2,"Kelly, Mr. James ""Jim""",male"#;
        assert_eq!(
            options(&[("escape", "\\")]).split_line(r#"3,"O'Brien, Mr. Tim \"T\"",male"#),
            vec!["3", r#"O'Brien, Mr. Tim "T""#, "male"]
        );
        assert_eq!(
            options(&[("escape", "\\")]).split_line(titanic)[1],
            r#""Kelly, Mr. James ""Jim""""#
        );
    }

    #[test]
    fn separators_quotes_and_nulls() {
        let o = options(&[("sep", ";"), ("quote", "'"), ("nullValue", "NA")]);
        assert_eq!(o.split_line("a;'b;c';NA;"), vec!["a", "b;c", "NA", ""]);
        assert!(o.is_null("NA"));
        assert!(!o.is_null(""));
        assert_eq!(
            options(&[("sep", "\\t")]).split_line("a\tb"),
            vec!["a", "b"]
        );
        let err = CsvOptions::from_options(&[("sep", "ab")].into_iter().collect(), true, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a single character"), "{err}");
    }

    #[test]
    fn inference_modes_and_the_corrupt_record_column() {
        let text =
            "id,when,ok,name\n1,2026-01-02,true,a\n2,2026-01-03,false,b\nx,2026-01-04,true,c\n";
        let inferred = read(text, &options(&[]), None, "t.csv").unwrap();
        let types: Vec<String> = inferred
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().to_string())
            .collect();
        assert_eq!(types, vec!["Utf8", "Date32", "Boolean", "Utf8"]);

        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("when", DataType::Date32, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("_corrupt_record", DataType::Utf8, true),
        ]));
        let permissive = read(text, &options(&[]), Some(Arc::clone(&schema)), "t.csv").unwrap();
        assert_eq!(
            pretty_format_batches(&[permissive]).unwrap().to_string(),
            "+----+------------+-------+------+---------------------+\n\
             | id | when       | ok    | name | _corrupt_record     |\n\
             +----+------------+-------+------+---------------------+\n\
             | 1  | 2026-01-02 | true  | a    |                     |\n\
             | 2  | 2026-01-03 | false | b    |                     |\n\
             |    | 2026-01-04 | true  | c    | x,2026-01-04,true,c |\n\
             +----+------------+-------+------+---------------------+"
        );
        let dropped = read(
            text,
            &options(&[("mode", "DROPMALFORMED")]),
            Some(Arc::clone(&schema)),
            "t.csv",
        )
        .unwrap();
        assert_eq!(dropped.num_rows(), 2);
        let err = read(
            text,
            &options(&[("mode", "failfast")]),
            Some(schema),
            "t.csv",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("t.csv:4") && err.contains("FAILFAST"), "{err}");
    }

    #[test]
    fn spark_date_and_timestamp_patterns() {
        assert_eq!(chrono_format("yyyy-MM-dd").unwrap(), "%Y-%m-%d");
        assert_eq!(
            chrono_format("dd/MM/yyyy HH:mm:ss.SSS").unwrap(),
            "%d/%m/%Y %H:%M:%S%.f"
        );
        assert_eq!(
            chrono_format("yyyy-MM-dd'T'HH:mm").unwrap(),
            "%Y-%m-%dT%H:%M"
        );
        assert!(chrono_format("yyyy-QQ").unwrap_err().contains("'Q'"));
        let text = "d,t\n02/01/2026,02/01/2026 10:30\n";
        let batch = read(
            text,
            &options(&[
                ("dateFormat", "dd/MM/yyyy"),
                ("timestampFormat", "dd/MM/yyyy HH:mm"),
            ]),
            Some(Arc::new(Schema::new(vec![
                Field::new("d", DataType::Date32, true),
                Field::new("t", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            ]))),
            "t.csv",
        )
        .unwrap();
        assert_eq!(
            pretty_format_batches(&[batch]).unwrap().to_string(),
            "+------------+---------------------+\n\
             | d          | t                   |\n\
             +------------+---------------------+\n\
             | 2026-01-02 | 2026-01-02T10:30:00 |\n\
             +------------+---------------------+"
        );
    }
}
