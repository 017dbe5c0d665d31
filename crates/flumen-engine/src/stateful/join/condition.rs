//! What a stream-stream join's condition says about time: how long each side's rows can still
//! find a match (Spark's `StreamingJoinHelper`).
//!
//! A side's rows can be dropped from state once no future row of the other side can match
//! them. Future rows of a side are newer than the watermark (older ones are dropped as late),
//! so a bound on the difference of the two event times tells when that is: for
//! `r.t BETWEEN l.t AND l.t + 1 hour`, `r.t - l.t` lies in `[0, 1 hour]`, a left row can go once
//! `l.t + 1 hour < watermark` and a right row once `r.t < watermark`. An equality of the two
//! sides' event times (in the join keys or the condition) bounds the difference to `[0, 0]`; an
//! equality of event-time windows lets a row go once its window has ended before the
//! watermark.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::common::{JoinSide, ScalarValue};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column, Literal, TryCastExpr};
use datafusion::physical_expr::split_conjunction;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::physical_plan::joins::utils::{JoinFilter, JoinOnRef};

/// Where a side's rows carry their event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventTime {
    /// A timestamp column (the watermark's column).
    Column(usize),
    /// The `end` of an event-time window struct column (`window(...)` over the watermark's
    /// column): a row is as old as its window's end.
    WindowEnd(usize),
}

impl EventTime {
    /// The column holding the time.
    pub fn index(&self) -> usize {
        match self {
            Self::Column(i) | Self::WindowEnd(i) => *i,
        }
    }
}

/// Bounds on `right time - left time` (µs) that every joined pair satisfies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TimeBounds {
    /// Lowest difference (`None`: unbounded).
    pub lower_us: Option<i64>,
    /// Highest difference (`None`: unbounded).
    pub upper_us: Option<i64>,
}

impl TimeBounds {
    fn at_least(&mut self, us: i64) {
        self.lower_us = Some(self.lower_us.map_or(us, |l| l.max(us)));
    }

    fn at_most(&mut self, us: i64) {
        self.upper_us = Some(self.upper_us.map_or(us, |u| u.min(us)));
    }
}

/// How long each side's rows stay in state: where the row's event time is, and the offset
/// from the watermark (µs) below which the row goes (`None`: kept forever).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StateWatermarks {
    pub left: Option<(EventTime, i64)>,
    pub right: Option<(EventTime, i64)>,
}

/// The state watermarks of a join whose sides declare watermarks leaving event time in `left`
/// and `right` (`None`: no watermark on that side, so its rows are never late and the other
/// side's rows never expire), joined on the equality keys `on` and the residual `filter` over
/// `schemas` (left, right).
/// `windows` are the sides' event-time window columns (windows over the watermark's column),
/// if any.
pub(crate) fn state_watermarks(
    left: Option<EventTime>,
    right: Option<EventTime>,
    windows: (Option<usize>, Option<usize>),
    on: JoinOnRef,
    filter: Option<&JoinFilter>,
    schemas: (&Schema, &Schema),
) -> StateWatermarks {
    // Equal windows: a row expires once its window ends before the watermark (whether or not
    // the side kept the time column too).
    if let (Some(_), Some(_), (Some(l), Some(r))) = (left, right, windows)
        && on.iter().any(|(a, b)| {
            column_index(a, schemas.0) == Some(l) && column_index(b, schemas.1) == Some(r)
        })
    {
        return StateWatermarks {
            left: Some((EventTime::WindowEnd(l), 0)),
            right: Some((EventTime::WindowEnd(r), 0)),
        };
    }
    // The time columns a range may compare: a side's watermark column, or, on a side without
    // a watermark, any of its timestamp columns.
    let candidates = |time: Option<EventTime>, schema: &Schema| -> Vec<usize> {
        match time {
            Some(EventTime::Column(i)) => vec![i],
            Some(EventTime::WindowEnd(_)) => Vec::new(),
            None => (0..schema.fields().len())
                .filter(|&i| matches!(schema.field(i).data_type(), DataType::Timestamp(_, _)))
                .collect(),
        }
    };
    let (left_columns, right_columns) = (candidates(left, schemas.0), candidates(right, schemas.1));
    // Bounds found per pair of columns compared; the first pair with bounds wins.
    let mut pairs: Vec<((usize, usize), TimeBounds)> = Vec::new();
    for (a, b) in on {
        if let (Some(l), Some(r)) = (column_index(a, schemas.0), column_index(b, schemas.1))
            && left_columns.contains(&l)
            && right_columns.contains(&r)
        {
            let b = bound(&mut pairs, (l, r));
            b.at_least(0);
            b.at_most(0);
        }
    }
    if let Some(filter) = filter {
        for conjunct in split_conjunction(filter.expression()) {
            add_comparison(
                conjunct,
                filter,
                (&left_columns, &right_columns),
                &mut pairs,
            );
        }
    }
    let mut out = StateWatermarks::default();
    for ((l, r), bounds) in pairs {
        // A left row matches right rows up to l + upper, and future right rows are newer than
        // the watermark (when the right side declares one): it expires once l + upper <
        // watermark.
        if out.left.is_none()
            && right.is_some()
            && let Some(upper) = bounds.upper_us
        {
            // An upper bound of i64::MIN has no negation: no bound.
            if let Some(offset) = upper.checked_neg() {
                out.left = Some((EventTime::Column(l), offset));
            }
        }
        // A right row matches left rows from r - upper to r - lower: it expires once
        // r - lower < watermark (when the left side declares one).
        if out.right.is_none()
            && left.is_some()
            && let Some(lower) = bounds.lower_us
        {
            out.right = Some((EventTime::Column(r), lower));
        }
    }
    out
}

