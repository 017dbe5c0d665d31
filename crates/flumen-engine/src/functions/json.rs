//! `from_json` and `to_json`: JSON text ⇄ Arrow structs, with Spark's PERMISSIVE semantics.
//!
//! `from_json` decodes a whole column at once with arrow-json's `Decoder` (no per-record
//! `serde_json::Value`). Each record is fed separately and the decoder's row count is checked
//! after every record, so a record that is not exactly one JSON value can never shift rows.
//! If anything in the batch is malformed, the batch falls back to decoding record by record:
//! good records keep their values, a malformed one becomes a struct whose fields are all null
//! (Spark 3's behaviour) and, when the schema has a corrupt-record column, its raw text is kept
//! there. A null or blank input gives a null struct.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_json::ReaderBuilder;
use arrow_json::writer::{LineDelimited, WriterBuilder};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, StringArray, StringBuilder,
    StructArray, UInt32Array, new_null_array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use super::ddl::parse_ddl_schema;

/// The column name Spark uses for the raw text of malformed records.
pub const DEFAULT_CORRUPT_RECORD_COLUMN: &str = "_corrupt_record";

/// How `from_json` treats malformed records (Spark's `mode` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ParseMode {
    /// A malformed record becomes a struct of nulls (and its text goes to the corrupt-record
    /// column when the schema has one). The default.
    #[default]
    Permissive,
    /// A malformed record fails the query, naming the record.
    FailFast,
}

impl ParseMode {
    /// Parses Spark's mode names (case-insensitive).
    pub fn parse(text: &str) -> crate::Result<Self> {
        match text.to_ascii_uppercase().as_str() {
            "PERMISSIVE" => Ok(Self::Permissive),
            "FAILFAST" => Ok(Self::FailFast),
            "DROPMALFORMED" => Err(crate::FlumenError::invalid_option(
                "mode",
                "from_json() doesn't support the DROPMALFORMED mode. Acceptable modes are PERMISSIVE and FAILFAST.",
            )),
            other => Err(crate::FlumenError::invalid_option(
                "mode",
                format!("unknown parse mode {other}; use PERMISSIVE or FAILFAST"),
            )),
        }
    }
}

/// Options of `from_json` (Spark's JSON options that apply to a single column).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonOptions {
    /// What to do with malformed records.
    pub mode: ParseMode,
    /// The string field of the schema that receives a malformed record's raw text
    /// (default `_corrupt_record`); ignored when the schema has no such field.
    pub corrupt_record_column: String,
}

impl Default for JsonOptions {
    fn default() -> Self {
        Self {
            mode: ParseMode::Permissive,
            corrupt_record_column: DEFAULT_CORRUPT_RECORD_COLUMN.to_string(),
        }
    }
}

/// The `from_json(text, schema)` scalar function.
///
/// Built with a fixed schema from the Rust API ([`crate::functions::from_json`]), or registered
/// under the name `from_json` for SQL, where the schema is the second argument as a DDL string
/// literal: `from_json(json, 'a INT, b STRING')`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FromJson {
    signature: Signature,
    schema: Option<SchemaRef>,
    options: JsonOptions,
    /// Told how many malformed records each call met (set for queries with a dead-letter
    /// output; see `crate::dead_letters`).
    malformed: Option<MalformedSignal>,
}

/// A counter of malformed records shared by a query's `from_json` calls and its micro-batch
/// loop: it tells the loop that a batch has records for the dead-letter output, so batches
/// without any pay nothing more. It takes no part in equality or hashing (it does not change
/// what the function computes).
#[derive(Debug, Clone, Default)]
pub(crate) struct MalformedSignal(Arc<AtomicU64>);

impl MalformedSignal {
    fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The count since the last call, reset to zero.
    pub(crate) fn take(&self) -> u64 {
        self.0.swap(0, Ordering::Relaxed)
    }
}

