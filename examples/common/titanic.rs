//! The notebook's Titanic pipeline, and a seeded generator of Titanic-shaped passengers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flumen::datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use flumen::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use flumen::datafusion::dataframe::DataFrame;
use flumen::datafusion::logical_expr::Expr;
use flumen::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The environment variable naming the Titanic CSV.
pub const CSV_ENV: &str = "FLUMEN_TITANIC_CSV";
/// The Titanic CSV the repository carries (`data/titanic.csv`; see `data/README.md`).
pub const BUNDLED_CSV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/titanic.csv");
/// Topic the passengers are loaded into.
pub const RAW_TOPIC: &str = "raw-titanic";
/// Topic the enriched passengers are written to.
pub const ENRICHED_TOPIC: &str = "enriched-titanic";
/// The columns the console query prints.
pub const PRETTY_COLUMNS: [&str; 7] = [
    "PassengerId",
    "Name",
    "Age",
    "Pclass",
    "ClassName",
    "is_adult",
    "Survived",
];

/// Where the passengers come from.
#[derive(Debug, Clone)]
pub enum TitanicData {
    /// A CSV file with the Kaggle columns.
    Csv(PathBuf),
    /// `rows` generated passengers from `seed`.
    Generated {
        /// How many passengers.
        rows: usize,
        /// The random seed.
        seed: u64,
    },
}

impl TitanicData {
    /// `--csv PATH`, else `FLUMEN_TITANIC_CSV`, else the repository's `data/titanic.csv`, else
    /// 891 generated passengers — said loudly.
    pub fn choose(csv: Option<PathBuf>) -> Self {
        let bundled = Path::new(BUNDLED_CSV);
        let found = csv
            .or_else(|| std::env::var_os(CSV_ENV).map(PathBuf::from))
            .or_else(|| bundled.exists().then(|| bundled.to_path_buf()));
        match found {
            Some(path) => {
                eprintln!("Reading passengers from {}", path.display());
                Self::Csv(path)
            }
            None => {
                eprintln!(
                    "*** No Titanic CSV given (--csv PATH or {CSV_ENV}) and none at {BUNDLED_CSV}: using 891 GENERATED passengers (seed 1912), not the real data set ***"
                );
                Self::Generated {
                    rows: 891,
                    seed: 1912,
                }
            }
        }
    }

    /// The passengers as a static DataFrame (CSV with header and inferred types).
    pub async fn load(&self, session: &StreamSession) -> flumen::Result<DataFrame> {
        match self {
            Self::Csv(path) => session.read_csv(path).await,
            Self::Generated { rows, seed } => session.create_data_frame(generate(*rows, *seed)?),
        }
    }
}

/// The schema DataFusion infers for the Kaggle Titanic CSV (and the generator's).
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("PassengerId", DataType::Int64, true),
        Field::new("Survived", DataType::Int64, true),
        Field::new("Pclass", DataType::Int64, true),
        Field::new("Name", DataType::Utf8, true),
        Field::new("Sex", DataType::Utf8, true),
        Field::new("Age", DataType::Float64, true),
        Field::new("SibSp", DataType::Int64, true),
        Field::new("Parch", DataType::Int64, true),
        Field::new("Ticket", DataType::Utf8, true),
        Field::new("Fare", DataType::Float64, true),
        Field::new("Cabin", DataType::Utf8, true),
        Field::new("Embarked", DataType::Utf8, true),
    ]))
}

