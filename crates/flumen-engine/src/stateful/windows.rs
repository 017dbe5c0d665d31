//! Event-time windows: `window` (tumbling and sliding) and `session_window`, as scalar functions
//! whose result is Spark's `struct<start: timestamp, end: timestamp>`, plus the window
//! assignment the streaming aggregation uses (a sliding window puts a row in several windows).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StructArray, TimestampMicrosecondArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, TimeUnit, TimestampMicrosecondType};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_plan::PhysicalExpr;

use crate::options::parse_interval;

/// The name of the column a window expression produces (Spark's).
pub const WINDOW_COLUMN: &str = "window";
/// The name of the column a session window expression produces (Spark's).
pub const SESSION_WINDOW_COLUMN: &str = "session_window";

/// Sizes of a time window, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowSpec {
    /// Length of each window.
    pub duration_us: i64,
    /// Distance between window starts (equal to the duration for tumbling windows).
    pub slide_us: i64,
    /// Offset of window starts from the epoch.
    pub start_us: i64,
}

impl WindowSpec {
    /// Parses Spark's duration strings (`"10 minutes"`, `"5 seconds"`, `"250 milliseconds"`).
    pub fn parse(duration: &str, slide: Option<&str>, start: Option<&str>) -> DFResult<Self> {
        let duration_us = micros("windowDuration", duration)?;
        let slide_us = match slide {
            Some(s) => micros("slideDuration", s)?,
            None => duration_us,
        };
        let start_us = match start {
            Some(s) => interval_micros("startTime", s)?,
            None => 0,
        };
        if duration_us <= 0 {
            return datafusion::common::plan_err!(
                "The window duration ({duration}) must be greater than 0."
            );
        }
        if slide_us <= 0 {
            return datafusion::common::plan_err!(
                "The slide duration ({slide_us} µs) must be greater than 0."
            );
        }
        if slide_us > duration_us {
            return datafusion::common::plan_err!(
                "The slide duration ({slide_us} µs) must be less than or equal to the windowDuration ({duration_us} µs)."
            );
        }
        if start_us.abs() >= slide_us {
            return datafusion::common::plan_err!(
                "The absolute value of start time ({start_us} µs) must be less than the slideDuration ({slide_us} µs)."
            );
        }
        Ok(Self {
            duration_us,
            slide_us,
            start_us,
        })
    }

    /// Whether each row falls in exactly one window.
    pub fn is_tumbling(&self) -> bool {
        self.slide_us == self.duration_us
    }

    /// The start of the latest window containing `ts`.
    fn last_start(&self, ts: i64) -> i64 {
        (ts - self.start_us).div_euclid(self.slide_us) * self.slide_us + self.start_us
    }

    /// Calls `emit(start)` for every window containing `ts`, earliest first.
    pub fn for_each_window(&self, ts: i64, mut emit: impl FnMut(i64)) {
        let last = self.last_start(ts);
        let count = (self.duration_us + self.slide_us - 1) / self.slide_us;
        for k in (0..count).rev() {
            let start = last - k * self.slide_us;
            if start + self.duration_us > ts {
                emit(start);
            }
        }
    }
}

fn interval_micros(what: &str, text: &str) -> DFResult<i64> {
    let lower = text.to_ascii_lowercase();
    if lower.contains("month") || lower.contains("year") {
        return datafusion::common::plan_err!(
            "Intervals greater than a month are not supported ({what} '{text}'); use weeks, days, hours, minutes, seconds or milliseconds"
        );
    }
    let negative = text.trim_start().starts_with('-');
    let magnitude = parse_interval(text.trim_start().trim_start_matches('-'))
        .map_err(|e| datafusion::error::DataFusionError::Plan(format!("{what}: {e}")))?;
    let us = i64::try_from(magnitude.as_micros()).unwrap_or(i64::MAX);
    Ok(if negative { -us } else { us })
}

fn micros(what: &str, text: &str) -> DFResult<i64> {
    interval_micros(what, text)
}

/// The window struct type for an event-time column of type `time` (a timestamp, a date, or
/// an earlier window).
pub fn window_type(time: &DataType) -> DataType {
    let ts = match time {
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        DataType::Struct(fields) if is_window_type(time) => match fields[1].data_type() {
            DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
            _ => DataType::Timestamp(TimeUnit::Microsecond, None),
        },
        _ => DataType::Timestamp(TimeUnit::Microsecond, None),
    };
    DataType::Struct(Fields::from(vec![
        Field::new("start", ts.clone(), true),
        Field::new("end", ts, true),
    ]))
}

/// Whether `data_type` is a window struct (`struct<start: timestamp, end: timestamp>`).
pub fn is_window_type(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Struct(fields)
        if fields.len() == 2
            && fields[0].name() == "start"
            && fields[1].name() == "end"
            && fields.iter().all(|f| matches!(f.data_type(), DataType::Timestamp(_, _))))
}