impl PartialEq for MalformedSignal {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for MalformedSignal {}

impl std::hash::Hash for MalformedSignal {
    fn hash<H: std::hash::Hasher>(&self, _state: &mut H) {}
}

impl FromJson {
    /// A `from_json` bound to `schema`, taking one argument (the JSON text).
    pub fn with_schema(schema: SchemaRef, options: JsonOptions) -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
            schema: Some(schema),
            options,
            malformed: None,
        }
    }

    /// The SQL form: `from_json(text, 'ddl schema')`.
    pub fn sql() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
            schema: None,
            options: JsonOptions::default(),
            malformed: None,
        }
    }

    /// The same function, counting the malformed records it meets in `signal`.
    pub(crate) fn reporting_to(&self, signal: &MalformedSignal) -> Self {
        Self {
            signature: self.signature.clone(),
            schema: self.schema.clone(),
            options: self.options.clone(),
            malformed: Some(signal.clone()),
        }
    }

    /// Its options.
    pub(crate) fn options(&self) -> &JsonOptions {
        &self.options
    }

    fn schema_from_args(&self, scalar: Option<&ScalarValue>) -> DFResult<SchemaRef> {
        if let Some(schema) = &self.schema {
            return Ok(Arc::clone(schema));
        }
        match scalar {
            Some(ScalarValue::Utf8(Some(ddl)))
            | Some(ScalarValue::LargeUtf8(Some(ddl)))
            | Some(ScalarValue::Utf8View(Some(ddl))) => parse_ddl_schema(ddl)
                .map(Arc::new)
                .map_err(|e| DataFusionError::Plan(e.to_string())),
            _ => plan_err!(
                "from_json needs its schema as a string literal, e.g. from_json(json, 'a INT, b STRING')"
            ),
        }
    }
}

impl ScalarUDFImpl for FromJson {
    fn name(&self) -> &str {
        "from_json"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        // return_field_from_args is used instead; this is only reached with a fixed schema.
        match &self.schema {
            Some(schema) => Ok(DataType::Struct(schema.fields().clone())),
            None => plan_err!("from_json's return type depends on its schema argument"),
        }
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DFResult<FieldRef> {
        let schema = self.schema_from_args(args.scalar_arguments.get(1).copied().flatten())?;
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::Struct(nullable_fields(schema.fields())),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let DataType::Struct(fields) = args.return_field.data_type().clone() else {
            return exec_err!("from_json: return type is not a struct");
        };
        let rows = args.number_rows;
        let input = args
            .args
            .first()
            .ok_or_else(|| DataFusionError::Execution("from_json needs an argument".into()))?
            .to_array(rows)?;
        let (result, malformed) = decode_counting_malformed(&input, &fields, &self.options)?;
        if let Some(signal) = &self.malformed {
            signal.add(malformed as u64);
        }
        Ok(ColumnarValue::Array(Arc::new(result)))
    }
}

fn nullable_fields(fields: &Fields) -> Fields {
    fields
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect()
}

/// Text of each row of a string column, whatever its string encoding; `None` for nulls.
fn string_values(array: &ArrayRef) -> DFResult<Vec<Option<&str>>> {
    Ok(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().collect(),
        DataType::Utf8View => array.as_string_view().iter().collect(),
        DataType::Null => vec![None; array.len()],
        other => {
            return exec_err!(
                "from_json expects a string column, got {other}; cast binary with CAST(value AS STRING)"
            );
        }
    })
}

/// Decodes a column of JSON texts into a struct column with `fields` (see the module docs).
pub fn decode_json_column(
    input: &ArrayRef,
    fields: &Fields,
    options: &JsonOptions,
) -> DFResult<StructArray> {
    Ok(decode_counting_malformed(input, fields, options)?.0)
}

/// The position of the corrupt-record field in `fields`, if it has one, and the schema of the
/// other fields (what the JSON text is decoded into).
fn split_corrupt_record_field(
    fields: &Fields,
    options: &JsonOptions,
) -> (Option<usize>, SchemaRef) {
    let corrupt_index = fields.iter().position(|f| {
        f.name() == &options.corrupt_record_column && f.data_type() == &DataType::Utf8
    });
    let decode_fields: Fields = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != corrupt_index)
        .map(|(_, f)| Arc::clone(f))
        .collect();
    (corrupt_index, Arc::new(Schema::new(decode_fields)))
}

/// A null or blank text is absent (a null struct), never malformed.
fn present(text: &Option<&str>) -> bool {
    text.is_some_and(|s| !s.trim().is_empty())
}

