//! Grouping for session windows: each batch row is a session of its own gap, merged per key
//! (all grouping keys but the window) with the overlapping sessions stored for that key; a row
//! that bridges two stored sessions merges them into one.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int8Array, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::row::{RowConverter, Rows, SortField};

use super::{AggregateState, BatchGroups, Core, StoredGroup};
use crate::error::Result;
use crate::stateful::windows::{WindowKind, event_time_micros, window_structs};

#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) start: i64,
    pub(super) end: i64,
    /// The session's full key in the store's row format (empty until stored).
    pub(super) key: Box<[u8]>,
}

/// A stored session or a batch row, as an interval to merge.
struct Interval {
    start: i64,
    end: i64,
    /// The batch row (`None` for a stored session).
    row: Option<usize>,
    stored: Option<Session>,
}

/// Overlapping intervals merged into one session.
struct Merged {
    start: i64,
    end: i64,
    rows: Vec<usize>,
    stored: Vec<Session>,
}

impl Core {
    /// Session windows: merges the batch's rows with the stored sessions of their key.
    pub(super) fn assign_sessions(
        &self,
        state: &mut AggregateState,
        keys: &[ArrayRef],
        wi: usize,
    ) -> Result<BatchGroups> {
        let rows = keys[0].len();
        let others = without(keys, wi);
        let other_rows = self.other_key_rows(&others, rows)?;
        let window = keys[wi].as_struct();
        let starts = event_time_micros(window.column(0))?;
        let ends = event_time_micros(window.column(1))?;

        let mut by_key: Vec<(Box<[u8]>, Vec<usize>)> = Vec::new();
        let mut position: HashMap<Box<[u8]>, usize> = HashMap::new();
        for row in 0..rows {
            let key: Box<[u8]> = other_rows.row(row).as_ref().into();
            let p = *position.entry(key.clone()).or_insert_with(|| {
                by_key.push((key, Vec::new()));
                by_key.len() - 1
            });
            by_key[p].1.push(row);
        }

        let mut group_ids = vec![0usize; rows];
        let mut representative: Vec<u32> = Vec::new();
        let mut group_starts = Vec::new();
        let mut group_ends = Vec::new();
        let mut merge_from = Vec::new();
        let mut replaced = Vec::new();
        for (key, key_rows) in by_key {
            let stored = state.sessions.remove(&key).unwrap_or_default();
            // Intervals: stored sessions first, then rows, sorted by start.
            let mut items: Vec<Interval> = stored
                .into_iter()
                .map(|s| Interval {
                    start: s.start,
                    end: s.end,
                    row: None,
                    stored: Some(s),
                })
                .chain(key_rows.iter().map(|&r| Interval {
                    start: starts.value(r),
                    end: ends.value(r),
                    row: Some(r),
                    stored: None,
                }))
                .collect();
            items.sort_by_key(|i| (i.start, i.end, i.row.is_some()));
            let mut merged: Vec<Merged> = Vec::new();
            for item in items {
                match merged.last_mut() {
                    Some(last) if item.start <= last.end => {
                        last.end = last.end.max(item.end);
                        last.rows.extend(item.row);
                        last.stored.extend(item.stored);
                    }
                    _ => merged.push(Merged {
                        start: item.start,
                        end: item.end,
                        rows: item.row.into_iter().collect(),
                        stored: item.stored.into_iter().collect(),
                    }),
                }
            }
            let mut kept = Vec::new();
            for session in merged {
                if session.rows.is_empty() {
                    // Untouched by this batch.
                    kept.extend(session.stored);
                    continue;
                }
                let group = representative.len();
                representative.push(session.rows[0] as u32);
                group_starts.push(session.start);
                group_ends.push(session.end);
                for r in session.rows {
                    group_ids[r] = group;
                }
                for old in session.stored {
                    if let Some(loc) = state.op.store.get(&old.key) {
                        merge_from.push(StoredGroup { loc, group });
                    }
                    replaced.push(old.key);
                }
                kept.push(Session {
                    start: session.start,
                    end: session.end,
                    key: Box::default(),
                });
            }
            state.sessions.insert(key, kept);
        }
        let representative = UInt32Array::from(representative);
        let mut group_keys: Vec<ArrayRef> = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            group_keys.push(if i == wi {
                window_structs(
                    self.key_schema.field(i).data_type(),
                    &group_starts,
                    &group_ends,
                    None,
                )?
            } else {
                take(k, &representative, None)?
            });
        }
        // Fill in the stored keys of the new sessions.
        let full_rows = state.op.store.key_rows(&group_keys)?;
        let others = without(&group_keys, wi);
        let other_rows = self.other_key_rows(&others, group_starts.len())?;
        for g in 0..group_starts.len() {
            if let Some(list) = state.sessions.get_mut(other_rows.row(g).as_ref())
                && let Some(s) = list.iter_mut().find(|s| {
                    s.key.is_empty() && s.start == group_starts[g] && s.end == group_ends[g]
                })
            {
                s.key = full_rows.row(g).as_ref().into();
            }
        }
        Ok(BatchGroups {
            group_ids,
            keys: group_keys,
            key_rows: full_rows,
            merge_from,
            replaced,
        })
    }

    pub(super) fn other_key_rows(&self, others: &[ArrayRef], rows: usize) -> Result<Rows> {
        let columns: Vec<ArrayRef> = if others.is_empty() {
            vec![Arc::new(Int8Array::from(vec![0i8; rows]))]
        } else {
            others.to_vec()
        };
        let converter = RowConverter::new(
            columns
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect(),
        )?;
        Ok(converter.convert_columns(&columns)?)
    }

    /// Drops evicted sessions from the per-key session lists.
    pub(super) fn forget_sessions(
        &self,
        state: &mut AggregateState,
        evicted: &[ArrayRef],
    ) -> Result<()> {
        let Some((wi, _)) = &self.window else {
            return Ok(());
        };
        let rows = state.op.store.key_rows(evicted)?;
        let others = without(evicted, *wi);
        let other_rows = self.other_key_rows(&others, rows.num_rows())?;
        for r in 0..rows.num_rows() {
            let other = other_rows.row(r);
            if let Some(list) = state.sessions.get_mut(other.as_ref()) {
                list.retain(|s| s.key.as_ref() != rows.row(r).as_ref());
                if list.is_empty() {
                    state.sessions.remove(other.as_ref());
                }
            }
        }
        Ok(())
    }

    /// Rebuilds the session lists from the store (after a restore).
    pub(super) fn rebuild_sessions(&self, state: &mut AggregateState) -> Result<()> {
        state.sessions.clear();
        let Some((wi, w)) = &self.window else {
            return Ok(());
        };
        if !matches!(w.kind, WindowKind::Session(_)) {
            return Ok(());
        }
        let (keys, _) = state.op.store.all_sorted()?;
        let rows = state.op.store.key_rows(&keys)?;
        let others = without(&keys, *wi);
        let other_rows = self.other_key_rows(&others, rows.num_rows())?;
        let window = keys[*wi].as_struct();
        let starts = event_time_micros(window.column(0))?;
        let ends = event_time_micros(window.column(1))?;
        for r in 0..rows.num_rows() {
            state
                .sessions
                .entry(other_rows.row(r).as_ref().into())
                .or_default()
                .push(Session {
                    start: starts.value(r),
                    end: ends.value(r),
                    key: rows.row(r).as_ref().into(),
                });
        }
        Ok(())
    }
}

/// `keys` without column `skip` (the window, when merging sessions per key).
pub(super) fn without(keys: &[ArrayRef], skip: usize) -> Vec<ArrayRef> {
    keys.iter()
        .enumerate()
        .filter(|(i, _)| *i != skip)
        .map(|(_, k)| Arc::clone(k))
        .collect()
}
