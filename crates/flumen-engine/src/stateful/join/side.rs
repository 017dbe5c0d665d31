//! One side of a stream-stream join: the rows it buffers until the watermark lets them go.
//!
//! Rows live in a [`StateStore`] keyed by a per-side sequence number (so a join key may hold
//! any number of rows), with the side's columns plus a `matched` flag as values (an outer join
//! emits a row null-extended at eviction only if it never matched). An in-memory index maps
//! each join key (Arrow row format) to the sequence numbers of its rows; it is rebuilt from the
//! store on restore.

use datafusion::common::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array, UInt64Array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use datafusion::arrow::row::{RowConverter, Rows};
use datafusion::physical_plan::PhysicalExpr;

use super::super::evaluate;
use super::super::store::{Loc, StateStore};
use super::super::windows::event_time_micros;
use super::condition::EventTime;
use crate::error::{FlumenError, Result};

/// The name of the sequence-number key column of a side's state.
const SEQ_COLUMN: &str = "__seq";
/// The name of the value column flagging rows that found a match.
const MATCHED_COLUMN: &str = "__matched";

/// A batch of one side's rows with their join keys.
pub(super) struct Keyed {
    pub batch: RecordBatch,
    pub keys: Rows,
    /// Rows whose key has a null (they never match).
    pub null_keys: Option<NullBuffer>,
}

impl Keyed {
    fn key_valid(&self, row: usize) -> bool {
        self.null_keys.as_ref().is_none_or(|n| n.is_valid(row))
    }
}

/// Rows gathered from a side's state: its columns and their `matched` flags.
pub(super) struct Gathered {
    pub columns: Vec<ArrayRef>,
    pub matched: BooleanArray,
}

/// The sequence numbers of one join key's buffered rows: most keys have one, kept inline.
#[derive(Debug)]
enum Seqs {
    One(u64),
    Many(Vec<u64>),
}

impl Seqs {
    fn as_slice(&self) -> &[u64] {
        match self {
            Seqs::One(seq) => std::slice::from_ref(seq),
            Seqs::Many(seqs) => seqs,
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, seq: u64) {
        match self {
            Seqs::One(first) => *self = Seqs::Many(vec![*first, seq]),
            Seqs::Many(seqs) => seqs.push(seq),
        }
    }

    fn retain(&mut self, keep: impl Fn(&u64) -> bool) {
        match self {
            Seqs::One(seq) if !keep(seq) => *self = Seqs::Many(Vec::new()),
            Seqs::One(_) => {}
            Seqs::Many(seqs) => seqs.retain(|s| keep(s)),
        }
    }
}

/// One side's buffered rows.
pub(super) struct SideState {
    schema: SchemaRef,
    key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    store: StateStore,
    /// Join key (row format) -> sequence numbers of the rows with that key.
    index: HashMap<Box<[u8]>, Seqs>,
    index_bytes: usize,
    next_seq: u64,
}

impl SideState {
    /// An empty side for rows of `schema`, joined on `key_exprs`.
    pub fn new(schema: SchemaRef, key_exprs: Vec<Arc<dyn PhysicalExpr>>) -> Result<Self> {
        let key_schema = Arc::new(Schema::new(vec![Field::new(
            SEQ_COLUMN,
            DataType::UInt64,
            false,
        )]));
        let mut fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        fields.push(Field::new(MATCHED_COLUMN, DataType::Boolean, true));
        let store = StateStore::new(key_schema, Arc::new(Schema::new(fields)))?;
        Ok(Self {
            schema,
            key_exprs,
            store,
            index: HashMap::default(),
            index_bytes: 0,
            next_seq: 0,
        })
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Bytes held: the store and the key index.
    pub fn memory_bytes(&self) -> usize {
        self.store.memory_bytes()
            + self.index_bytes
            + self.index.capacity() * size_of::<(Box<[u8]>, Seqs)>()
    }

    /// The store (for the memory reservation).
    pub fn store_mut(&mut self) -> &mut StateStore {
        &mut self.store
    }

    /// `batch` (rows of this side) with its join keys, in `converter`'s row format (one
    /// converter for both sides, so equal keys have equal bytes).
    pub fn keyed(&self, batch: RecordBatch, converter: &RowConverter) -> Result<Keyed> {
        let columns = self
            .key_exprs
            .iter()
            .map(|e| evaluate(e, &batch))
            .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
        let keys = converter.convert_columns(&columns)?;
        let null_keys = columns.iter().fold(None, |acc: Option<NullBuffer>, c| {
            NullBuffer::union(acc.as_ref(), c.logical_nulls().as_ref())
        });
        Ok(Keyed {
            batch,
            keys,
            null_keys,
        })
    }

    /// The pairs (row of `probe`, buffered row) with equal join keys, from `start` (a probe
    /// row and how many of its matches were already handed out) until `max_pairs` pairs are
    /// found: positions in `probe`, sequence numbers here, and where to continue.
    pub fn candidates(
        &self,
        probe: &Keyed,
        start: (usize, usize),
        max_pairs: usize,
    ) -> (Vec<u32>, Vec<u64>, (usize, usize)) {
        let rows = probe.batch.num_rows();
        let mut positions = Vec::new();
        let mut seqs = Vec::new();
        if self.index.is_empty() {
            return (positions, seqs, (rows, 0));
        }
        let (mut row, mut skip) = start;
        while row < rows && positions.len() < max_pairs {
            if probe.key_valid(row)
                && let Some(found) = self.index.get(probe.keys.row(row).data())
            {
                let found = found.as_slice();
                let rest = &found[skip.min(found.len())..];
                let room = max_pairs - positions.len();
                if rest.len() > room {
                    // A busy key: the rest of its matches in the next chunk.
                    positions.extend(std::iter::repeat_n(row as u32, room));
                    seqs.extend_from_slice(&rest[..room]);
                    return (positions, seqs, (row, skip + room));
                }
                positions.extend(std::iter::repeat_n(row as u32, rest.len()));
                seqs.extend_from_slice(rest);
            }
            row += 1;
            skip = 0;
        }
        (positions, seqs, (row, 0))
    }

    fn locate(&self, seqs: &[u64]) -> Result<Vec<Loc>> {
        let keys: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from(seqs.to_vec()))];
        let rows = self.store.key_rows(&keys)?;
        (0..seqs.len())
            .map(|i| {
                self.store.get(rows.row(i).data()).ok_or_else(|| {
                    FlumenError::IllegalState(format!(
                        "join state row {} is indexed but not stored; this is a bug in Flumen, please report it",
                        seqs[i]
                    ))
                })
            })
            .collect()
    }

