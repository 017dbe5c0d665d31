//! Output modes and triggers: the leaf vocabulary of a query, used by the API layer (writer,
//! query handle) and by execution (micro-batch loop, sinks, stateful operators) alike.

use std::str::FromStr;
use std::time::Duration;

use crate::error::{FlumenError, Result};
use crate::options::parse_interval;
use crate::source::ReadLimit;

/// Which rows of the result table a trigger writes (Spark's output modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OutputMode {
    /// Only new rows; each row is written once. The default.
    #[default]
    Append,
    /// Only rows that changed in this trigger; without aggregation the same as append.
    Update,
    /// The whole result table every trigger; aggregation queries only.
    Complete,
}

impl FromStr for OutputMode {
    type Err = FlumenError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "append" => Ok(Self::Append),
            "update" => Ok(Self::Update),
            "complete" => Ok(Self::Complete),
            _ => Err(FlumenError::invalid_option(
                "outputMode",
                format!(
                    "unknown output mode '{s}'; accepted output modes are 'append', 'complete', 'update'"
                ),
            )),
        }
    }
}

impl std::fmt::Display for OutputMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Append => "Append",
            Self::Update => "Update",
            Self::Complete => "Complete",
        })
    }
}

/// When micro-batches run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trigger {
    /// The next batch starts as soon as the previous one ends and data is available. The default.
    #[default]
    AsFastAsPossible,
    /// A batch every interval; an overrunning batch is followed at once by the next.
    ProcessingTime(Duration),
    /// Everything available at start, in as many batches as rate limits need, then stop.
    AvailableNow,
    /// Everything available at start in one batch, then stop (deprecated in Spark; kept for
    /// parity).
    Once,
}

impl Trigger {
    /// A fixed-interval trigger from Spark's text form, e.g. `"2 seconds"`.
    pub fn processing_time(interval: &str) -> Result<Self> {
        Ok(Self::ProcessingTime(parse_interval(interval)?))
    }

    /// Whether the query stops once it has processed what was available when it started.
    pub fn stops_when_caught_up(&self) -> bool {
        matches!(self, Self::AvailableNow | Self::Once)
    }

    /// Whether the query runs exactly one batch.
    pub fn runs_one_batch(&self) -> bool {
        *self == Self::Once
    }

    /// How much one batch may read, given the source's own limit (`Once` reads everything).
    pub fn read_limit(&self, source_limit: ReadLimit) -> ReadLimit {
        if self.runs_one_batch() {
            ReadLimit::All
        } else {
            source_limit
        }
    }

    /// The interval between batch starts, for a fixed-interval trigger.
    pub fn interval(&self) -> Option<Duration> {
        match self {
            Self::ProcessingTime(interval) => Some(*interval),
            _ => None,
        }
    }
}
