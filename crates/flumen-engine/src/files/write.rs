//! Encoding rows as one data file: JSON Lines, CSV or Parquet, readable back by
//! [`read`](super::read) and by Spark.
//!
//! - **JSON Lines**: one object per row, null fields left out (Spark's `ignoreNullFields`), the
//!   encoding `to_json` uses.
//! - **CSV**: options `sep` (`,`), `quote` (`"`), `escape` (none: a quote inside a quoted field
//!   is doubled, as Flumen's reader expects by default), `header` (false) and `nullValue`
//!   (empty). A field is quoted when it holds the separator, the quote, a line break, or is
//!   an empty string (so it differs from a null).
//! - **Parquet**: Snappy-compressed, as Spark writes it.

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;

use super::FileFormat;
use crate::error::{FlumenError, Result};
use crate::options::Options;

/// How the sink encodes files, with its options validated once.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    format: FileFormat,
    csv: CsvWriteOptions,
}

#[derive(Debug, Clone)]
struct CsvWriteOptions {
    sep: char,
    quote: char,
    escape: Option<char>,
    header: bool,
    null_value: String,
}

fn one_char(options: &Options, key: &str, default: char) -> Result<char> {
    let Some(text) = options.get(key) else {
        return Ok(default);
    };
    let text = if text == "\\t" { "\t" } else { text };
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(FlumenError::invalid_option(
            key,
            format!("'{text}' is not a single character; give one character such as ',' or '\\t'"),
        )),
    }
}

impl WriteOptions {
    /// Validates the options of `format` (the CSV ones are read for CSV only).
    pub fn from_options(format: FileFormat, options: &Options) -> Result<Self> {
        let sep_key = if options.contains("delimiter") && !options.contains("sep") {
            "delimiter"
        } else {
            "sep"
        };
        let quote = one_char(options, "quote", '"')?;
        let escape = match options.get("escape") {
            None => None,
            Some(_) => Some(one_char(options, "escape", '\\')?).filter(|e| *e != quote),
        };
        Ok(Self {
            format,
            csv: CsvWriteOptions {
                sep: one_char(options, sep_key, ',')?,
                quote,
                escape,
                header: options.get_bool("header", false)?,
                null_value: options.get("nullValue").unwrap_or("").to_string(),
            },
        })
    }

    /// The format.
    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// The bytes of one file holding `batches` (all of one schema, at least one batch).
    pub fn encode(&self, batches: &[RecordBatch]) -> Result<Vec<u8>> {
        match self.format {
            FileFormat::Json => encode_json(batches),
            FileFormat::Csv => self.encode_csv(batches),
            FileFormat::Parquet => encode_parquet(batches),
        }
    }

    fn encode_csv(&self, batches: &[RecordBatch]) -> Result<Vec<u8>> {
        let o = &self.csv;
        let mut out = String::new();
        let quote_field = |text: &str, out: &mut String| {
            let needs = text.is_empty()
                || text.contains(o.sep)
                || text.contains(o.quote)
                || text.contains('\n')
                || text.contains('\r');
            if !needs {
                out.push_str(text);
                return;
            }
            out.push(o.quote);
            for c in text.chars() {
                if c == o.quote || Some(c) == o.escape {
                    out.push(o.escape.unwrap_or(o.quote));
                }
                out.push(c);
            }
            out.push(o.quote);
        };
        if o.header
            && let Some(first) = batches.first()
        {
            for (i, field) in first.schema().fields().iter().enumerate() {
                if i > 0 {
                    out.push(o.sep);
                }
                quote_field(field.name(), &mut out);
            }
            out.push('\n');
        }
        let format = FormatOptions::default();
        for batch in batches {
            let formatters = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &format))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            for row in 0..batch.num_rows() {
                for (i, (column, formatter)) in batch.columns().iter().zip(&formatters).enumerate()
                {
                    if i > 0 {
                        out.push(o.sep);
                    }
                    if column.is_null(row) {
                        out.push_str(&o.null_value);
                    } else {
                        quote_field(&formatter.value(row).to_string(), &mut out);
                    }
                }
                out.push('\n');
            }
        }
        Ok(out.into_bytes())
    }
}

fn encode_json(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut buffer = Vec::new();
    {
        let mut writer = arrow_json::writer::WriterBuilder::new()
            .with_explicit_nulls(false)
            .build::<_, arrow_json::writer::LineDelimited>(&mut buffer);
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    Ok(buffer)
}

fn encode_parquet(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let Some(first) = batches.first() else {
        return Err(FlumenError::IllegalState(
            "a Parquet file needs at least one batch".into(),
        ));
    };
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let failed = |e: datafusion::parquet::errors::ParquetError| {
        FlumenError::IllegalState(format!("cannot encode rows as Parquet: {e}"))
    };
    let mut writer =
        ArrowWriter::try_new(Vec::new(), first.schema(), Some(properties)).map_err(failed)?;
    for batch in batches {
        writer.write(batch).map_err(failed)?;
    }
    writer.into_inner().map_err(failed)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};

    use super::*;

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "name",
                Arc::new(StringArray::from(vec![
                    Some("Kelly, \"Jim\""),
                    Some(""),
                    None,
                ])) as ArrayRef,
            ),
            (
                "age",
                Arc::new(Int64Array::from(vec![Some(34), None, Some(2)])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    #[test]
    fn csv_quotes_what_needs_quoting_and_writes_nulls_empty() {
        let options: Options = [("header", "true")].into_iter().collect();
        let csv = WriteOptions::from_options(FileFormat::Csv, &options).unwrap();
        let text = String::from_utf8(csv.encode(&[batch()]).unwrap()).unwrap();
        assert_eq!(text, "name,age\n\"Kelly, \"\"Jim\"\"\",34\n\"\",\n,2\n");
        let options: Options = [("escape", "\\"), ("sep", ";")].into_iter().collect();
        let csv = WriteOptions::from_options(FileFormat::Csv, &options).unwrap();
        let text = String::from_utf8(csv.encode(&[batch()]).unwrap()).unwrap();
        assert_eq!(text, "\"Kelly, \\\"Jim\\\"\";34\n\"\";\n;2\n");
    }

    #[test]
    fn json_leaves_nulls_out() {
        let json = WriteOptions::from_options(FileFormat::Json, &Options::new()).unwrap();
        let text = String::from_utf8(json.encode(&[batch()]).unwrap()).unwrap();
        assert_eq!(
            text,
            "{\"name\":\"Kelly, \\\"Jim\\\"\",\"age\":34}\n{\"name\":\"\"}\n{\"age\":2}\n"
        );
    }
}