    /// The buffered rows `seqs`, in that order.
    pub fn gather(&self, seqs: &[u64]) -> Result<Gathered> {
        let locs = self.locate(seqs)?;
        let mut values = self.store.gather_values(&locs)?;
        let matched = values
            .pop()
            .map(|m| m.as_boolean().clone())
            .unwrap_or_else(|| BooleanArray::from(Vec::<bool>::new()));
        Ok(Gathered {
            columns: values,
            matched,
        })
    }

    /// Buffers `rows` (of this side, with their keys), flagged as `matched`.
    pub fn append(&mut self, rows: &Keyed, matched: Vec<bool>) -> Result<()> {
        let n = rows.batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let first = self.next_seq;
        self.next_seq += n as u64;
        for row in 0..n {
            if rows.key_valid(row) {
                self.index_row(rows.keys.row(row).data(), first + row as u64);
            }
        }
        let seqs: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from_iter_values(
            first..first + n as u64,
        ))];
        let mut values = rows.batch.columns().to_vec();
        values.push(Arc::new(BooleanArray::from(matched)));
        self.upsert(seqs, values)
    }

    fn upsert(&mut self, seqs: Vec<ArrayRef>, values: Vec<ArrayRef>) -> Result<()> {
        let key_rows = self.store.key_rows(&seqs)?;
        self.store.upsert(seqs, &key_rows, values);
        Ok(())
    }

    fn index_row(&mut self, key: &[u8], seq: u64) {
        match self.index.get_mut(key) {
            Some(seqs) => {
                seqs.push(seq);
                self.index_bytes += size_of::<u64>();
            }
            None => {
                self.index_bytes += key.len() + size_of::<u64>();
                self.index.insert(key.into(), Seqs::One(seq));
            }
        }
    }

    /// Flags the buffered rows `seqs` (repeats allowed) as matched; rows already flagged are
    /// not rewritten.
    pub fn set_matched(&mut self, seqs: &[u64]) -> Result<()> {
        let mut seqs = seqs.to_vec();
        seqs.sort_unstable();
        seqs.dedup();
        if seqs.is_empty() {
            return Ok(());
        }
        let gathered = self.gather(&seqs)?;
        let unflagged: Vec<u32> = (0..seqs.len())
            .filter(|&i| !(gathered.matched.is_valid(i) && gathered.matched.value(i)))
            .map(|i| i as u32)
            .collect();
        if unflagged.is_empty() {
            return Ok(());
        }
        let positions = UInt32Array::from(unflagged);
        let keys: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from(seqs))];
        let keys = super::super::partitions::take_rows(&keys, &positions)?;
        let mut values = super::super::partitions::take_rows(&gathered.columns, &positions)?;
        values.push(Arc::new(BooleanArray::from(vec![true; positions.len()])));
        self.upsert(keys, values)
    }

    /// Removes the rows whose event time is below `threshold_us` and returns them (their
    /// columns and `matched` flags), oldest first.
    pub fn evict(
        &mut self,
        time: EventTime,
        threshold_us: i64,
        converter: &RowConverter,
    ) -> Result<Gathered> {
        let (seqs, mut values) = self.store.remove_where(|_, values| {
            let times = row_times(values, time)?;
            Ok(times
                .iter()
                .map(|t| Some(t.is_some_and(|t| t < threshold_us)))
                .collect())
        })?;
        let matched = values
            .pop()
            .map(|m| m.as_boolean().clone())
            .unwrap_or_else(|| BooleanArray::from(Vec::<bool>::new()));
        if matched.is_empty() {
            return Ok(Gathered {
                columns: values,
                matched,
            });
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), values.clone())?;
        let keyed = self.keyed(batch, converter)?;
        let seqs = seqs
            .first()
            .map(|s| s.as_primitive::<UInt64Type>().clone())
            .unwrap_or_else(|| UInt64Array::from(Vec::<u64>::new()));
        // Each key's list once, however many of its rows go (a busy key would otherwise be
        // scanned once per evicted row).
        // A key with one row (the common case) goes at once.
        let mut gone_by_key: HashMap<&[u8], HashSet<u64>> = HashMap::default();
        for row in 0..keyed.batch.num_rows() {
            if !keyed.key_valid(row) {
                continue;
            }
            let key = keyed.keys.row(row).data();
            let seq = seqs.value(row);
            if matches!(self.index.get(key), Some(Seqs::One(only)) if *only == seq) {
                self.index.remove(key);
                self.index_bytes = self
                    .index_bytes
                    .saturating_sub(key.len() + size_of::<u64>());
            } else {
                gone_by_key.entry(key).or_default().insert(seq);
            }
        }
        for (key, gone) in gone_by_key {
            if let Some(list) = self.index.get_mut(key) {
                let before = list.len();
                list.retain(|s| !gone.contains(s));
                let removed = before - list.len();
                self.index_bytes = self.index_bytes.saturating_sub(removed * size_of::<u64>());
                if list.is_empty() {
                    self.index.remove(key);
                    self.index_bytes = self.index_bytes.saturating_sub(key.len());
                }
            }
        }
        if self.index.capacity() > 64 && self.index.len() < self.index.capacity() / 4 {
            self.index.shrink_to_fit();
        }
        self.store.maybe_compact()?;
        Ok(Gathered {
            columns: values,
            matched,
        })
    }

    /// Whether any of `batch`'s rows has an event time below `threshold_us`.
    pub fn any_below(batch: &RecordBatch, time: EventTime, threshold_us: i64) -> Result<bool> {
        let times = row_times(batch.columns(), time)?;
        Ok(times.iter().any(|t| t.is_some_and(|t| t < threshold_us)))
    }

    /// Writes the changes of the batch as `version`; returns the bytes written.
    pub fn commit(&mut self, dir: &Path, version: u64) -> Result<u64> {
        self.store.commit(dir, version)
    }

    /// Restores `version` from `dir` and rebuilds the key index.
    pub fn restore(&mut self, dir: &Path, version: u64, converter: &RowConverter) -> Result<()> {
        self.store.load(dir, version)?;
        self.index.clear();
        self.index_bytes = 0;
        self.next_seq = 0;
        if self.store.len() == 0 {
            return Ok(());
        }
        let (seqs, mut values) = self.store.all_sorted()?;
        values.pop();
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), values).map_err(|e| {
            FlumenError::checkpoint(
                dir,
                format!("holds join state of another shape ({e}); the query cannot change for an existing checkpoint: restore it or start a new checkpoint location"),
            )
        })?;
        let keyed = self.keyed(batch, converter)?;
        let seqs = seqs
            .first()
            .map(|s| s.as_primitive::<UInt64Type>().clone())
            .unwrap_or_else(|| UInt64Array::from(Vec::<u64>::new()));
        for row in 0..keyed.batch.num_rows() {
            let seq = seqs.value(row);
            self.next_seq = self.next_seq.max(seq + 1);
            if keyed.key_valid(row) {
                self.index_row(keyed.keys.row(row).data(), seq);
            }
        }
        Ok(())
    }
}

/// Event times (µs) of rows whose columns are `columns` (the side's schema first).
fn row_times(columns: &[ArrayRef], time: EventTime) -> Result<Vec<Option<i64>>> {
    let column = columns.get(time.index()).ok_or_else(|| {
        FlumenError::IllegalState(
            "join state lacks its event-time column; this is a bug in Flumen, please report it"
                .into(),
        )
    })?;
    let times = match time {
        EventTime::Column(_) => event_time_micros(column)?,
        EventTime::WindowEnd(_) => {
            let end = column
                .as_struct_opt()
                .and_then(|s| s.column_by_name("end"))
                .ok_or_else(|| {
                    FlumenError::IllegalState(
                        "join window column lacks an end; this is a bug in Flumen, please report it"
                            .into(),
                    )
                })?;
            event_time_micros(end)?
        }
    };
    Ok(times.iter().collect())
}