/// Event times as microseconds since the epoch (casts any timestamp unit or a date). A window
/// struct's event time is Spark's `window_time`: its end minus one microsecond.
pub fn event_time_micros(array: &ArrayRef) -> DFResult<TimestampMicrosecondArray> {
    if is_window_type(array.data_type()) {
        return window_times(array.as_struct());
    }
    let target = DataType::Timestamp(TimeUnit::Microsecond, None);
    let as_us = match array.data_type() {
        DataType::Timestamp(_, Some(_)) => {
            // Same instants; drop the zone so the cast is a unit change only.
            let unit = match array.data_type() {
                DataType::Timestamp(u, _) => *u,
                _ => TimeUnit::Microsecond,
            };
            let plain = cast(array, &DataType::Timestamp(unit, None))?;
            cast(&plain, &target)?
        }
        DataType::Timestamp(_, None) | DataType::Date32 | DataType::Date64 => cast(array, &target)?,
        other => {
            return datafusion::common::plan_err!(
                "Event time must be defined on a window or a timestamp, but it is of type {other}"
            );
        }
    };
    Ok(as_us.as_primitive::<TimestampMicrosecondType>().clone())
}

/// Instants (µs since the epoch) as `data_type`: the same instants labelled with its time zone
/// (a cast from a zone-less timestamp would read them as local times of the zone).
fn as_timestamp_type(array: TimestampMicrosecondArray, data_type: &DataType) -> DFResult<ArrayRef> {
    Ok(match data_type {
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            Arc::new(array.with_timezone_opt(tz.clone()))
        }
        DataType::Timestamp(_, tz) => {
            let labelled: ArrayRef = Arc::new(array.with_timezone_opt(tz.clone()));
            cast(&labelled, data_type)?
        }
        other => cast(&(Arc::new(array) as ArrayRef), other)?,
    })
}

/// `window_time` of each window: its end minus one microsecond (null for a null window).
fn window_times(windows: &StructArray) -> DFResult<TimestampMicrosecondArray> {
    let ends = event_time_micros(windows.column(1))?;
    let nulls = NullBuffer::union(windows.nulls(), ends.nulls());
    let values: Vec<i64> = ends.values().iter().map(|e| e.saturating_sub(1)).collect();
    Ok(TimestampMicrosecondArray::new(values.into(), nulls))
}

/// Builds window structs of type `data_type` from starts (µs) and a length.
pub fn window_structs(
    data_type: &DataType,
    starts: &[i64],
    ends: &[i64],
    nulls: Option<NullBuffer>,
) -> DFResult<ArrayRef> {
    let DataType::Struct(fields) = data_type else {
        return datafusion::common::internal_err!("window type must be a struct, got {data_type}");
    };
    let column = |values: &[i64], field: &Field| -> DFResult<ArrayRef> {
        let array = TimestampMicrosecondArray::new(values.to_vec().into(), nulls.clone());
        as_timestamp_type(array, field.data_type())
    };
    let start = column(starts, &fields[0])?;
    let end = column(ends, &fields[1])?;
    Ok(Arc::new(StructArray::try_new(
        fields.clone(),
        vec![start, end],
        nulls,
    )?))
}

fn literal_string(value: &ColumnarValue, what: &str) -> DFResult<String> {
    match value {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        ) => Ok(s.clone()),
        _ => datafusion::common::plan_err!(
            "the {what} of a window must be a literal string such as '10 minutes'"
        ),
    }
}

fn coerce_time(arg_types: &[DataType], name: &str, max_args: usize) -> DFResult<Vec<DataType>> {
    if arg_types.len() < 2 || arg_types.len() > max_args {
        return datafusion::common::plan_err!(
            "{name} takes a timestamp column and {} duration strings",
            if max_args == 2 { "one" } else { "one to three" }
        );
    }
    let time = match &arg_types[0] {
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        // An earlier aggregation's window: its window_time is the event time.
        window if is_window_type(window) => window.clone(),
        DataType::Date32 | DataType::Date64 | DataType::Null => {
            DataType::Timestamp(TimeUnit::Microsecond, None)
        }
        other => {
            return datafusion::common::plan_err!(
                "{name} needs a timestamp column as its first argument, got {other}"
            );
        }
    };
    let mut types = vec![time];
    types.extend(std::iter::repeat_n(DataType::Utf8, arg_types.len() - 1));
    Ok(types)
}

/// `window(time, duration[, slide[, start]])`: the time window containing each row.
///
/// As a scalar function it only computes tumbling windows (one per row). Sliding windows put a
/// row in several windows, so they are only valid as a grouping key of a streaming aggregation,
/// where the aggregation expands them.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TimeWindow {
    signature: Signature,
}