/// `rows` Titanic-shaped passengers, deterministic for a seed: ids 1..=rows, about 20% missing
/// ages, 77% missing cabins, class-dependent fares.
pub fn generate(rows: usize, seed: u64) -> flumen::Result<RecordBatch> {
    const MEN: [&str; 6] = ["John", "William", "James", "Charles", "George", "Thomas"];
    const WOMEN: [&str; 6] = ["Mary", "Anna", "Elizabeth", "Margaret", "Helen", "Alice"];
    const LAST: [&str; 12] = [
        "Smith",
        "Andersson",
        "Brown",
        "Kelly",
        "Johnson",
        "Sage",
        "Goodwin",
        "Carter",
        "Harris",
        "Williams",
        "Panula",
        "Skoog",
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut id = Vec::with_capacity(rows);
    let mut survived = Vec::with_capacity(rows);
    let mut pclass = Vec::with_capacity(rows);
    let mut name = Vec::with_capacity(rows);
    let mut sex = Vec::with_capacity(rows);
    let mut age = Vec::with_capacity(rows);
    let mut sibsp = Vec::with_capacity(rows);
    let mut parch = Vec::with_capacity(rows);
    let mut ticket = Vec::with_capacity(rows);
    let mut fare = Vec::with_capacity(rows);
    let mut cabin = Vec::with_capacity(rows);
    let mut embarked = Vec::with_capacity(rows);
    for i in 0..rows {
        let class: i64 = match rng.random_range(0..100) {
            0..24 => 1,
            24..45 => 2,
            _ => 3,
        };
        let female = rng.random_bool(0.35);
        id.push(i as i64 + 1);
        survived.push(i64::from(rng.random_bool(if female { 0.74 } else { 0.19 })));
        pclass.push(class);
        let (title, first) = if female {
            ("Mrs.", WOMEN)
        } else {
            ("Mr.", MEN)
        };
        name.push(format!(
            "{}, {title} {}",
            LAST[rng.random_range(0..LAST.len())],
            first[rng.random_range(0..first.len())]
        ));
        sex.push(if female { "female" } else { "male" });
        age.push(if rng.random_bool(0.2) {
            None
        } else {
            Some((rng.random_range(42..8000) as f64 / 100.0).round())
        });
        sibsp.push(rng.random_range(0..3));
        parch.push(rng.random_range(0..3));
        ticket.push(format!("{}", rng.random_range(100_000..400_000)));
        fare.push(
            (rng.random_range(500..5000) as f64 / (class as f64 * 10.0) * 10.0).round() / 10.0,
        );
        cabin.push(if class == 1 && rng.random_bool(0.8) {
            Some(format!("C{}", rng.random_range(1..150)))
        } else {
            None
        });
        embarked.push(["S", "C", "Q"][rng.random_range(0..3)]);
    }
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(id)),
            Arc::new(Int64Array::from(survived)),
            Arc::new(Int64Array::from(pclass)),
            Arc::new(StringArray::from(name)),
            Arc::new(StringArray::from(sex)),
            Arc::new(Float64Array::from(age)),
            Arc::new(Int64Array::from(sibsp)),
            Arc::new(Int64Array::from(parch)),
            Arc::new(StringArray::from(ticket)),
            Arc::new(Float64Array::from(fare)),
            Arc::new(StringArray::from(cabin)),
            Arc::new(StringArray::from(embarked)),
        ],
    )?)
}

/// Writes the passengers to `topic`: key = PassengerId, value = the row as JSON (the notebook's
/// `selectExpr("CAST(PassengerId AS STRING) AS key", "to_json(struct(*)) AS value")`).
///
/// `kafka_options` are Spark-style `kafka.*` options for the producer.
pub async fn load_into_kafka(
    passengers: DataFrame,
    session: &StreamSession,
    servers: &str,
    topic: &str,
    kafka_options: &[(String, String)],
) -> flumen::Result<u64> {
    let mut writer = session
        .frame(passengers)
        .select_expr([
            "CAST(PassengerId AS STRING) AS key",
            "to_json(struct(*)) AS value",
        ])?
        .write_kafka()
        .bootstrap_servers(servers)
        .topic(topic);
    for (k, v) in kafka_options {
        writer = writer.option(k.as_str(), v);
    }
    writer.save().await
}

