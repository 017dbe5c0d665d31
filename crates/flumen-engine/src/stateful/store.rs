//! The state store of a stateful operator: rows of key columns and value columns, held as Arrow
//! arrays, indexed by the key's row-format bytes, and versioned in the checkpoint.
//!
//! Storage is log-structured: every batch appends one chunk with the keys it created or changed,
//! and the index points each key at its newest row. Superseded rows are garbage; a chunk is
//! dropped when none of its rows is live, and the store compacts itself into one chunk when
//! garbage outweighs live rows. So a batch costs time in proportion to the keys it touches,
//! not to the size of the state.
//!
//! ## On disk
//! `state/<operator>/<version>.delta` holds the changes of one batch (version = batch id + 1,
//! as in Spark): upserted rows and deleted keys, in the order they happened, as one Arrow IPC
//! file with an `__op` column. A `<version>.snapshot` holds the whole state; one is written when
//! the deltas since the last one outweigh the state itself (so writing snapshots costs at most as
//! much as writing deltas, and a restore reads at most about twice the state), or after
//! [`MAX_DELTAS_BETWEEN_SNAPSHOTS`] deltas. Version `v` is restored from the newest snapshot at or before `v` plus the
//! deltas after it. Files are written atomically (temporary file, fsync, rename).

use std::fs;
use std::hash::BuildHasher;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBufferBuilder, Int8Array, RecordBatch, new_null_array,
};
use datafusion::arrow::compute::{filter, interleave};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use hashbrown::{DefaultHashBuilder, HashTable};

use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};

use crate::checkpoint::write_atomic;
use crate::error::{FlumenError, Result};

/// At most this many deltas between two snapshots (bounds the files a restore replays).
pub const MAX_DELTAS_BETWEEN_SNAPSHOTS: u64 = 100;
/// Deltas smaller than this in total never trigger a snapshot on their own.
const SNAPSHOT_FLOOR_BYTES: u64 = 64 * 1024;

const OP_COLUMN: &str = "__op";
const OP_UPSERT: i8 = 0;
const OP_DELETE: i8 = 1;

/// Where a key's newest row lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    chunk: u32,
    row: u32,
}

/// An index entry: where the key lives and 32 bits of its hash, so growing the table and
/// probing it never touch the key bytes of other keys.
#[derive(Debug, Clone, Copy)]
struct Slot {
    loc: Loc,
    hash: u32,
}

/// The table hash of a stored 32-bit key hash (spread over 64 bits for hashbrown's probing).
fn table_hash(hash: u32) -> u64 {
    u64::from(hash).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// One batch's rows: keys in row format (contiguous bytes), values as Arrow arrays.
struct Chunk {
    rows: Rows,
    values: Vec<ArrayRef>,
    live: BooleanBufferBuilder,
    live_count: usize,
    bytes: usize,
}

enum Change {
    Upsert(Vec<ArrayRef>, Vec<ArrayRef>),
    Delete(Vec<ArrayRef>),
}

/// The key bytes at `loc`: in a stored chunk, or in `pending` (rows being inserted as chunk
/// `pending.0`).
fn key_at<'a>(
    chunks: &'a [Option<Chunk>],
    pending: Option<(u32, &'a Rows)>,
    loc: &Loc,
) -> &'a [u8] {
    match pending {
        Some((id, rows)) if id == loc.chunk => rows.row(loc.row as usize).data(),
        _ => chunks
            .get(loc.chunk as usize)
            .and_then(Option::as_ref)
            .map_or(&[], |c| c.rows.row(loc.row as usize).data()),
    }
}

/// Rows of keys and values; see the module docs.
///
/// Each key is held once, in row format inside its chunk; the index is a hash table of
/// 8-byte locations, hashed and compared through the chunk's bytes.
pub(crate) struct StateStore {
    key_schema: SchemaRef,
    value_schema: SchemaRef,
    converter: RowConverter,
    hasher: DefaultHashBuilder,
    index: HashTable<Slot>,
    chunks: Vec<Option<Chunk>>,
    stored_rows: usize,
    chunk_bytes: usize,
    changes: Vec<Change>,
    reservation: Option<MemoryReservation>,
    deltas_since_snapshot: u64,
    delta_bytes_since_snapshot: u64,
    snapshot_floor: u64,
}

