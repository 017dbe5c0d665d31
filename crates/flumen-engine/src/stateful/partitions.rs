//! Key-partitioned state: a stateful operator keeps one state per partition (Spark's
//! `spark.sql.shuffle.partitions`), routes each row to the partition of its key, and works on
//! the partitions in parallel.
//!
//! A key's partition is a stable hash of its Arrow row-format bytes (the same function in every
//! process and on every machine), so the state a checkpoint holds for a key is always found in
//! the partition that key routes to. The number of partitions is recorded in the checkpoint and
//! restored from it; see [`crate::checkpoint::StateLayout`].

use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::row::{RowConverter, Rows, SortField};

use crate::error::{FlumenError, Result};

/// Below this many rows plus stored keys a batch's partitions run one after another on the
/// calling thread: starting threads would cost more than it saves.
const PARALLEL_MIN_WORK: usize = 8192;

/// A 64-bit hash of `bytes` that never changes between processes, builds or machines.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(word))
            .wrapping_mul(K)
            .rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    // MurmurHash3's 64-bit finaliser: every input bit reaches every output bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The partition (of `partitions`) that row-format key `key` belongs to.
pub(crate) fn partition_of(key: &[u8], partitions: usize) -> usize {
    ((u128::from(stable_hash(key)) * partitions as u128) >> 64) as usize
}

/// The columns as row-format keys (for routing; built for the columns' own types).
pub(crate) fn key_rows(columns: &[ArrayRef]) -> Result<Rows> {
    let converter = RowConverter::new(
        columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    Ok(converter.convert_columns(columns)?)
}

/// For each partition, the positions (ascending) of the rows whose key routes to it.
pub(crate) fn route(keys: &Rows, partitions: usize) -> Vec<Vec<u32>> {
    let mut routed = vec![Vec::with_capacity(keys.num_rows() / partitions.max(1) + 1); partitions];
    for (row, key) in keys.iter().enumerate() {
        routed[partition_of(key.data(), partitions)].push(row as u32);
    }
    routed
}

/// The rows of `arrays` at `positions`.
pub(crate) fn take_rows(arrays: &[ArrayRef], positions: &UInt32Array) -> Result<Vec<ArrayRef>> {
    arrays
        .iter()
        .map(|a| Ok(take(a.as_ref(), positions, None)?))
        .collect()
}

/// Runs `work` on every partition's state with its input, in parallel when there is enough
/// `amount` of work (rows and stored keys) to pay for the threads; results in partition order.
pub(crate) fn for_each_partition<S, I, T, F>(
    states: &mut [S],
    inputs: Vec<I>,
    amount: usize,
    work: F,
) -> Result<Vec<T>>
where
    S: Send,
    I: Send,
    T: Send,
    F: Fn(&mut S, I) -> Result<T> + Sync,
{
    if states.len() != inputs.len() {
        return Err(FlumenError::IllegalState(format!(
            "{} state partitions but {} inputs; this is a bug in Flumen, please report it",
            states.len(),
            inputs.len()
        )));
    }
    if states.len() <= 1 || amount < PARALLEL_MIN_WORK {
        return states
            .iter_mut()
            .zip(inputs)
            .map(|(s, i)| work(s, i))
            .collect();
    }
    let work = &work;
    std::thread::scope(|scope| {
        let mut pairs = states.iter_mut().zip(inputs);
        let first = pairs.next();
        let handles: Vec<_> = pairs
            .map(|(s, i)| scope.spawn(move || work(s, i)))
            .collect();
        let mut results = Vec::with_capacity(handles.len() + 1);
        if let Some((s, i)) = first {
            results.push(work(s, i));
        }
        for handle in handles {
            results.push(handle.join().unwrap_or_else(|_| {
                Err(FlumenError::IllegalState(
                    "a state partition's worker panicked; this is a bug in Flumen, please report it"
                        .into(),
                ))
            }));
        }
        results.into_iter().collect()
    })
}

/// `arrays` reordered so that the rows whose `order` values are smallest come first.
pub(crate) fn sort_rows_by(arrays: &[ArrayRef], order: &[u32]) -> Result<Vec<ArrayRef>> {
    let mut positions: Vec<u32> = (0..order.len() as u32).collect();
    positions.sort_by_key(|&p| order[p as usize]);
    take_rows(arrays, &UInt32Array::from(positions))
}

/// `arrays` reordered by the row-format order of their first `key_columns` columns.
pub(crate) fn sort_rows_by_key(arrays: &[ArrayRef], key_columns: usize) -> Result<Vec<ArrayRef>> {
    if key_columns == 0 || arrays.first().is_none_or(|a| a.len() < 2) {
        return Ok(arrays.to_vec());
    }
    let keys = key_rows(&arrays[..key_columns])?;
    let mut positions: Vec<u32> = (0..keys.num_rows() as u32).collect();
    positions.sort_by(|&a, &b| keys.row(a as usize).cmp(&keys.row(b as usize)));
    take_rows(arrays, &UInt32Array::from(positions))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn the_hash_is_fixed_forever() {
        // Checkpointed state depends on these values: they must never change.
        assert_eq!(stable_hash(b""), 0);
        // Computed independently (a Python transcription of the function).
        assert_eq!(stable_hash(b"flumen state"), 0xcd60_32bf_d3e1_7db5);
        assert_eq!(partition_of(b"", 2), 0);
        let keys =
            key_rows(&[Arc::new(StringArray::from(vec!["a", "b", "c", "d"])) as ArrayRef]).unwrap();
        let routed: Vec<usize> = keys.iter().map(|k| partition_of(k.data(), 4)).collect();
        assert_eq!(routed, vec![3, 2, 2, 3]);
    }

    #[test]
    fn routing_keeps_row_order_and_spreads_keys() {
        let values: Vec<i64> = (0..10_000).collect();
        let keys = key_rows(&[Arc::new(Int64Array::from(values)) as ArrayRef]).unwrap();
        let routed = route(&keys, 2);
        assert_eq!(routed[0].len() + routed[1].len(), 10_000);
        for part in &routed {
            assert!(part.windows(2).all(|w| w[0] < w[1]));
            assert!(part.len() > 4_500, "{} of 10000", part.len());
        }
        // The same key always goes to the same partition.
        let again = route(&keys, 2);
        assert_eq!(routed, again);
    }

    #[test]
    fn partitions_run_in_parallel_and_report_in_order() {
        let mut states = vec![0usize; 3];
        let results = for_each_partition(&mut states, vec![1, 2, 3], PARALLEL_MIN_WORK, |s, i| {
            *s += i;
            Ok(i * 10)
        })
        .unwrap();
        assert_eq!(results, vec![10, 20, 30]);
        assert_eq!(states, vec![1, 2, 3]);
    }
}
