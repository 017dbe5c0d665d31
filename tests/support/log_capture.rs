//! Everything the process logs, captured as text: Flumen's `tracing` events and span fields at
//! every level, and librdkafka's log lines (which the rdkafka crate hands to the `log` facade).
//! Installed once per test binary, process-wide, so it also sees what query threads log.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

/// The captured log text of this process.
pub struct CapturedLogs {
    text: Mutex<String>,
    next_span: AtomicU64,
}

impl CapturedLogs {
    /// All text logged since the capture was installed.
    pub fn text(&self) -> String {
        self.text.lock().expect("log capture lock").clone()
    }

    fn push(&self, line: String) {
        let mut text = self.text.lock().expect("log capture lock");
        text.push_str(&line);
        text.push('\n');
    }
}

/// Installs the capture (once per process) and returns it.
pub fn captured_logs() -> &'static CapturedLogs {
    static CAPTURE: OnceLock<&'static CapturedLogs> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture: &'static CapturedLogs = Box::leak(Box::new(CapturedLogs {
            text: Mutex::new(String::new()),
            next_span: AtomicU64::new(1),
        }));
        tracing::subscriber::set_global_default(TracingCapture(capture))
            .expect("no other tracing subscriber in the test binary");
        log::set_logger(Box::leak(Box::new(LogCapture(capture))))
            .expect("no other logger in the test binary");
        log::set_max_level(log::LevelFilter::Trace);
        capture
    })
}

struct FieldsText<'a>(&'a mut String);

impl Visit for FieldsText<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

struct TracingCapture(&'static CapturedLogs);

impl Subscriber for TracingCapture {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::always()
    }

    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut line = format!(
            "span {} {}",
            span.metadata().target(),
            span.metadata().name()
        );
        span.record(&mut FieldsText(&mut line));
        self.0.push(line);
        Id::from_u64(self.0.next_span.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut line = "span record".to_string();
        values.record(&mut FieldsText(&mut line));
        self.0.push(line);
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        let mut line = format!("{} {}", metadata.level(), metadata.target());
        event.record(&mut FieldsText(&mut line));
        self.0.push(line);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// librdkafka's lines only: DataFusion's own `log` output is large and says nothing of options.
struct LogCapture(&'static CapturedLogs);

impl log::Log for LogCapture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().contains("rdkafka")
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.0.push(format!(
                "{} {} {}",
                record.level(),
                record.target(),
                record.args()
            ));
        }
    }

    fn flush(&self) {}
}