impl StateStore {
    /// An empty store for keys and values of these schemas.
    pub fn new(key_schema: SchemaRef, value_schema: SchemaRef) -> Result<Self> {
        let converter = RowConverter::new(
            key_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        Ok(Self {
            key_schema,
            value_schema,
            converter,
            hasher: DefaultHashBuilder::default(),
            index: HashTable::new(),
            chunks: Vec::new(),
            stored_rows: 0,
            chunk_bytes: 0,
            changes: Vec::new(),
            reservation: None,
            deltas_since_snapshot: 0,
            delta_bytes_since_snapshot: 0,
            snapshot_floor: SNAPSHOT_FLOOR_BYTES,
        })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Bytes held: chunks (key bytes and values) and the index.
    pub fn memory_bytes(&self) -> usize {
        self.chunk_bytes + self.index.capacity() * (size_of::<Slot>() + 1) + self.converter.size()
    }

    /// Charges `bytes` of state (`keys` keys: this store's and its sibling partitions') to the
    /// session's memory pool (DataFusion's, so a memory limit set on the session bounds it);
    /// fails naming the operator when they do not fit.
    pub fn reserve(
        &mut self,
        ctx: &TaskContext,
        operator: &str,
        bytes: usize,
        keys: usize,
    ) -> Result<()> {
        let reservation = self.reservation.get_or_insert_with(|| {
            MemoryConsumer::new(format!("StreamingState[{operator}]")).register(ctx.memory_pool())
        });
        reservation.try_resize(bytes).map_err(|e| {
            FlumenError::DataFusion(DataFusionError::ResourcesExhausted(format!(
                "the {operator} state ({bytes} bytes, {keys} keys) does not fit in the session's memory pool ({e}); \
                 declare a watermark so old keys are evicted, or give the session more memory",
            )))
        })
    }

    /// Keys in row format, to look up and order.
    pub fn key_rows(&self, keys: &[ArrayRef]) -> Result<Rows> {
        Ok(self.converter.convert_columns(keys)?)
    }

    /// The newest row of `key` (row-format bytes).
    pub fn get(&self, key: &[u8]) -> Option<Loc> {
        let hash = self.key_hash(key);
        let chunks = &self.chunks;
        self.index
            .find(table_hash(hash), |s| {
                s.hash == hash && key_at(chunks, None, &s.loc) == key
            })
            .map(|s| s.loc)
    }

    fn key_hash(&self, key: &[u8]) -> u32 {
        (self.hasher.hash_one(key) >> 32) as u32
    }

    /// Value columns of the rows at `locs`, in that order.
    pub fn gather_values(&self, locs: &[Loc]) -> Result<Vec<ArrayRef>> {
        if locs.is_empty() {
            return Ok(self
                .value_schema
                .fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), 0))
                .collect());
        }
        // Chunk id -> position among the chunks actually referenced.
        let mut position = vec![usize::MAX; self.chunks.len()];
        let mut used = Vec::new();
        for loc in locs {
            let c = loc.chunk as usize;
            if position[c] == usize::MAX {
                position[c] = used.len();
                used.push(c);
            }
        }
        let indices: Vec<(usize, usize)> = locs
            .iter()
            .map(|l| (position[l.chunk as usize], l.row as usize))
            .collect();
        let mut out = Vec::with_capacity(self.value_schema.fields().len());
        for column in 0..self.value_schema.fields().len() {
            let arrays: Vec<&dyn Array> = used
                .iter()
                .map(|&c| match &self.chunks[c] {
                    Some(chunk) => Ok(chunk.values[column].as_ref()),
                    None => Err(dropped_chunk(c)),
                })
                .collect::<Result<_>>()?;
            out.push(interleave(&arrays, &indices)?);
        }
        Ok(out)
    }

    /// Key columns of the rows at `locs`, in that order.
    pub fn gather_keys(&self, locs: &[Loc]) -> Result<Vec<ArrayRef>> {
        let rows = locs
            .iter()
            .map(|l| match &self.chunks[l.chunk as usize] {
                Some(chunk) => Ok(chunk.rows.row(l.row as usize)),
                None => Err(dropped_chunk(l.chunk as usize)),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(self.converter.convert_rows(rows)?)
    }

    /// Inserts or replaces the rows for `keys` (whose row-format bytes are `rows`).
    pub fn upsert(&mut self, keys: Vec<ArrayRef>, rows: &Rows, values: Vec<ArrayRef>) {
        self.changes.push(Change::Upsert(keys, values.clone()));
        self.insert_chunk(rows.clone(), values);
    }

    fn insert_chunk(&mut self, rows: Rows, values: Vec<ArrayRef>) {
        let n = rows.num_rows();
        if n == 0 {
            return;
        }
        let chunk_id = self.chunks.len() as u32;
        let mut superseded = Vec::new();
        self.index.reserve(n, |s| table_hash(s.hash));
        {
            let chunks = &self.chunks;
            let hasher = &self.hasher;
            let pending = Some((chunk_id, &rows));
            for i in 0..n {
                let key = rows.row(i).data();
                let hash = (hasher.hash_one(key) >> 32) as u32;
                let loc = Loc {
                    chunk: chunk_id,
                    row: i as u32,
                };
                let same = |s: &Slot| s.hash == hash && key_at(chunks, pending, &s.loc) == key;
                match self.index.find_mut(table_hash(hash), same) {
                    Some(slot) => superseded.push(std::mem::replace(&mut slot.loc, loc)),
                    None => {
                        self.index
                            .insert_unique(table_hash(hash), Slot { loc, hash }, |s| {
                                table_hash(s.hash)
                            });
                    }
                }
            }
        }
        let mut live = BooleanBufferBuilder::new(n);
        live.append_n(n, true);
        let bytes = rows.size()
            + values
                .iter()
                .map(|a| a.get_array_memory_size())
                .sum::<usize>();
        self.chunks.push(Some(Chunk {
            rows,
            values,
            live,
            live_count: n,
            bytes,
        }));
        self.stored_rows += n;
        self.chunk_bytes += bytes;
        for loc in superseded {
            self.release(loc);
        }
    }

    /// Marks a row as garbage, dropping its chunk once nothing in it is live.
    fn release(&mut self, loc: Loc) {
        let c = loc.chunk as usize;
        let Some(Some(chunk)) = self.chunks.get_mut(c) else {
            return;
        };
        chunk.live.set_bit(loc.row as usize, false);
        chunk.live_count -= 1;
        if chunk.live_count == 0 {
            self.stored_rows -= chunk.live.len();
            self.chunk_bytes -= chunk.bytes;
            self.chunks[c] = None;
        }
    }

    /// Removes the entry at `loc` from the index and releases its row.
    fn forget(&mut self, loc: Loc) {
        let hash = self.key_hash(key_at(&self.chunks, None, &loc));
        if let Ok(entry) = self.index.find_entry(table_hash(hash), |s| s.loc == loc) {
            entry.remove();
            self.release(loc);
        }
    }

    /// Gives the index back its memory once most keys are gone.
    fn shrink(&mut self) {
        if self.index.capacity() > 64 && self.index.len() < self.index.capacity() / 4 {
            self.index
                .shrink_to(self.index.len() * 2, |s| table_hash(s.hash));
        }
    }

    /// Removes the keys whose rows `doomed` selects (given a chunk's keys and values), returning
    /// their keys and values ordered by key. Only live rows are considered.
    pub fn remove_where(
        &mut self,
        doomed: impl Fn(&[ArrayRef], &[ArrayRef]) -> Result<BooleanArray>,
    ) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
        let mut locs = Vec::new();
        for (c, chunk) in self.chunks.iter().enumerate() {
            let Some(chunk) = chunk else { continue };
            let keys = self.converter.convert_rows(chunk.rows.iter())?;
            let mask = doomed(&keys, &chunk.values)?;
            for row in 0..mask.len() {
                if mask.is_valid(row) && mask.value(row) && chunk.live.get_bit(row) {
                    locs.push(Loc {
                        chunk: c as u32,
                        row: row as u32,
                    });
                }
            }
        }
        let locs = self.sort_by_key(locs);
        let keys = self.gather_keys(&locs)?;
        let values = self.gather_values(&locs)?;
        if locs.is_empty() {
            return Ok((keys, values));
        }
        for loc in locs {
            self.forget(loc);
        }
        self.shrink();
        self.changes.push(Change::Delete(keys.clone()));
        Ok((keys, values))
    }

    /// Removes the given keys (row-format bytes); unknown keys are ignored.
    pub fn remove_keys(&mut self, keys: &[Box<[u8]>]) -> Result<()> {
        let locs: Vec<Loc> = keys.iter().filter_map(|k| self.get(k)).collect();
        if locs.is_empty() {
            return Ok(());
        }
        let gathered = self.gather_keys(&locs)?;
        for loc in locs {
            self.forget(loc);
        }
        self.changes.push(Change::Delete(gathered));
        Ok(())
    }

    /// Every key and value, ordered by key.
    pub fn all_sorted(&self) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
        let locs = self.sort_by_key(self.index.iter().map(|s| s.loc).collect());
        Ok((self.gather_keys(&locs)?, self.gather_values(&locs)?))
    }

    /// Every key and value, in no particular order (for snapshots).
    fn all(&self) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
        let locs: Vec<Loc> = self.index.iter().map(|s| s.loc).collect();
        Ok((self.gather_keys(&locs)?, self.gather_values(&locs)?))
    }

    fn sort_by_key(&self, mut locs: Vec<Loc>) -> Vec<Loc> {
        let chunks = &self.chunks;
        locs.sort_unstable_by(|a, b| key_at(chunks, None, a).cmp(key_at(chunks, None, b)));
        locs
    }

    /// Rewrites the live rows into one chunk when garbage outweighs them.
    pub fn maybe_compact(&mut self) -> Result<()> {
        let live = self.index.len();
        if self.stored_rows <= 2 * live + 4096 && self.chunks.iter().flatten().count() < 256 {
            return Ok(());
        }
        let locs: Vec<Loc> = self.index.iter().map(|s| s.loc).collect();
        let keys = self.gather_keys(&locs)?;
        let values = self.gather_values(&locs)?;
        let rows = self.converter.convert_columns(&keys)?;
        self.clear();
        self.insert_chunk(rows, values);
        Ok(())
    }

    fn clear(&mut self) {
        self.index = HashTable::new();
        self.chunks.clear();
        self.stored_rows = 0;
        self.chunk_bytes = 0;
    }

    fn file_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .key_schema
            .fields()
            .iter()
            .chain(self.value_schema.fields().iter())
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        fields.push(Field::new(OP_COLUMN, DataType::Int8, false));
        Arc::new(Schema::new(fields))
    }

    fn file_batch(
        &self,
        keys: &[ArrayRef],
        values: Option<&[ArrayRef]>,
        op: i8,
    ) -> Result<RecordBatch> {
        let n = keys.first().map_or(0, |k| k.len());
        let mut columns: Vec<ArrayRef> = keys.to_vec();
        match values {
            Some(v) => columns.extend(v.iter().cloned()),
            None => columns.extend(
                self.value_schema
                    .fields()
                    .iter()
                    .map(|f| new_null_array(f.data_type(), n)),
            ),
        }
        columns.push(Arc::new(Int8Array::from(vec![op; n])));
        Ok(RecordBatch::try_new(self.file_schema(), columns)?)
    }

    fn write_file(&self, path: &Path, batches: &[RecordBatch]) -> Result<()> {
        let mut writer = FileWriter::try_new(Vec::new(), &self.file_schema())?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()?;
        write_atomic(path, &writer.into_inner()?)
    }

    /// Writes `version`'s delta (and, when due, a snapshot; see the module docs) to `dir`;
    /// returns the bytes written.
    pub fn commit(&mut self, dir: &Path, version: u64) -> Result<u64> {
        fs::create_dir_all(dir).map_err(|e| FlumenError::io(dir, e))?;
        let changes = std::mem::take(&mut self.changes);
        let mut batches = Vec::with_capacity(changes.len());
        for change in &changes {
            batches.push(match change {
                Change::Upsert(keys, values) => self.file_batch(keys, Some(values), OP_UPSERT)?,
                Change::Delete(keys) => self.file_batch(keys, None, OP_DELETE)?,
            });
        }
        let delta = dir.join(format!("{version}.delta"));
        self.write_file(&delta, &batches)?;
        let mut written = file_len(&delta);
        self.deltas_since_snapshot += 1;
        self.delta_bytes_since_snapshot += written;
        let outweighed = self.delta_bytes_since_snapshot
            >= (self.memory_bytes() as u64).max(self.snapshot_floor);
        if outweighed || self.deltas_since_snapshot >= MAX_DELTAS_BETWEEN_SNAPSHOTS {
            let (keys, values) = self.all()?;
            let batch = self.file_batch(&keys, Some(&values), OP_UPSERT)?;
            let snapshot = dir.join(format!("{version}.snapshot"));
            self.write_file(&snapshot, &[batch])?;
            written += file_len(&snapshot);
            self.deltas_since_snapshot = 0;
            self.delta_bytes_since_snapshot = 0;
        }
        Ok(written)
    }

    /// Replaces the contents with `version` as stored in `dir` (empty for version 0).
    pub fn load(&mut self, dir: &Path, version: u64) -> Result<()> {
        self.clear();
        self.changes.clear();
        if version == 0 {
            return Ok(());
        }
        let snapshot = (1..=version)
            .rev()
            .find(|v| dir.join(format!("{v}.snapshot")).exists());
        let first_delta = match snapshot {
            Some(s) => {
                self.apply_file(&dir.join(format!("{s}.snapshot")))?;
                s + 1
            }
            None => 1,
        };
        self.deltas_since_snapshot = 0;
        self.delta_bytes_since_snapshot = 0;
        for v in first_delta..=version {
            let delta = dir.join(format!("{v}.delta"));
            self.apply_file(&delta)?;
            self.deltas_since_snapshot += 1;
            self.delta_bytes_since_snapshot += file_len(&delta);
        }
        self.changes.clear();
        self.maybe_compact()
    }

    fn apply_file(&mut self, path: &Path) -> Result<()> {
        let bytes = fs::read(path).map_err(|e| {
            FlumenError::checkpoint(
                path,
                format!("cannot be read ({e}); the state of this query cannot be restored without it: restore the file or start a new checkpoint location"),
            )
        })?;
        let corrupt = |e: &dyn std::fmt::Display| {
            FlumenError::checkpoint(
                path,
                format!(
                    "is not a valid state file ({e}); restore it or start a new checkpoint location"
                ),
            )
        };
        let reader = FileReader::try_new(Cursor::new(bytes), None).map_err(|e| corrupt(&e))?;
        let expected = self.file_schema();
        let keys_width = self.key_schema.fields().len();
        let values_width = self.value_schema.fields().len();
        for batch in reader {
            let batch = batch.map_err(|e| corrupt(&e))?;
            if batch.schema().fields().len() != expected.fields().len()
                || batch
                    .schema()
                    .fields()
                    .iter()
                    .zip(expected.fields())
                    .any(|(a, b)| a.data_type() != b.data_type())
            {
                return Err(FlumenError::checkpoint(
                    path,
                    "was written by a query with different grouping keys or aggregates; the query cannot change for an existing checkpoint: restore it or start a new checkpoint location",
                ));
            }
            let ops = batch
                .column(keys_width + values_width)
                .as_any()
                .downcast_ref::<Int8Array>()
                .ok_or_else(|| corrupt(&"no operation column"))?
                .clone();
            let upserts = BooleanArray::from_unary(&ops, |op| op == OP_UPSERT);
            let deletes = BooleanArray::from_unary(&ops, |op| op == OP_DELETE);
            let select = |mask: &BooleanArray, from: usize, to: usize| -> Result<Vec<ArrayRef>> {
                (from..to)
                    .map(|i| Ok(filter(batch.column(i), mask)?))
                    .collect()
            };
            let keys = select(&upserts, 0, keys_width)?;
            let values =
                self.restore_types(select(&upserts, keys_width, keys_width + values_width)?)?;
            let keys = self.restore_key_types(keys)?;
            let rows = self.converter.convert_columns(&keys)?;
            self.insert_chunk(rows, values);
            let deleted = self.restore_key_types(select(&deletes, 0, keys_width)?)?;
            let rows = self.converter.convert_columns(&deleted)?;
            for row in rows.iter() {
                if let Some(loc) = self.get(row.data()) {
                    self.forget(loc);
                }
            }
        }
        Ok(())
    }

    /// Arrays read back carry the file's nullable fields; nested types need the store's own.
    fn restore_key_types(&self, arrays: Vec<ArrayRef>) -> Result<Vec<ArrayRef>> {
        retype(arrays, &self.key_schema)
    }

    fn restore_types(&self, arrays: Vec<ArrayRef>) -> Result<Vec<ArrayRef>> {
        retype(arrays, &self.value_schema)
    }

    /// Deletes files no longer needed to restore any version from `keep_from` on.
    pub fn purge(dir: &Path, keep_from: u64) -> Result<()> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Ok(());
        };
        let mut files: Vec<(u64, PathBuf)> = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some((v, _)) = name.split_once('.')
                && let Ok(v) = v.parse::<u64>()
            {
                files.push((v, path));
            }
        }
        // The newest snapshot at or before keep_from is the base everything later needs.
        let base = files
            .iter()
            .filter(|(v, p)| *v <= keep_from && p.extension().is_some_and(|e| e == "snapshot"))
            .map(|(v, _)| *v)
            .max();
        let Some(base) = base else { return Ok(()) };
        for (v, path) in files {
            let is_base_snapshot = v == base && path.extension().is_some_and(|e| e == "snapshot");
            if v < base || (v == base && !is_base_snapshot) {
                fs::remove_file(&path).map_err(|e| FlumenError::io(&path, e))?;
            }
        }
        Ok(())
    }
}