/// [`decode_json_column`], also returning how many records were malformed.
fn decode_counting_malformed(
    input: &ArrayRef,
    fields: &Fields,
    options: &JsonOptions,
) -> DFResult<(StructArray, usize)> {
    let texts = string_values(input)?;
    let (corrupt_index, decode_schema) = split_corrupt_record_field(fields, options);
    let guarded = guard_decimal_exponents(&texts, &decode_schema);
    let decode_texts = guarded.as_deref().unwrap_or(&texts);
    let decoded = match decode_all_at_once(decode_texts, &decode_schema, present)? {
        Some(batch) => Decoded {
            batch,
            row_of_input: texts
                .iter()
                .scan(0u32, |next, t| {
                    Some(present(t).then(|| {
                        *next += 1;
                        *next - 1
                    }))
                })
                .collect(),
            malformed: vec![false; texts.len()],
        },
        None => decode_skipping_malformed(decode_texts, &decode_schema, present)?,
    };

    if options.mode == ParseMode::FailFast
        && let Some(i) = decoded.malformed.iter().position(|m| *m)
    {
        return exec_err!(
            "Malformed records are detected in record parsing. Parse Mode: FAILFAST. Record: {}",
            texts[i].unwrap_or_default()
        );
    }
    let malformed = decoded.malformed.iter().filter(|m| **m).count();
    Ok((
        assemble(&texts, decoded, fields, corrupt_index, present)?,
        malformed,
    ))
}

/// The records of `input` that `from_json` with `fields` and `options` finds malformed: each
/// row's index and why it could not be decoded (the decoder's own message). Null and blank
/// texts are not malformed.
pub(crate) fn malformed_records(
    input: &ArrayRef,
    fields: &Fields,
    options: &JsonOptions,
) -> DFResult<Vec<(usize, String)>> {
    let texts = string_values(input)?;
    let (_, decode_schema) = split_corrupt_record_field(fields, options);
    if let Some(guarded) = guard_decimal_exponents(&texts, &decode_schema) {
        let mut found = malformed_in(&guarded, &decode_schema)?;
        for (i, reason) in found.iter_mut() {
            if guarded[*i] == Some(EXPONENT_GUARD) {
                *reason = EXPONENT_REASON.to_string();
            }
        }
        return Ok(found);
    }
    malformed_in(&texts, &decode_schema)
}

/// [`malformed_records`] of `texts` decoded into `decode_schema`.
fn malformed_in(
    texts: &[Option<&str>],
    decode_schema: &SchemaRef,
) -> DFResult<Vec<(usize, String)>> {
    // Found in bulk, as the query found them; only the bad records are decoded alone, to say why.
    let records: Vec<usize> = (0..texts.len()).filter(|i| present(&texts[*i])).collect();
    let (mut runs, mut bad) = (Vec::new(), Vec::new());
    decode_runs(texts, &records, decode_schema, &mut runs, &mut bad)?;
    bad.sort_unstable();
    Ok(bad
        .into_iter()
        .map(|i| {
            let reason = match decode_one(texts[i].unwrap_or_default(), decode_schema) {
                Err(reason) => reason,
                Ok(_) => "the record cannot be decoded with the records around it".to_string(),
            };
            (i, reason)
        })
        .collect())
}

/// What a record whose decimal exponent arrow cannot parse is decoded as: a syntax error, so
/// it is malformed (the corrupt-record column still gets the original text).
const EXPONENT_GUARD: &str = "{";

/// Why such a record is malformed.
const EXPONENT_REASON: &str =
    "a number has an exponent of five or more digits, beyond what a decimal field can hold";

/// `texts` with every record that gives a decimal field a number in e-notation with an
/// exponent of five or more digits replaced by [`EXPONENT_GUARD`] (`None` when nothing was
/// replaced). Arrow's decimal parser keeps the exponent in an `i16` that such an exponent
/// overflows (a panic in a debug build, a wrong value in a release build), so those records
/// never reach it. A decimal field is recognised by its name, at any depth.
fn guard_decimal_exponents<'a>(
    texts: &[Option<&'a str>],
    schema: &SchemaRef,
) -> Option<Vec<Option<&'a str>>> {
    let mut names = Vec::new();
    for field in schema.fields() {
        decimal_names(field, &mut names);
    }
    if names.is_empty() {
        return None;
    }
    let mut guarded: Option<Vec<Option<&'a str>>> = None;
    for (i, text) in texts.iter().enumerate() {
        if text.is_some_and(|t| has_long_decimal_exponent(t, &names)) {
            guarded.get_or_insert_with(|| texts.to_vec())[i] = Some(EXPONENT_GUARD);
        }
    }
    guarded
}