/// The static class table: 1 First Class, 2 Second Class, 3 Third Class.
pub fn class_names(session: &StreamSession) -> flumen::Result<DataFrame> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("Pclass", DataType::Int64, false),
        Field::new("ClassName", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])),
            Arc::new(StringArray::from(vec![
                "First Class",
                "Second Class",
                "Third Class",
            ])),
        ],
    )?;
    session.create_data_frame(batch)
}

/// The passengers streaming through `raw_topic`, parsed with `schema` (the notebook's
/// `parsed_stream`: `CAST(value AS STRING)`, `from_json`, `data.*`), from the earliest offset.
///
/// `options` are extra source options (e.g. `maxOffsetsPerTrigger`, `kafka.*`).
pub fn parsed_stream(
    session: &StreamSession,
    servers: &str,
    raw_topic: &str,
    options: &[(String, String)],
    schema: SchemaRef,
) -> flumen::Result<StreamFrame> {
    session
        .read_stream()
        .kafka()
        .bootstrap_servers(servers)
        .options(options.iter().cloned())
        .subscribe([raw_topic])
        .starting_offsets(StartingOffsets::Earliest)
        .load()?
        .select_expr(["CAST(value AS STRING) AS json_str"])?
        .with_column("data", from_json(col("json_str"), schema)?)?
        .select_expr(["data.*"])
}

/// `is_adult`: `yes` when Age >= 18, else `no` (a missing age is `no`).
pub fn is_adult() -> flumen::Result<Expr> {
    Ok(when(col("Age").gt_eq(lit(18)), lit("yes")).otherwise(lit("no"))?)
}

/// The enriched passenger stream: parse the JSON with the CSV's schema, add `is_adult`,
/// left-join the class names.
///
/// `options` are extra source options (e.g. `maxOffsetsPerTrigger`, `kafka.*`).
pub fn enriched_stream(
    session: &StreamSession,
    servers: &str,
    raw_topic: &str,
    options: &[(String, String)],
    schema: SchemaRef,
) -> flumen::Result<StreamFrame> {
    parsed_stream(session, servers, raw_topic, options, schema)?
        .with_column("is_adult", is_adult()?)?
        .join(class_names(session)?, JoinType::Left, &["Pclass"])
}

/// The notebook's event time, `current_timestamp() + interval 5 seconds * PassengerId`, with
/// `base` in place of the current time so runs can be reproduced.
pub fn with_event_time(
    session: &StreamSession,
    passengers: DataFrame,
    base: chrono::DateTime<chrono::Utc>,
) -> flumen::Result<DataFrame> {
    let micros = lit(base.timestamp_micros()) + col("PassengerId") * lit(5_000_000i64);
    session
        .frame(passengers)
        .with_column(
            "event_time",
            cast(
                micros,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ),
        )?
        .into_dataframe()
}

/// Passengers per one-minute event-time window, ordered by window (the notebook's windowed
/// count; run it in complete mode).
pub fn windowed_counts(parsed: &StreamFrame) -> flumen::Result<StreamFrame> {
    parsed
        .group_by([window(col("event_time"), "1 minute")])
        .count()?
        .order_by([col("window")])
}

/// Passengers per `is_adult` value (the notebook's chart cell; run it in complete mode).
pub fn is_adult_counts(parsed: &StreamFrame) -> flumen::Result<StreamFrame> {
    parsed
        .with_column("is_adult", is_adult()?)?
        .group_by([col("is_adult")])
        .count()
}

/// The Kafka form of the enriched stream: key = PassengerId, value = every column as JSON.
pub fn to_kafka_records(enriched: &StreamFrame) -> flumen::Result<StreamFrame> {
    let all_columns = struct_(enriched.columns().iter().map(|c| col(c.as_str())));
    enriched
        .with_column("key", cast(col("PassengerId"), DataType::Utf8))?
        .with_column("value", to_json(all_columns))?
        .select_columns(&["key", "value"])
}

/// The default checkpoint directory of the enrichment's Kafka query.
pub fn default_checkpoint() -> PathBuf {
    Path::new("/tmp/checkpoints/titanic-kafka").to_path_buf()
}