fn dropped_chunk(c: usize) -> FlumenError {
    FlumenError::IllegalState(format!(
        "state index points at dropped chunk {c}; this is a bug in Flumen, please report it"
    ))
}

fn retype(arrays: Vec<ArrayRef>, schema: &Schema) -> Result<Vec<ArrayRef>> {
    arrays
        .into_iter()
        .zip(schema.fields())
        .map(|(a, f)| {
            if a.data_type() == f.data_type() {
                Ok(a)
            } else {
                Ok(datafusion::arrow::compute::cast(&a, f.data_type())?)
            }
        })
        .collect()
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};

    fn store() -> StateStore {
        let mut s = StateStore::new(
            Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true)])),
            Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)])),
        )
        .unwrap();
        // Snapshots as soon as the deltas outweigh the (tiny) state.
        s.snapshot_floor = 0;
        s
    }

    fn put(s: &mut StateStore, keys: &[&str], values: &[i64]) {
        let k: Vec<ArrayRef> = vec![Arc::new(StringArray::from(keys.to_vec()))];
        let rows = s.key_rows(&k).unwrap();
        s.upsert(k, &rows, vec![Arc::new(Int64Array::from(values.to_vec()))]);
    }

    fn contents(s: &StateStore) -> Vec<(String, i64)> {
        let (k, v) = s.all_sorted().unwrap();
        let k = k[0].as_any().downcast_ref::<StringArray>().unwrap();
        let v = v[0].as_any().downcast_ref::<Int64Array>().unwrap();
        (0..k.len())
            .map(|i| (k.value(i).to_string(), v.value(i)))
            .collect()
    }

    #[test]
    fn upserts_deletes_and_restores_every_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store();
        let mut expected = Vec::new();
        for version in 1..=23u64 {
            let key = format!("k{}", version % 7);
            put(&mut s, &[&key, "always"], &[version as i64, version as i64]);
            if version % 5 == 0 {
                s.remove_where(|keys, _| {
                    let k = keys[0].as_any().downcast_ref::<StringArray>().unwrap();
                    Ok(k.iter().map(|k| Some(k == Some("k1"))).collect())
                })
                .unwrap();
            }
            s.maybe_compact().unwrap();
            s.commit(dir.path(), version).unwrap();
            expected.push(contents(&s));
        }
        for version in 1..=23u64 {
            let mut restored = store();
            restored.load(dir.path(), version).unwrap();
            assert_eq!(
                contents(&restored),
                expected[version as usize - 1],
                "version {version}"
            );
        }
        StateStore::purge(dir.path(), 15).unwrap();
        let mut restored = store();
        restored.load(dir.path(), 23).unwrap();
        assert_eq!(contents(&restored), expected[22]);
        let snapshots: Vec<u64> = (1..=23)
            .filter(|v| dir.path().join(format!("{v}.snapshot")).exists())
            .collect();
        assert!(
            !snapshots.is_empty() && snapshots.len() < 23,
            "{snapshots:?}"
        );
        assert!(!dir.path().join("1.delta").exists(), "purged");
    }
}
