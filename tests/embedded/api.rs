//! The API's contracts: option validation and unsupported query shapes fail at `load()` /
//! `start()` with Spark's messages (or clearer ones), before any data is read.

use flumen::prelude::*;
use flumen_tests::*;

fn stream(session: &StreamSession, servers: &str) -> StreamFrame {
    session
        .read_stream()
        .kafka()
        .bootstrap_servers(servers)
        .subscribe(["t"])
        .load()
        .unwrap()
}

async fn start_error(writer: DataStreamWriter) -> String {
    writer.start().await.unwrap_err().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_operations_fail_at_start_with_sparks_messages() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    let session = StreamSession::new();
    let s = stream(&session, kafka.bootstrap_servers());
    let sorted = session.frame(
        s.dataframe()
            .clone()
            .sort(vec![col("offset").sort(true, true)])
            .unwrap(),
    );
    assert_eq!(
        start_error(sorted.write_stream().console()).await,
        "Sorting is not supported on streaming DataFrames/Datasets, unless it is on aggregated DataFrame/Dataset in Complete output mode"
    );
    assert_eq!(
        start_error(s.write_stream().console().output_mode(OutputMode::Complete)).await,
        "Complete output mode not supported when there are no streaming aggregations on streaming DataFrames/Datasets"
    );
    let aggregated = session.frame(
        s.dataframe()
            .clone()
            .aggregate(vec![col("topic")], vec![])
            .unwrap(),
    );
    assert_eq!(
        start_error(aggregated.write_stream().console()).await,
        "Append output mode not supported when there are streaming aggregations on streaming DataFrames/DataSets without watermark"
    );
    let limited = session.frame(s.dataframe().clone().limit(0, Some(5)).unwrap());
    assert!(
        start_error(limited.write_stream().console())
            .await
            .starts_with("Limit is not supported")
    );

    let statics = session
        .sql("SELECT 1 AS partition, 'x' AS label")
        .await
        .unwrap()
        .into_dataframe()
        .unwrap();
    let right = s
        .join(statics.clone(), JoinType::Right, &["partition"])
        .unwrap();
    assert_eq!(
        start_error(right.write_stream().console()).await,
        "RightOuter join with a streaming DataFrame/Dataset on the left and a static DataFrame/DataSet on the right not supported"
    );
    let full = s.join(statics, JoinType::Full, &["partition"]).unwrap();
    assert!(
        start_error(full.write_stream().console())
            .await
            .starts_with("FullOuter joins")
    );
    let other = stream(&session, kafka.bootstrap_servers())
        .select_expr(["offset", "value AS other_value"])
        .unwrap();
    let both = s
        .join(other.into_stream_dataframe(), JoinType::Inner, &["offset"])
        .unwrap();
    assert!(
        start_error(
            both.write_stream()
                .output_mode(OutputMode::Update)
                .console()
        )
        .await
        .contains("Join between two streaming DataFrames/Datasets")
    );

    let clash = s.join(
        session
            .sql("SELECT 1 AS partition, 'x' AS key")
            .await
            .unwrap()
            .into_dataframe()
            .unwrap(),
        JoinType::Left,
        &["partition"],
    );
    assert_eq!(
        clash.unwrap_err().to_string(),
        "invalid option 'on': column 'key' is on both sides of the join and is not a join column; rename it on one side first (with_column_renamed)"
    );

    let static_frame = session.sql("SELECT 1 AS x").await.unwrap();
    assert_eq!(
        start_error(static_frame.write_stream().console()).await,
        "Queries without streaming sources cannot be executed with writeStream.start()"
    );
    assert_eq!(
        s.collect().await.unwrap_err().to_string(),
        "Queries with streaming sources must be executed with writeStream.start()"
    );
}

/// Lets a test join two streams (which the engine must then reject).
trait IntoStreamDataFrame {
    fn into_stream_dataframe(self) -> flumen::datafusion::dataframe::DataFrame;
}

impl IntoStreamDataFrame for StreamFrame {
    fn into_stream_dataframe(self) -> flumen::datafusion::dataframe::DataFrame {
        self.dataframe().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_options_are_checked_at_start() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    let session = StreamSession::new();
    let s = stream(&session, kafka.bootstrap_servers());
    let cp = temp_dir();
    assert_eq!(
        start_error(s.write_stream().memory()).await,
        "invalid option 'queryName': queryName must be specified for memory sink"
    );
    let no_value = s.select_expr(["CAST(key AS STRING) AS key"]).unwrap();
    assert_eq!(
        no_value
            .write_stream()
            .kafka()
            .bootstrap_servers(kafka.bootstrap_servers())
            .topic("out")
            .checkpoint_location(cp.path())
            .start()
            .await
            .unwrap_err()
            .to_string(),
        "sink KafkaSink: Required attribute 'value' not found"
    );
    let no_topic = s.select_expr(["value"]).unwrap();
    assert_eq!(
        no_topic
            .write_stream()
            .kafka()
            .bootstrap_servers(kafka.bootstrap_servers())
            .checkpoint_location(cp.path())
            .start()
            .await
            .unwrap_err()
            .to_string(),
        "sink KafkaSink: topic option required when no 'topic' attribute is present. Use the topic option for setting a topic."
    );
    let bad_value = s.select_expr(["partition AS value"]).unwrap();
    assert!(
        bad_value
            .write_stream()
            .kafka()
            .bootstrap_servers(kafka.bootstrap_servers())
            .topic("out")
            .checkpoint_location(cp.path())
            .start()
            .await
            .unwrap_err()
            .to_string()
            .ends_with("value must be a(n) string or binary")
    );
    let no_checkpoint = s
        .select_expr(["value"])
        .unwrap()
        .write_stream()
        .kafka()
        .bootstrap_servers(kafka.bootstrap_servers())
        .topic("out")
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        no_checkpoint.contains("checkpointLocation must be specified"),
        "{no_checkpoint}"
    );