impl Default for TimeWindow {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for TimeWindow {
    fn name(&self) -> &str {
        "window"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(window_type(&arg_types[0]))
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        coerce_time(arg_types, "window", 4)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let spec = spec_from_values(&args.args[1..])?;
        if !spec.is_tumbling() {
            return datafusion::common::plan_err!(
                "a sliding window puts each row in several windows, so it can only be a grouping key of a streaming aggregation: group_by([sliding_window(..)])"
            );
        }
        let time = event_time_micros(&args.args[0].to_array(args.number_rows)?)?;
        let starts: Vec<i64> = time.values().iter().map(|&t| spec.last_start(t)).collect();
        let ends: Vec<i64> = starts.iter().map(|s| s + spec.duration_us).collect();
        Ok(ColumnarValue::Array(window_structs(
            args.return_field.data_type(),
            &starts,
            &ends,
            time.nulls().cloned(),
        )?))
    }
}

fn spec_from_values(values: &[ColumnarValue]) -> DFResult<WindowSpec> {
    let duration = literal_string(&values[0], "duration")?;
    let slide = values
        .get(1)
        .map(|v| literal_string(v, "slide"))
        .transpose()?;
    let start = values
        .get(2)
        .map(|v| literal_string(v, "start time"))
        .transpose()?;
    WindowSpec::parse(&duration, slide.as_deref(), start.as_deref())
}

/// `session_window(time, gap)`: a session per key that closes after `gap` without rows.
///
/// As a scalar function it gives each row its own `[time, time + gap)`; the streaming
/// aggregation merges overlapping sessions of a key.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SessionWindow {
    signature: Signature,
}

impl Default for SessionWindow {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for SessionWindow {
    fn name(&self) -> &str {
        "session_window"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(window_type(&arg_types[0]))
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        coerce_time(arg_types, "session_window", 2)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let gap = micros("gapDuration", &literal_string(&args.args[1], "gap")?)?;
        if gap <= 0 {
            return datafusion::common::plan_err!("the session gap must be greater than 0");
        }
        let time = event_time_micros(&args.args[0].to_array(args.number_rows)?)?;
        let starts: Vec<i64> = time.values().to_vec();
        let ends: Vec<i64> = starts.iter().map(|s| s + gap).collect();
        Ok(ColumnarValue::Array(window_structs(
            args.return_field.data_type(),
            &starts,
            &ends,
            time.nulls().cloned(),
        )?))
    }
}

/// `window_time(window)`: the event time of a window an aggregation emitted, its end minus
/// one microsecond (Spark's). Grouping an aggregation's rows by `window(window_time(window),
/// ..)` (or by `window(window, ..)`) chains windows: minute counts into hourly ones.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WindowTime {
    signature: Signature,
}