/// Folds `expr` into `bounds` when it compares the two event times (each plus or minus a
/// constant interval).
fn add_comparison(
    expr: &Arc<dyn PhysicalExpr>,
    filter: &JoinFilter,
    times: (&[usize], &[usize]),
    pairs: &mut Vec<((usize, usize), TimeBounds)>,
) {
    let Some(binary) = expr.as_ref().downcast_ref::<BinaryExpr>() else {
        return;
    };
    let op = *binary.op();
    if !matches!(
        op,
        Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq | Operator::Eq
    ) {
        return;
    }
    let (Some((side_a, col_a, off_a)), Some((side_b, col_b, off_b))) = (
        time_term(binary.left(), filter, times),
        time_term(binary.right(), filter, times),
    ) else {
        return;
    };
    // a + off_a  op  b + off_b, as `right - left  op'  c`.
    let (op, c, pair) = match (side_a, side_b) {
        // r + oa op l + ob  <=>  r - l op ob - oa
        (JoinSide::Right, JoinSide::Left) => (op, off_b.saturating_sub(off_a), (col_b, col_a)),
        // l + oa op r + ob  <=>  r - l op' oa - ob (op mirrored)
        (JoinSide::Left, JoinSide::Right) => {
            (mirror(op), off_a.saturating_sub(off_b), (col_a, col_b))
        }
        _ => return,
    };
    let bounds = bound(pairs, pair);
    match op {
        Operator::Gt | Operator::GtEq => bounds.at_least(c),
        Operator::Lt | Operator::LtEq => bounds.at_most(c),
        Operator::Eq => {
            bounds.at_least(c);
            bounds.at_most(c);
        }
        _ => {}
    }
}

fn mirror(op: Operator) -> Operator {
    match op {
        Operator::Lt => Operator::Gt,
        Operator::LtEq => Operator::GtEq,
        Operator::Gt => Operator::Lt,
        Operator::GtEq => Operator::LtEq,
        other => other,
    }
}

/// The bounds found for the pair of time columns `pair` (left, right).
fn bound(pairs: &mut Vec<((usize, usize), TimeBounds)>, pair: (usize, usize)) -> &mut TimeBounds {
    let at = match pairs.iter().position(|(p, _)| *p == pair) {
        Some(at) => at,
        None => {
            pairs.push((pair, TimeBounds::default()));
            pairs.len() - 1
        }
    };
    &mut pairs[at].1
}

/// `time`, `time + interval` or `time - interval` of one side's event-time column: the side,
/// the column and the offset (µs).
fn time_term(
    expr: &Arc<dyn PhysicalExpr>,
    filter: &JoinFilter,
    times: (&[usize], &[usize]),
) -> Option<(JoinSide, usize, i64)> {
    if let Some(i) = column_index(expr, filter.schema()) {
        let column = filter.column_indices().get(i)?;
        return match column.side {
            JoinSide::Left if times.0.contains(&column.index) => {
                Some((JoinSide::Left, column.index, 0))
            }
            JoinSide::Right if times.1.contains(&column.index) => {
                Some((JoinSide::Right, column.index, 0))
            }
            _ => None,
        };
    }
    let binary = expr.as_ref().downcast_ref::<BinaryExpr>()?;
    match binary.op() {
        Operator::Plus => {
            if let Some(us) = interval_us(binary.right()) {
                let (side, col, off) = time_term(binary.left(), filter, times)?;
                Some((side, col, off.checked_add(us)?))
            } else {
                let us = interval_us(binary.left())?;
                let (side, col, off) = time_term(binary.right(), filter, times)?;
                Some((side, col, off.checked_add(us)?))
            }
        }
        Operator::Minus => {
            let us = interval_us(binary.right())?;
            let (side, col, off) = time_term(binary.left(), filter, times)?;
            Some((side, col, off.checked_sub(us)?))
        }
        _ => None,
    }
}