    let q = s
        .write_stream()
        .memory()
        .query_name("dup")
        .start()
        .await
        .unwrap();
    assert_eq!(
        start_error(s.write_stream().memory().query_name("dup")).await,
        "Cannot start query with name dup as a query with that name is already active in this session"
    );
    q.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_options_are_checked_at_load() {
    let session = StreamSession::new();
    let load = |f: fn(flumen::kafka::KafkaStreamReader) -> flumen::kafka::KafkaStreamReader| {
        f(session
            .read_stream()
            .kafka()
            .bootstrap_servers("127.0.0.1:9"))
        .load()
        .unwrap_err()
        .to_string()
    };
    assert!(load(|r| r).contains("One of the following options must be specified for Kafka source: subscribe, subscribePattern, assign"));
    assert!(
        load(|r| r.subscribe(["a"]).subscribe_pattern("b.*"))
            .contains("Only one of the following options")
    );
    assert!(
        load(|r| r
            .subscribe(["a"])
            .option("kafka.auto.offset.reset", "earliest"))
        .contains("set the source option 'startingOffsets'")
    );
    assert!(
        load(|r| r
            .subscribe(["a"])
            .option("kafka.enable.auto.commit", "true"))
        .contains("enable.auto.commit")
    );
    assert!(
        load(|r| r
            .subscribe(["a"])
            .option("startingOffsets", "{\"a\":{\"x\":1}}"))
        .contains("partition 'x' of 'a' is not a number")
    );
    assert!(load(|r| r.assign([("a", vec![])])).contains("no partitions"));
    assert!(
        load(|r| r.subscribe(["a"]).option("maxOffsetsPerTrigger", "0"))
            .contains("must be greater than 0")
    );
    assert!(
        load(|r| r.subscribe(["a"]).option("failOnDataLoss", "maybe")).contains("is not a boolean")
    );
    let missing = session
        .read_stream()
        .kafka()
        .subscribe(["a"])
        .load()
        .unwrap_err()
        .to_string();
    assert!(missing.contains("kafka.bootstrap.servers"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_options_and_typed_setters_are_the_same() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    produce_values(kafka.bootstrap_servers(), "t", &["x", "y"]);
    let session = StreamSession::new();
    let frame = session
        .read_stream()
        .option("kafka.bootstrap.servers", kafka.bootstrap_servers())
        .option("subscribe", "t")
        .option("startingOffsets", "earliest")
        .kafka()
        .load()
        .unwrap()
        .select_expr(["CAST(value AS STRING) AS v"])
        .unwrap();
    let query = frame
        .write_stream()
        .format("memory")
        .option("queryName", "strings")
        .option("outputMode", "append")
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(
        sql_table(&session, "SELECT v FROM strings ORDER BY v").await,
        "+---+\n| v |\n+---+\n| x |\n| y |\n+---+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_functions_behave_like_spark() {
    let session = StreamSession::new();
    let table = sql_table(
        &session,
        "SELECT concat('a', NULL) IS NULL AS concat_null, \
                to_json(struct(1 AS a, CAST(NULL AS STRING) AS b, 'x' AS c)) AS json, \
                from_json('{\"a\": 1}', 'a INT, b STRING')['a'] AS a",
    )
    .await;
    assert_eq!(
        table,
        "+-------------+-----------------+---+\n\
         | concat_null | json            | a |\n\
         +-------------+-----------------+---+\n\
         | true        | {\"a\":1,\"c\":\"x\"} | 1 |\n\
         +-------------+-----------------+---+"
    );
    // struct(*) and data.* in select_expr; CAST keeps the column's name.
    let frame = session
        .sql("SELECT 1 AS id, 'Ann' AS name")
        .await
        .unwrap()
        .select_expr(["to_json(struct(*)) AS j", "CAST(id AS STRING)"])
        .unwrap();
    assert_eq!(frame.columns(), ["j", "id"]);
    let rows = frame.collect().await.unwrap();
    assert_eq!(
        flumen::datafusion::arrow::util::pretty::pretty_format_batches(&rows)
            .unwrap()
            .to_string(),
        "+-----------------------+----+\n| j                     | id |\n+-----------------------+----+\n| {\"id\":1,\"name\":\"Ann\"} | 1  |\n+-----------------------+----+"
    );
}
