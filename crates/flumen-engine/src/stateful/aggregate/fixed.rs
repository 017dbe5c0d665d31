//! Grouping for plain keys, tumbling and sliding windows: DataFusion's vectorised
//! `GroupValues`, kept across batches so its tables are allocated once; time windows are
//! grouped by their start.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::logical_expr::EmitTo;
use datafusion::physical_plan::aggregates::group_values::new_group_values;
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::{AggregateState, BatchGroups, Core, StoredGroup};
use crate::error::Result;

impl Core {
    /// Groups the batch's rows by `keys`, and finds the stored state of each group.
    pub(super) fn group_fixed(
        &self,
        state: &mut AggregateState,
        keys: Vec<ArrayRef>,
    ) -> Result<BatchGroups> {
        let rows = keys[0].len();

        // DataFusion's own grouping (vectorised per column type).
        let fields: Vec<Field> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Field::new(format!("k{i}"), k.data_type().clone(), true))
            .collect();
        // Kept across batches so its tables are allocated once.
        let grouping = match &mut state.grouping {
            Some(g) => g,
            None => state.grouping.insert(new_group_values(
                Arc::new(Schema::new(fields)),
                &GroupOrdering::None,
            )?),
        };
        let mut ids = Vec::with_capacity(rows);
        grouping.intern(&keys, &mut ids)?;
        let emitted = grouping.emit(EmitTo::All)?;
        grouping.clear_shrink(rows);
        let group_keys = self.window_keys(emitted)?;
        let group_rows = state.op.store.key_rows(&group_keys)?;
        let mut merge_from = Vec::new();
        for group in 0..group_rows.num_rows() {
            if let Some(loc) = state.op.store.get(group_rows.row(group).as_ref()) {
                merge_from.push(StoredGroup { loc, group });
            }
        }
        Ok(BatchGroups {
            group_ids: ids,
            keys: group_keys,
            key_rows: group_rows,
            merge_from,
            replaced: Vec::new(),
        })
    }
}