/// The names of the decimal fields in `field` (itself, or nested in it).
fn decimal_names<'f>(field: &'f Field, names: &mut Vec<&'f str>) {
    match field.data_type() {
        DataType::Decimal32(_, _)
        | DataType::Decimal64(_, _)
        | DataType::Decimal128(_, _)
        | DataType::Decimal256(_, _) => names.push(field.name()),
        DataType::Struct(fields) => fields.iter().for_each(|f| decimal_names(f, names)),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            if matches!(
                f.data_type(),
                DataType::Decimal32(_, _)
                    | DataType::Decimal64(_, _)
                    | DataType::Decimal128(_, _)
                    | DataType::Decimal256(_, _)
            ) {
                names.push(field.name());
            }
            decimal_names(f, names)
        }
        DataType::Map(f, _) => decimal_names(f, names),
        _ => {}
    }
}

/// Whether `text` gives a key named in `names` a value (a number, or a string's contents,
/// also inside an array) that reads as a mantissa (`[+-]?[0-9.]*`), `e`/`E`, an optional
/// sign and five or more digits.
fn has_long_decimal_exponent(text: &str, names: &[&str]) -> bool {
    let bytes = text.as_bytes();
    // Cheap first: no `e` followed (after an optional sign) by five digits, nothing to check.
    let any = bytes.iter().enumerate().any(|(i, b)| {
        matches!(b, b'e' | b'E') && {
            let rest = &bytes[i + 1..];
            let rest = rest
                .strip_prefix(b"+")
                .or_else(|| rest.strip_prefix(b"-"))
                .unwrap_or(rest);
            rest.len() >= 5 && rest[..5].iter().all(u8::is_ascii_digit)
        }
    });
    if !any {
        return false;
    }
    let is_delimiter = |b: u8| {
        matches!(b, b'"' | b',' | b':' | b'[' | b']' | b'{' | b'}') || b.is_ascii_whitespace()
    };
    let mut key: &[u8] = b"";
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'"' {
            // A string: a key when a colon follows, a value otherwise.
            let start = i + 1;
            let mut end = start;
            while end < bytes.len() && bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            let token = &bytes[start..end.min(bytes.len())];
            let mut next = end + 1;
            while next < bytes.len() && bytes[next].is_ascii_whitespace() {
                next += 1;
            }
            if bytes.get(next) == Some(&b':') {
                key = token;
            } else if names.iter().any(|n| n.as_bytes() == key) && token_has_long_exponent(token) {
                return true;
            }
            i = end + 1;
        } else if is_delimiter(bytes[i]) {
            i += 1;
        } else {
            let start = i;
            while i < bytes.len() && !is_delimiter(bytes[i]) {
                i += 1;
            }
            if names.iter().any(|n| n.as_bytes() == key)
                && token_has_long_exponent(&bytes[start..i])
            {
                return true;
            }
        }
    }
    false
}

/// See [`has_long_decimal_exponent`]: one value.
fn token_has_long_exponent(token: &[u8]) -> bool {
    let token = token
        .strip_prefix(b"+")
        .or_else(|| token.strip_prefix(b"-"))
        .unwrap_or(token);
    let mantissa = token
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .count();
    let Some(rest) = token[mantissa..]
        .strip_prefix(b"e")
        .or_else(|| token[mantissa..].strip_prefix(b"E"))
    else {
        return false;
    };
    let rest = rest
        .strip_prefix(b"+")
        .or_else(|| rest.strip_prefix(b"-"))
        .unwrap_or(rest);
    rest.iter().take_while(|b| b.is_ascii_digit()).count() >= 5
}

/// Decodes one record alone: its row, or why it is malformed.
fn decode_one(text: &str, schema: &SchemaRef) -> Result<RecordBatch, String> {
    let mut decoder = ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(1)
        .build_decoder()
        .map_err(decoder_message)?;
    feed_one(&mut decoder, text.as_bytes(), 0)?;
    match decoder.flush() {
        Ok(Some(batch)) if batch.num_rows() == 1 => Ok(batch),
        Ok(_) => Err("the record holds no JSON object".to_string()),
        Err(e) => Err(decoder_message(e)),
    }
}

/// The JSON decoder's message, without arrow's "Json error: " prefix.
fn decoder_message(e: datafusion::arrow::error::ArrowError) -> String {
    match e {
        datafusion::arrow::error::ArrowError::JsonError(message) => message,
        other => other.to_string(),
    }
}