/// The index of the column of `schema` that `expr` reads, looking through casts that keep
/// the instant (between timestamps with the same time zone, to an equal or finer unit): a
/// cast to a date or a coarser unit, or one that moves the instant, bounds nothing.
fn column_index(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<usize> {
    let any = expr.as_ref();
    if let Some(c) = any.downcast_ref::<Column>() {
        return Some(c.index());
    }
    let (inner, to) = if let Some(c) = any.downcast_ref::<CastExpr>() {
        (c.expr(), c.cast_type())
    } else if let Some(c) = any.downcast_ref::<TryCastExpr>() {
        (c.expr(), c.cast_type())
    } else {
        return None;
    };
    let from = inner.data_type(schema).ok()?;
    keeps_instant(&from, to).then(|| column_index(inner, schema))?
}

/// Whether casting a `from` value to `to` keeps the instant it stands for.
fn keeps_instant(from: &DataType, to: &DataType) -> bool {
    let rank = |unit: &TimeUnit| match unit {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 1,
        TimeUnit::Microsecond => 2,
        TimeUnit::Nanosecond => 3,
    };
    match (from, to) {
        (DataType::Timestamp(fu, ftz), DataType::Timestamp(tu, ttz)) => {
            rank(tu) >= rank(fu) && ftz.is_some() == ttz.is_some()
        }
        _ => false,
    }
}

/// A constant interval of fixed length, in µs (months have none).
fn interval_us(expr: &Arc<dyn PhysicalExpr>) -> Option<i64> {
    let literal = expr.as_ref().downcast_ref::<Literal>()?;
    match literal.value() {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => i64::from(v.days)
            .checked_mul(86_400_000_000)?
            .checked_add(v.nanoseconds / 1000),
        ScalarValue::IntervalDayTime(Some(v)) => i64::from(v.days)
            .checked_mul(86_400_000_000)?
            .checked_add(i64::from(v.milliseconds) * 1000),
        ScalarValue::DurationSecond(Some(v)) => v.checked_mul(1_000_000),
        ScalarValue::DurationMillisecond(Some(v)) => v.checked_mul(1000),
        ScalarValue::DurationMicrosecond(Some(v)) => Some(*v),
        ScalarValue::DurationNanosecond(Some(v)) => Some(v / 1000),
        _ => None,
    }
}

/// Where `schema` (one side of a join) keeps the event time of the watermark on `column`:
/// the column itself, or, when a projection replaced it by an event-time window over it, the
/// end of that window struct (`window`: its index, if the side has one).
pub(crate) fn event_time_of(
    schema: &Schema,
    column: &str,
    window: Option<usize>,
) -> Option<EventTime> {
    if let Ok(i) = schema.index_of(column) {
        return matches!(schema.field(i).data_type(), DataType::Timestamp(_, _))
            .then_some(EventTime::Column(i));
    }
    window.map(EventTime::WindowEnd)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::IntervalMonthDayNano;
    use datafusion::physical_plan::joins::utils::ColumnIndex;

    use super::*;
    use datafusion::arrow::datatypes::Field;

    const HOUR_US: i64 = 3_600_000_000;

    fn side(id: &str, time: &str) -> Schema {
        Schema::new(vec![
            Field::new(id, DataType::Int64, false),
            Field::new(
                time,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ])
    }

    fn col(name: &str, index: usize) -> Arc<dyn PhysicalExpr> {
        Arc::new(Column::new(name, index))
    }

    fn hours(h: i64) -> Arc<dyn PhysicalExpr> {
        Arc::new(Literal::new(ScalarValue::IntervalMonthDayNano(Some(
            IntervalMonthDayNano::new(0, 0, h * HOUR_US * 1000),
        ))))
    }

    fn op(
        l: Arc<dyn PhysicalExpr>,
        o: Operator,
        r: Arc<dyn PhysicalExpr>,
    ) -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(l, o, r))
    }

    /// A filter over the left time (column 0 of the filter) and the right time (column 1).
    fn filter(expression: Arc<dyn PhysicalExpr>) -> JoinFilter {
        let t = DataType::Timestamp(TimeUnit::Millisecond, None);
        JoinFilter::new(
            expression,
            vec![
                ColumnIndex {
                    index: 1,
                    side: JoinSide::Left,
                },
                ColumnIndex {
                    index: 1,
                    side: JoinSide::Right,
                },
            ],
            Arc::new(Schema::new(vec![
                Field::new("lt", t.clone(), false),
                Field::new("rt", t, false),
            ])),
        )
    }

    fn watermarks(expression: Arc<dyn PhysicalExpr>, both: bool) -> StateWatermarks {
        let (l, r) = (side("l", "lt"), side("r", "rt"));
        let times = if both {
            (Some(EventTime::Column(1)), Some(EventTime::Column(1)))
        } else {
            (None, Some(EventTime::Column(1)))
        };
        state_watermarks(
            times.0,
            times.1,
            (None, None),
            &[],
            Some(&filter(expression)),
            (&l, &r),
        )
    }

    #[test]
    fn a_range_bounds_both_sides_whichever_way_it_is_written() {
        let (lt, rt) = (col("lt", 0), col("rt", 1));
        // rt >= lt AND rt <= lt + 1 hour
        let guide = op(
            op(Arc::clone(&rt), Operator::GtEq, Arc::clone(&lt)),
            Operator::And,
            op(
                Arc::clone(&rt),
                Operator::LtEq,
                op(Arc::clone(&lt), Operator::Plus, hours(1)),
            ),
        );
        let expected = StateWatermarks {
            left: Some((EventTime::Column(1), -HOUR_US)),
            right: Some((EventTime::Column(1), 0)),
        };
        assert_eq!(watermarks(guide, true), expected);
        // lt <= rt AND lt >= rt - 1 hour: the same range.
        let mirrored = op(
            op(Arc::clone(&lt), Operator::LtEq, Arc::clone(&rt)),
            Operator::And,
            op(
                Arc::clone(&lt),
                Operator::GtEq,
                op(Arc::clone(&rt), Operator::Minus, hours(1)),
            ),
        );
        assert_eq!(watermarks(mirrored, true), expected);
        // Intervals on both sides: rt + 1 hour > lt + 3 hours, i.e. rt - lt > 2 hours.
        let shifted = op(
            op(Arc::clone(&rt), Operator::Plus, hours(1)),
            Operator::Gt,
            op(Arc::clone(&lt), Operator::Plus, hours(3)),
        );
        assert_eq!(
            watermarks(shifted, true),
            StateWatermarks {
                left: None,
                right: Some((EventTime::Column(1), 2 * HOUR_US)),
            }
        );
    }

    #[test]
    fn a_side_without_watermark_keeps_the_other_sides_rows() {
        let (lt, rt) = (col("lt", 0), col("rt", 1));
        let range = op(
            op(Arc::clone(&rt), Operator::GtEq, Arc::clone(&lt)),
            Operator::And,
            op(rt, Operator::LtEq, op(lt, Operator::Plus, hours(1))),
        );
        // Only the right side declares a watermark: left rows (found by the range's column)
        // expire, right rows never (future left rows are not bounded).
        assert_eq!(
            watermarks(range, false),
            StateWatermarks {
                left: Some((EventTime::Column(1), -HOUR_US)),
                right: None,
            }
        );
    }

    #[test]
    fn a_cast_that_moves_or_coarsens_the_instant_bounds_nothing() {
        let cast = |expr: Arc<dyn PhysicalExpr>, to: DataType| -> Arc<dyn PhysicalExpr> {
            Arc::new(CastExpr::new(expr, to, None))
        };
        let range = |lt: Arc<dyn PhysicalExpr>, rt: Arc<dyn PhysicalExpr>| {
            op(
                op(Arc::clone(&rt), Operator::GtEq, Arc::clone(&lt)),
                Operator::And,
                op(rt, Operator::LtEq, op(lt, Operator::Plus, hours(1))),
            )
        };
        let guide = StateWatermarks {
            left: Some((EventTime::Column(1), -HOUR_US)),
            right: Some((EventTime::Column(1), 0)),
        };
        // To a finer unit: the same instants, the same bounds.
        let micros = DataType::Timestamp(TimeUnit::Microsecond, None);
        let finer = range(
            cast(col("lt", 0), micros.clone()),
            cast(col("rt", 1), micros),
        );
        assert_eq!(watermarks(finer, true), guide);
        // To dates, to seconds, or from no zone to a zone (the wall time read in that zone):
        // the range no longer bounds the event times.
        for to in [
            DataType::Date32,
            DataType::Timestamp(TimeUnit::Second, None),
            DataType::Timestamp(TimeUnit::Millisecond, Some("Europe/Paris".into())),
        ] {
            let lossy = range(
                cast(col("lt", 0), to.clone()),
                cast(col("rt", 1), to.clone()),
            );
            assert_eq!(watermarks(lossy, true), StateWatermarks::default(), "{to}");
        }
    }
}
