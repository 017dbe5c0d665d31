//! Batch Kafka I/O: a bounded range read as one record batch, and a DataFrame written to Kafka.

use std::sync::Arc;

use flumen_engine::datafusion::arrow::array::RecordBatch;
use flumen_engine::datafusion::dataframe::DataFrame;
use flumen_engine::options::Options;
use flumen_engine::{FlumenError, Result};
use futures::StreamExt;

use crate::consumer::{KafkaFetcher, OffsetSpec, blocking};
use crate::options::TimestampNoMatch;
use crate::options::{SourceConfig, StartingOffsets};
use crate::sink::{SinkLayout, create_producer, produce};
use crate::source::{resolve_start, timestamps_per_partition};

/// Reads `[startingOffsets, endingOffsets)` of the configured partitions.
pub(crate) async fn read_range(config: SourceConfig) -> Result<Vec<RecordBatch>> {
    blocking(move || {
        let description = format!("KafkaRelation[{}]", config.subscription.describe());
        let mut fetcher = KafkaFetcher::new(&config, description)?;
        let partitions = fetcher.partitions(&config.subscription)?;
        let start = resolve_start(&fetcher, &config, &partitions)?;
        let latest = fetcher.list_offsets(&partitions, OffsetSpec::Latest)?;
        let ending_timestamps = timestamps_per_partition(
            config.ending_timestamp,
            config.ending_by_timestamp.as_ref(),
            &partitions,
            "endingOffsetsByTimestamp",
        )?;
        let end = match &config.ending {
            // Spark: a partition with no record at or after its ending timestamp ends at latest.
            _ if ending_timestamps.is_some() => fetcher.offsets_at_timestamps(
                ending_timestamps.as_deref().unwrap_or_default(),
                TimestampNoMatch::Latest,
            )?,
            StartingOffsets::Specific(given) => {
                let mut end = latest.clone();
                for (t, ps) in given {
                    for (p, o) in ps {
                        if *o >= 0 {
                            end.entry(t.clone()).or_default().insert(*p, *o);
                        }
                    }
                }
                end
            }
            _ => latest,
        };
        let mut ranges = Vec::new();
        for (t, p) in &partitions {
            let from = crate::offsets::offset_of(&start, t, *p)?;
            let to = crate::offsets::offset_of(&end, t, *p)?;
            if to < from {
                return Err(FlumenError::invalid_option(
                    "endingOffsets",
                    format!(
                        "the ending offset {to} of {t}-{p} is before its starting offset {from}"
                    ),
                ));
            }
            ranges.push(((t.clone(), *p), from, to));
        }
        fetcher.fetch(&ranges)
    })
    .await
}

/// Writes every row of `df` to Kafka; returns the number of rows written.
pub(crate) async fn write_dataframe(df: DataFrame, options: &Options) -> Result<u64> {
    let schema = Arc::new(df.schema().as_arrow().clone());
    let layout = SinkLayout::new(&schema, options.get("topic").map(str::to_string))?;
    let options = options.clone();
    let producer = Arc::new(blocking(move || create_producer(&options)).await?);
    let mut stream = df.execute_stream().await?;
    let mut total = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let producer = Arc::clone(&producer);
        let layout = layout.clone();
        total += blocking(move || produce(&producer, &layout, &[batch])).await?;
    }
    Ok(total)
}