struct Decoded {
    /// Decoded rows; when any record was malformed its last row is an all-null row.
    batch: RecordBatch,
    /// For each input row, the decoded row it maps to; `None` for null/blank inputs.
    row_of_input: Vec<Option<u32>>,
    /// Whether each input row was malformed.
    malformed: Vec<bool>,
}

/// The fast path: every present record through one decoder. `None` when any record is not
/// exactly one well-formed JSON object of the schema's types.
fn decode_all_at_once(
    texts: &[Option<&str>],
    schema: &SchemaRef,
    present: impl Fn(&Option<&str>) -> bool,
) -> DFResult<Option<RecordBatch>> {
    let mut decoder = ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(texts.len().max(1))
        .build_decoder()?;
    let mut expected = 0usize;
    for text in texts.iter().filter(|t| present(t)) {
        let Some(text) = text else { continue };
        if feed_one(&mut decoder, text.as_bytes(), expected).is_err() {
            return Ok(None);
        }
        expected += 1;
    }
    match decoder.flush() {
        Ok(Some(batch)) if batch.num_rows() == expected => Ok(Some(batch)),
        Ok(None) if expected == 0 => Ok(Some(RecordBatch::new_empty(Arc::clone(schema)))),
        _ => Ok(None),
    }
}

/// Feeds one record; `Ok` when the decoder then holds exactly `before + 1` complete rows,
/// otherwise why not.
fn feed_one(
    decoder: &mut arrow_json::reader::Decoder,
    bytes: &[u8],
    before: usize,
) -> Result<(), String> {
    match decoder.decode(bytes) {
        Ok(n) if n == bytes.len() => {}
        Ok(n) => {
            return Err(format!(
                "the record is not one JSON value: text follows it at byte {n}"
            ));
        }
        Err(e) => return Err(decoder_message(e)),
    }
    // A bare number at the end of a record is only complete once a delimiter follows.
    if decoder.has_partial_record() {
        if let Err(e) = decoder.decode(b"\n") {
            return Err(decoder_message(e));
        }
        if decoder.has_partial_record() {
            return Err("the record ends inside a JSON value".to_string());
        }
    }
    match decoder.len() {
        n if n == before + 1 => Ok(()),
        n if n == before => Err("the record holds no JSON object".to_string()),
        n => Err(format!(
            "the record holds {} JSON values, not one",
            n - before
        )),
    }
}

/// The path for a batch with malformed records: runs of good records still go through one
/// decoder each, and a bad record affects no other. A syntax error ends a run at its record
/// (the records before it are decoded again, without it); a value of the wrong type only shows
/// when the run is flushed, and then the run is split in halves until the bad records stand
/// alone. So a batch with a few bad records costs about two bulk decodes, not one decoder per
/// record.
fn decode_skipping_malformed(
    texts: &[Option<&str>],
    schema: &SchemaRef,
    present: impl Fn(&Option<&str>) -> bool,
) -> DFResult<Decoded> {
    let records: Vec<usize> = (0..texts.len()).filter(|i| present(&texts[*i])).collect();
    let mut runs = Vec::new();
    let mut bad = Vec::new();
    decode_runs(texts, &records, schema, &mut runs, &mut bad)?;
    let mut row_of_input = vec![None; texts.len()];
    let mut pieces = Vec::with_capacity(runs.len() + 1);
    let mut next = 0u32;
    for (rows, batch) in runs {
        for i in rows {
            row_of_input[i] = Some(next);
            next += 1;
        }
        pieces.push(batch);
    }
    // One all-null row at the end stands for every malformed record.
    let mut malformed = vec![false; texts.len()];
    for i in bad {
        malformed[i] = true;
        row_of_input[i] = Some(next);
    }
    let null_columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| new_null_array(f.data_type(), 1))
        .collect();
    // With a row count: a schema of only the corrupt-record field decodes into no columns.
    pieces.push(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        null_columns,
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )?);
    let batch = concat_batches(schema, &pieces)?;
    Ok(Decoded {
        batch,
        row_of_input,
        malformed,
    })
}