impl Default for WindowTime {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for WindowTime {
    fn name(&self) -> &str {
        "window_time"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DFResult<DataType> {
        match arg_types {
            [DataType::Struct(fields)] if is_window_type(&arg_types[0]) => {
                Ok(fields[1].data_type().clone())
            }
            _ => datafusion::common::plan_err!(
                "window_time needs a window column (struct<start: timestamp, end: timestamp>), got {arg_types:?}"
            ),
        }
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        match arg_types {
            [t] if is_window_type(t) => Ok(vec![t.clone()]),
            _ => datafusion::common::plan_err!(
                "window_time needs one window column (struct<start: timestamp, end: timestamp>), got {arg_types:?}"
            ),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let windows = args.args[0].to_array(args.number_rows)?;
        let times = window_times(windows.as_struct())?;
        Ok(ColumnarValue::Array(as_timestamp_type(
            times,
            args.return_field.data_type(),
        )?))
    }
}

/// The window argument of a `window_time(window)` call.
pub fn window_time_argument(expr: &Arc<dyn PhysicalExpr>) -> Option<&Arc<dyn PhysicalExpr>> {
    let call = expr.as_ref().downcast_ref::<ScalarFunctionExpr>()?;
    call.fun()
        .inner()
        .as_ref()
        .is::<WindowTime>()
        .then(|| call.args().first())
        .flatten()
}

/// `window_time(window)`: see [`WindowTime`].
pub fn window_time(window: Expr) -> Expr {
    Arc::new(ScalarUDF::new_from_impl(WindowTime::default())).call(vec![window])
}

/// How a grouping expression of a streaming aggregation relates to windows.
#[derive(Debug, Clone)]
pub enum WindowKind {
    /// `window(time, ...)`.
    Time(WindowSpec),
    /// `session_window(time, gap)`, gap in µs.
    Session(i64),
}

/// A window grouping expression found in a physical plan: its kind and its time argument.
#[derive(Debug, Clone)]
pub struct WindowExpr {
    /// Tumbling/sliding or session.
    pub kind: WindowKind,
    /// The event-time argument.
    pub time: Arc<dyn PhysicalExpr>,
}

/// Recognises `window(..)` / `session_window(..)` calls with literal sizes.
pub fn as_window_expr(expr: &Arc<dyn PhysicalExpr>) -> DFResult<Option<WindowExpr>> {
    let Some(call) = expr.as_ref().downcast_ref::<ScalarFunctionExpr>() else {
        return Ok(None);
    };
    let inner = call.fun().inner().as_ref();
    let strings = || -> DFResult<Vec<String>> {
        call.args()[1..]
            .iter()
            .map(|a| {
                let literal = a.as_ref().downcast_ref::<Literal>().map(|l| l.value().clone());
                match literal {
                    Some(
                        ScalarValue::Utf8(Some(s))
                        | ScalarValue::LargeUtf8(Some(s))
                        | ScalarValue::Utf8View(Some(s)),
                    ) => Ok(s),
                    _ => datafusion::common::plan_err!(
                        "window sizes must be literal strings such as '10 minutes' (dynamic session gaps are not supported)"
                    ),
                }
            })
            .collect()
    };
    let kind = if inner.is::<TimeWindow>() {
        let s = strings()?;
        WindowKind::Time(WindowSpec::parse(
            &s[0],
            s.get(1).map(String::as_str),
            s.get(2).map(String::as_str),
        )?)
    } else if inner.is::<SessionWindow>() {
        let gap = micros("gapDuration", &strings()?[0])?;
        if gap <= 0 {
            return datafusion::common::plan_err!("the session gap must be greater than 0");
        }
        WindowKind::Session(gap)
    } else {
        return Ok(None);
    };
    Ok(Some(WindowExpr {
        kind,
        time: Arc::clone(&call.args()[0]),
    }))
}

fn window_call(udf: ScalarUDF, args: Vec<Expr>, alias: &str) -> Expr {
    Arc::new(udf).call(args).alias(alias)
}

/// Tumbling event-time windows of `duration` (`"1 minute"`), aligned to the epoch; the column
/// is named `window`, a struct of `start` (inclusive) and `end` (exclusive).
pub fn window(time: Expr, duration: &str) -> Expr {
    window_call(
        ScalarUDF::new_from_impl(TimeWindow::default()),
        vec![time, datafusion::logical_expr::lit(duration)],
        WINDOW_COLUMN,
    )
}

/// Sliding event-time windows: `duration` long, starting every `slide`; each row counts in
/// every window that contains it.
pub fn sliding_window(time: Expr, duration: &str, slide: &str) -> Expr {
    window_call(
        ScalarUDF::new_from_impl(TimeWindow::default()),
        vec![
            time,
            datafusion::logical_expr::lit(duration),
            datafusion::logical_expr::lit(slide),
        ],
        WINDOW_COLUMN,
    )
}

/// Windows as [`sliding_window`] (use `slide == duration` for tumbling), with starts offset
/// from the epoch by `start` (`"15 minutes"` gives 12:15–13:15, 13:15–14:15, ...).
pub fn window_with_start(time: Expr, duration: &str, slide: &str, start: &str) -> Expr {
    window_call(
        ScalarUDF::new_from_impl(TimeWindow::default()),
        vec![
            time,
            datafusion::logical_expr::lit(duration),
            datafusion::logical_expr::lit(slide),
            datafusion::logical_expr::lit(start),
        ],
        WINDOW_COLUMN,
    )
}

/// Session windows with a static `gap`: a key's session grows while rows arrive less than
/// `gap` apart. The column is named `session_window`.
pub fn session_window(time: Expr, gap: &str) -> Expr {
    window_call(
        ScalarUDF::new_from_impl(SessionWindow::default()),
        vec![time, datafusion::logical_expr::lit(gap)],
        SESSION_WINDOW_COLUMN,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_windows_contain_the_row_start_inclusive_end_exclusive() {
        let spec = WindowSpec::parse("10 minutes", Some("5 minutes"), None).unwrap();
        let minute = 60_000_000;
        let mut starts = vec![];
        spec.for_each_window(7 * minute, |s| starts.push(s / minute));
        assert_eq!(starts, vec![0, 5]);
        starts.clear();
        spec.for_each_window(5 * minute, |s| starts.push(s / minute));
        assert_eq!(starts, vec![0, 5]);
        starts.clear();
        spec.for_each_window(10 * minute, |s| starts.push(s / minute));
        assert_eq!(starts, vec![5, 10]);
        starts.clear();
        // Before the epoch, with an offset start.
        let spec = WindowSpec::parse("1 minute", None, Some("15 seconds")).unwrap();
        spec.for_each_window(-1, |s| starts.push(s));
        assert_eq!(starts, vec![-45_000_000]);
        assert!(WindowSpec::parse("1 month", None, None).is_err());
        assert!(WindowSpec::parse("1 minute", Some("2 minutes"), None).is_err());
    }
}
