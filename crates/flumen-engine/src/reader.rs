//! [`DataStreamReader`]: `session.read_stream()`. Connectors add typed entry points
//! (`.kafka()` in `flumen-kafka`); the reader itself carries Spark-style string options.

use crate::error::Result;
use crate::frame::StreamFrame;
use crate::options::Options;
use crate::session::StreamSession;
use crate::source::SourceRef;

/// Builder for a streaming source; options are validated when the source is created.
#[derive(Debug, Clone)]
pub struct DataStreamReader {
    session: StreamSession,
    options: Options,
}

impl DataStreamReader {
    pub(crate) fn new(session: StreamSession) -> Self {
        Self {
            session,
            options: Options::new(),
        }
    }

    /// Sets a Spark-style option (keys are case-insensitive).
    #[must_use]
    pub fn option(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.options.set(key, value.to_string());
        self
    }

    /// Sets several options.
    #[must_use]
    pub fn options<K: Into<String>, V: ToString>(
        mut self,
        options: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        for (k, v) in options {
            self.options.set(k, v.to_string());
        }
        self
    }

    /// The options set so far.
    pub fn get_options(&self) -> &Options {
        &self.options
    }

    /// The session.
    pub fn session(&self) -> &StreamSession {
        &self.session
    }

    /// A stream frame over a source built by a connector.
    pub fn load_source(&self, source: SourceRef) -> Result<StreamFrame> {
        self.session.stream(source)
    }
}