/// Decodes the records `run` (indices into `texts`, in order) into `runs` (the rows of each
/// decoded run and its batch, in order) and `bad` (the malformed records).
fn decode_runs(
    texts: &[Option<&str>],
    run: &[usize],
    schema: &SchemaRef,
    runs: &mut Vec<(Vec<usize>, RecordBatch)>,
    bad: &mut Vec<usize>,
) -> DFResult<()> {
    let text = |i: usize| texts[i].unwrap_or_default().as_bytes();
    let mut start = 0;
    while start < run.len() {
        let rest = &run[start..];
        let mut decoder = ReaderBuilder::new(Arc::clone(schema))
            .with_batch_size(rest.len())
            .build_decoder()?;
        let failed = rest
            .iter()
            .enumerate()
            .position(|(k, i)| feed_one(&mut decoder, text(*i), k).is_err());
        let good = &rest[..failed.unwrap_or(rest.len())];
        if !good.is_empty() {
            // After a syntax error the decoder holds part of the bad record: decode the good
            // ones again, alone.
            let flushed = match failed {
                None => decoder.flush(),
                Some(_) => (|| {
                    let mut again = ReaderBuilder::new(Arc::clone(schema))
                        .with_batch_size(good.len())
                        .build_decoder()?;
                    for i in good {
                        again.decode(text(*i))?;
                        if again.has_partial_record() {
                            again.decode(b"\n")?;
                        }
                    }
                    again.flush()
                })(),
            };
            match flushed {
                Ok(Some(batch)) if batch.num_rows() == good.len() => {
                    runs.push((good.to_vec(), batch))
                }
                _ if good.len() == 1 => bad.push(good[0]),
                _ => {
                    let (first, second) = good.split_at(good.len() / 2);
                    decode_runs(texts, first, schema, runs, bad)?;
                    decode_runs(texts, second, schema, runs, bad)?;
                }
            }
        }
        match failed {
            Some(k) => {
                bad.push(rest[k]);
                start += k + 1;
            }
            None => break,
        }
    }
    Ok(())
}

fn assemble(
    texts: &[Option<&str>],
    decoded: Decoded,
    fields: &Fields,
    corrupt_index: Option<usize>,
    present: impl Fn(&Option<&str>) -> bool,
) -> DFResult<StructArray> {
    let rows = texts.len();
    let identity = decoded.batch.num_rows() == rows
        && decoded
            .row_of_input
            .iter()
            .enumerate()
            .all(|(i, r)| *r == Some(i as u32));
    let mut columns: Vec<ArrayRef> = if identity {
        decoded.batch.columns().to_vec()
    } else {
        let indices: UInt32Array = decoded.row_of_input.iter().copied().collect();
        decoded
            .batch
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &indices, None))
            .collect::<Result<_, _>>()?
    };
    if let Some(at) = corrupt_index {
        let corrupt: StringArray = texts
            .iter()
            .zip(&decoded.malformed)
            .map(|(t, bad)| if *bad { *t } else { None })
            .collect();
        columns.insert(at, Arc::new(corrupt));
    }
    let validity: NullBuffer = texts.iter().map(&present).collect::<Vec<bool>>().into();
    let nulls = (validity.null_count() > 0).then_some(validity);
    let fields = nullable_fields(fields);
    Ok(StructArray::try_new(fields, columns, nulls)?)
}

/// The `to_json(struct)` scalar function: one JSON object per row, null fields omitted
/// (Spark's `ignoreNullFields=true`), a null struct gives null.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ToJson {
    signature: Signature,
}

