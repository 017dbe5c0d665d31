//! Watermark propagation between the stateful operators of one query (Spark 3.4+,
//! SPARK-42376).
//!
//! The query has one watermark (the minimum over its declared ones). An operator that reads a
//! stream directly gets it as its input watermark; an operator that reads another operator's
//! output gets that operator's *output* watermark instead, which may be earlier: a
//! stream-stream join emits rows as old as its state watermarks (a click an hour older than
//! the watermark still joins an impression within the hour). Each operator's input watermark
//! is the minimum over what its inputs carry; inputs without a watermark do not count, and an
//! operator none of whose inputs has one runs with 0, as in Spark.
//!
//! A query's watermark of 0 (nothing seen yet) gives every operator 0 without propagating,
//! as Spark's `PropagateWatermarkSimulator` does.

use super::OperatorHandle;

/// Where an operator's input rows come from, as far as watermarks go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatermarkOrigin {
    /// A `with_watermark` node: the query's watermark.
    Declared,
    /// The output of the query's `n`-th stateful operator.
    Operator(usize),
}

/// Which origins feed each stateful operator of a query, in the query's operator order (an
/// operator's inputs come after it: the order is the plan's pre-order).
#[derive(Debug, Clone, Default)]
pub(crate) struct WatermarkPropagation {
    inputs: Vec<Vec<WatermarkOrigin>>,
}

impl WatermarkPropagation {
    /// Registers the next operator (its index is the number registered before it); its
    /// inputs are set with [`Self::set_inputs`] once the plan below it is walked.
    pub fn add_operator(&mut self) -> usize {
        self.inputs.push(Vec::new());
        self.inputs.len() - 1
    }

    /// Sets what feeds operator `operator`.
    pub fn set_inputs(&mut self, operator: usize, inputs: Vec<WatermarkOrigin>) {
        if let Some(slot) = self.inputs.get_mut(operator) {
            *slot = inputs;
        }
    }

    /// Whether operator `operator` reads the output of another stateful operator.
    pub fn reads_an_operator(&self, operator: usize) -> bool {
        self.inputs.get(operator).is_some_and(|inputs| {
            inputs
                .iter()
                .any(|o| matches!(o, WatermarkOrigin::Operator(_)))
        })
    }

    /// Each operator's input watermark (ms) when the query's watermark is `query_ms`.
    pub fn input_watermarks(&self, operators: &[OperatorHandle], query_ms: i64) -> Vec<i64> {
        let n = self.inputs.len();
        if query_ms == 0 || operators.len() != n {
            return vec![query_ms.max(0); operators.len()];
        }
        let mut input: Vec<Option<i64>> = vec![None; n];
        let mut output: Vec<Option<i64>> = vec![None; n];
        // Inputs come after their reader, so walking backwards sees them first.
        for i in (0..n).rev() {
            input[i] = self.inputs[i]
                .iter()
                .filter_map(|origin| match *origin {
                    WatermarkOrigin::Declared => Some(query_ms),
                    WatermarkOrigin::Operator(j) if j > i => output[j],
                    WatermarkOrigin::Operator(_) => None,
                })
                .min();
            output[i] = input[i].and_then(|w| operators[i].output_watermark(w));
        }
        input.into_iter().map(|w| w.unwrap_or(0).max(0)).collect()
    }
}