impl Default for ToJson {
    fn default() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for ToJson {
    fn name(&self) -> &str {
        "to_json"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DFResult<DataType> {
        match arg_types.first() {
            Some(DataType::Struct(_)) => Ok(DataType::Utf8),
            other => plan_err!(
                "to_json expects a struct, got {other:?}; wrap columns with struct(...) or struct(*)"
            ),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let rows = args.number_rows;
        let input = args
            .args
            .first()
            .ok_or_else(|| DataFusionError::Execution("to_json needs an argument".into()))?
            .to_array(rows)?;
        Ok(ColumnarValue::Array(Arc::new(encode_json_column(
            input.as_struct(),
        )?)))
    }
}

/// Encodes each row of a struct column as one compact JSON object, omitting null fields.
pub fn encode_json_column(input: &StructArray) -> DFResult<StringArray> {
    // The struct's own nulls are handled below; the batch only carries its fields.
    let schema = Arc::new(Schema::new(input.fields().clone()));
    let batch = RecordBatch::try_new(schema, input.columns().to_vec())?;
    let mut buffer = Vec::with_capacity(input.len() * 64);
    {
        let mut writer = WriterBuilder::new()
            .with_explicit_nulls(false)
            .build::<_, LineDelimited>(&mut buffer);
        writer.write(&batch)?;
        writer.finish()?;
    }
    let text = std::str::from_utf8(&buffer)
        .map_err(|e| DataFusionError::Execution(format!("to_json produced invalid UTF-8: {e}")))?;
    let mut out = StringBuilder::with_capacity(input.len(), buffer.len());
    let mut lines = text.split_terminator('\n');
    for row in 0..input.len() {
        let line = lines.next().unwrap_or("{}");
        if input.is_null(row) {
            out.append_null();
        } else {
            out.append_value(line);
        }
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array};

    fn schema() -> Fields {
        Fields::from(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("age", DataType::Float64, true),
            Field::new(DEFAULT_CORRUPT_RECORD_COLUMN, DataType::Utf8, true),
        ])
    }

    fn decode(rows: Vec<Option<&str>>) -> StructArray {
        let input: ArrayRef = Arc::new(StringArray::from(rows));
        decode_json_column(&input, &schema(), &JsonOptions::default()).unwrap()
    }

    #[test]
    fn well_formed_rows_decode_in_one_pass() {
        let out = decode(vec![Some(r#"{"id":1,"age":22.0}"#), Some(r#"{"id":2}"#)]);
        let ids = out.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.values(), &[1, 2]);
        let ages = out
            .column(1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(ages.value(0), 22.0);
        assert!(ages.is_null(1));
        assert_eq!(out.column(2).null_count(), 2);
    }

    #[test]
    fn malformed_rows_become_null_structs_with_corrupt_text() {
        let out = decode(vec![
            Some(r#"{"id":1}"#),
            Some(r#"{"id" 2}"#),
            None,
            Some(r#"{"id":3}{"id":4}"#),
            Some("5"),
            Some(r#"{"id":"x"}"#),
            Some(r#"{"id":6}"#),
        ]);
        assert_eq!(out.len(), 7);
        let ids = out.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let corrupt = out.column(2).as_string::<i32>();
        assert_eq!(ids.value(0), 1);
        assert_eq!(ids.value(6), 6);
        for bad in [1, 3, 4, 5] {
            assert!(
                out.is_valid(bad),
                "row {bad} is an all-null struct, not null"
            );
            assert!(ids.is_null(bad));
            assert!(corrupt.is_valid(bad));
        }
        assert_eq!(corrupt.value(1), r#"{"id" 2}"#);
        assert!(out.is_null(2));
        assert!(corrupt.is_null(0) && corrupt.is_null(6));
    }

    /// Property: whatever mix of good, malformed, null and blank records a batch holds, each row
    /// decodes exactly as it would alone (checked against serde_json as the oracle).
    #[test]
    fn a_schema_of_only_the_corrupt_record_field_keeps_malformed_text() {
        // Found by the from_json fuzz target (fuzz/regressions/from_json).
        let fields = Fields::from(vec![Field::new(
            DEFAULT_CORRUPT_RECORD_COLUMN,
            DataType::Utf8,
            true,
        )]);
        let input: ArrayRef = Arc::new(StringArray::from(vec![
            Some(r#"{"id":1}"#),
            Some(r#"{"id":1,"attrs":"#),
            None,
        ]));
        let out = decode_json_column(&input, &fields, &JsonOptions::default()).unwrap();
        assert_eq!(out.len(), 3);
        let corrupt = out.column(0).as_string::<i32>();
        assert!(out.is_valid(0) && corrupt.is_null(0));
        assert_eq!(corrupt.value(1), r#"{"id":1,"attrs":"#);
        assert!(out.is_null(2));
        let bad = malformed_records(&input, &fields, &JsonOptions::default()).unwrap();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, 1);
    }

    #[test]
    fn every_row_decodes_as_it_would_alone() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..300 {
            let rows: Vec<Option<String>> = (0..rng.random_range(0..40))
                .map(|i| match rng.random_range(0..9) {
                    0 => None,
                    1 => Some("  ".to_string()),
                    2 => Some(format!("{{\"id\":{i}")),
                    3 => Some(format!("{{\"id\":{i}}} {{\"id\":1}}")),
                    4 => Some(format!("{{\"id\":\"x{i}\"}}")),
                    5 => Some(format!("[{i}]")),
                    6 => Some(format!("{{\"age\":{i}.5,\"extra\":[1,{{\"a\":2}}]}}")),
                    _ => Some(format!(
                        "{{\"id\":{i},\"age\":{}}}",
                        rng.random_range(0..90)
                    )),
                })
                .collect();
            let input: ArrayRef = Arc::new(StringArray::from(rows.clone()));
            let out = decode_json_column(&input, &schema(), &JsonOptions::default()).unwrap();
            assert_eq!(out.len(), rows.len());
            let ids = out.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let ages = out
                .column(1)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap();
            let corrupt = out.column(2).as_string::<i32>();
            for (i, row) in rows.iter().enumerate() {
                let Some(text) = row.as_deref().filter(|t| !t.trim().is_empty()) else {
                    assert!(
                        out.is_null(i),
                        "null/blank input gives a null struct: {row:?}"
                    );
                    continue;
                };
                assert!(out.is_valid(i));
                let parsed: Option<serde_json::Value> = serde_json::from_str(text).ok();
                let good = parsed.as_ref().is_some_and(|v| {
                    v.is_object()
                        && v.get("id").is_none_or(|id| id.is_i64())
                        && v.get("age").is_none_or(|a| a.is_number())
                });
                if good {
                    let v = parsed.unwrap();
                    assert_eq!(
                        ids.is_valid(i).then(|| ids.value(i)),
                        v.get("id").and_then(|x| x.as_i64()),
                        "{text}"
                    );
                    assert_eq!(
                        ages.is_valid(i).then(|| ages.value(i)),
                        v.get("age").and_then(|x| x.as_f64()),
                        "{text}"
                    );
                    assert!(corrupt.is_null(i), "{text}");
                } else {
                    assert!(ids.is_null(i) && ages.is_null(i), "{text}");
                    assert_eq!(corrupt.value(i), text);
                }
            }
        }
    }

    #[test]
    fn failfast_names_the_record() {
        let input: ArrayRef = Arc::new(StringArray::from(vec![Some("{oops")]));
        let options = JsonOptions {
            mode: ParseMode::FailFast,
            ..Default::default()
        };
        let err = decode_json_column(&input, &schema(), &options).unwrap_err();
        assert!(
            err.to_string()
                .contains("Parse Mode: FAILFAST. Record: {oops")
        );
    }

    #[test]
    fn to_json_omits_nulls() {
        let decoded = decode(vec![Some(r#"{"id":1}"#), None]);
        let json = encode_json_column(&decoded).unwrap();
        assert_eq!(json.value(0), r#"{"id":1}"#);
        assert!(json.is_null(1));
    }

    #[test]
    fn a_decimal_with_an_exponent_arrow_cannot_hold_is_a_malformed_record() {
        // Found by the from_json fuzz target: arrow's decimal parser overflows on it.
        let fields = Fields::from(vec![
            Field::new("amount", DataType::Decimal128(19, 10), true),
            Field::new("id", DataType::Utf8, true),
            Field::new("_corrupt_record", DataType::Utf8, true),
        ]);
        let input: ArrayRef = Arc::new(StringArray::from(vec![
            r#"{"amount":"1234E567890.0123451234"}"#,
            r#"{"amount":1e99999,"id":"a"}"#,
            r#"{"amount":"1.5e3","id":"8e12345a-e89b"}"#,
        ]));
        let options = JsonOptions::default();
        let decoded = decode_json_column(&input, &fields, &options).unwrap();
        let corrupt = decoded.column(2).as_string::<i32>();
        assert_eq!(corrupt.value(0), r#"{"amount":"1234E567890.0123451234"}"#);
        assert_eq!(corrupt.value(1), r#"{"amount":1e99999,"id":"a"}"#);
        // The same pattern in a string field is no decimal: the record decodes.
        assert!(corrupt.is_null(2));
        assert_eq!(
            decoded.column(1).as_string::<i32>().value(2),
            "8e12345a-e89b"
        );
        let reasons = malformed_records(&input, &fields, &options).unwrap();
        assert_eq!(
            reasons,
            vec![
                (0, EXPONENT_REASON.to_string()),
                (1, EXPONENT_REASON.to_string())
            ]
        );
    }
}
