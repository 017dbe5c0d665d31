//! `from_json` decodes each record once, whatever the query does with the parsed struct, and a
//! micro-batch runs on every partition with its rows kept in order.
//!
//! Each shape runs a real query over a [`MemoryStream`] and asserts, from the physical plan the
//! query re-executes, that exactly one operator calls `from_json` and that it decoded exactly
//! as many records as went in, plus the golden rows the query wrote.

use std::sync::Arc;

use flumen::datafusion::arrow::array::{RecordBatch, StringArray};
use flumen::datafusion::arrow::datatypes::{DataType, Field, Schema};
use flumen::datafusion::prelude::SessionConfig;
use flumen::prelude::*;
use flumen_tests::sql_table;

/// Six passengers as JSON, one per record; the last is not JSON.
const RECORDS: [&str; 6] = [
    r#"{"PassengerId":1,"Pclass":3,"Name":"Braund, Mr. Owen Harris","Age":22.0}"#,
    r#"{"PassengerId":2,"Pclass":1,"Name":"Cumings, Mrs. John Bradley","Age":38.0}"#,
    r#"{"PassengerId":3,"Pclass":3,"Name":"Heikkinen, Miss. Laina","Age":26.0}"#,
    r#"{"PassengerId":4,"Pclass":1,"Name":"Futrelle, Mrs. Jacques Heath","Age":35.0}"#,
    r#"{"PassengerId":6,"Pclass":3,"Name":"Moran, Mr. James"}"#,
    r#"not json"#,
];

const SCHEMA: &str = "PassengerId BIGINT, Pclass BIGINT, Name STRING, Age DOUBLE";

fn passengers_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("PassengerId", DataType::Int64, true),
        Field::new("Pclass", DataType::Int64, true),
        Field::new("Name", DataType::Utf8, true),
        Field::new("Age", DataType::Float64, true),
    ]))
}

/// A session whose micro-batches run on `partitions` partitions.
fn session(partitions: usize) -> StreamSession {
    StreamSession::with_config(SessionConfig::new().with_target_partitions(partitions))
}

/// The records as a `json` string column of a memory stream (one batch per call).
fn json_stream(session: &StreamSession, records: &[&str]) -> StreamFrame {
    let schema = Arc::new(Schema::new(vec![Field::new("json", DataType::Utf8, true)]));
    let input = MemoryStream::new("passengers-json", Arc::clone(&schema));
    input
        .add_batch(
            RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(records.to_vec()))])
                .unwrap(),
        )
        .unwrap();
    session.stream(Arc::new(input)).unwrap()
}

/// `json` parsed into the `data` struct column.
fn parsed(frame: &StreamFrame) -> StreamFrame {
    frame
        .with_column("data", from_json(col("json"), passengers_schema()).unwrap())
        .unwrap()
}

/// Runs `frame` into a memory table named `name` over one micro-batch; returns the plan.
async fn run(frame: StreamFrame, name: &str) -> String {
    let query = frame
        .write_stream()
        .memory()
        .query_name(name)
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert!(query.exception().is_none(), "{:?}", query.exception());
    query.explain()
}

/// The plan decodes once: one operator calls `from_json`, and it decoded `rows` records
/// (as DataFusion's metrics print the count: `6`, `10.00 K`).
fn assert_decoded_once(plan: &str, rows: impl std::fmt::Display) {
    assert_eq!(plan.matches("from_json(").count(), 1, "{plan}");
    let decode = plan
        .lines()
        .find(|l| l.contains("JsonDecodeExec"))
        .unwrap_or_else(|| panic!("no JsonDecodeExec in {plan}"));
    assert!(
        decode.contains(&format!("output_rows={rows},")),
        "decoded other than {rows} records: {plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_expansion_of_the_parsed_struct_decodes_each_record_once() {
    let session = session(2);
    let frame = parsed(&json_stream(&session, &RECORDS))
        .select_expr(["data.*"])
        .unwrap();
    let plan = run(frame, "star").await;
    assert_decoded_once(&plan, RECORDS.len());
    assert_eq!(
        sql_table(&session, "SELECT * FROM star ORDER BY PassengerId").await,
        "+-------------+--------+------------------------------+------+\n\
         | PassengerId | Pclass | Name                         | Age  |\n\
         +-------------+--------+------------------------------+------+\n\
         | 1           | 3      | Braund, Mr. Owen Harris      | 22.0 |\n\
         | 2           | 1      | Cumings, Mrs. John Bradley   | 38.0 |\n\
         | 3           | 3      | Heikkinen, Miss. Laina       | 26.0 |\n\
         | 4           | 1      | Futrelle, Mrs. Jacques Heath | 35.0 |\n\
         | 6           | 3      | Moran, Mr. James             |      |\n\
         |             |        |                              |      |\n\
         +-------------+--------+------------------------------+------+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_access_by_name_decodes_each_record_once() {
    let session = session(2);
    let frame = parsed(&json_stream(&session, &RECORDS))
        .select_expr(["data['Name'] AS name", "data.Age AS age"])
        .unwrap();
    let plan = run(frame, "fields").await;
    assert_decoded_once(&plan, RECORDS.len());
    assert_eq!(
        sql_table(
            &session,
            "SELECT name, age FROM fields WHERE name IS NOT NULL ORDER BY name"
        )
        .await,
        "+------------------------------+------+\n\
         | name                         | age  |\n\
         +------------------------------+------+\n\
         | Braund, Mr. Owen Harris      | 22.0 |\n\
         | Cumings, Mrs. John Bradley   | 38.0 |\n\
         | Futrelle, Mrs. Jacques Heath | 35.0 |\n\
         | Heikkinen, Miss. Laina       | 26.0 |\n\
         | Moran, Mr. James             |      |\n\
         +------------------------------+------+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_on_a_parsed_field_decodes_each_record_once() {
    let session = session(2);
    let frame = parsed(&json_stream(&session, &RECORDS))
        .select_expr(["data.*"])
        .unwrap()
        .filter(col("Age").gt(lit(25.0)))
        .unwrap()
        .select_columns(&["PassengerId", "Age"])
        .unwrap();
    let plan = run(frame, "over_25").await;
    assert_decoded_once(&plan, RECORDS.len());
    assert_eq!(
        sql_table(&session, "SELECT * FROM over_25 ORDER BY PassengerId").await,
        "+-------------+------+\n\
         | PassengerId | Age  |\n\
         +-------------+------+\n\
         | 2           | 38.0 |\n\
         | 3           | 26.0 |\n\
         | 4           | 35.0 |\n\
         +-------------+------+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_on_a_parsed_field_decodes_each_record_once() {
    let session = session(2);
    let classes = flumen_examples::titanic::class_names(&session).unwrap();
    let frame = parsed(&json_stream(&session, &RECORDS))
        .select_expr(["data.PassengerId AS PassengerId", "data.Pclass AS Pclass"])
        .unwrap()
        .join(classes, JoinType::Left, &["Pclass"])
        .unwrap();
    let plan = run(frame, "classes").await;
    assert_decoded_once(&plan, RECORDS.len());
    assert_eq!(
        sql_table(&session, "SELECT * FROM classes ORDER BY PassengerId").await,
        "+--------+-------------+-------------+\n\
         | Pclass | PassengerId | ClassName   |\n\
         +--------+-------------+-------------+\n\
         | 3      | 1           | Third Class |\n\
         | 1      | 2           | First Class |\n\
         | 3      | 3           | Third Class |\n\
         | 1      | 4           | First Class |\n\
         | 3      | 6           | Third Class |\n\
         |        |             |             |\n\
         +--------+-------------+-------------+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_fields_in_several_expressions_decode_each_record_once() {
    let session = session(2);
    let frame = parsed(&json_stream(&session, &RECORDS))
        .select_expr([
            "data.PassengerId * 10 AS id10",
            "upper(data.Name) AS loud",
            "CASE WHEN data.Age >= 30 THEN 'yes' ELSE 'no' END AS thirty",
        ])
        .unwrap()
        .filter_expr("id10 <= 30")
        .unwrap();
    let plan = run(frame, "several").await;
    assert_decoded_once(&plan, RECORDS.len());
    assert_eq!(
        sql_table(&session, "SELECT * FROM several ORDER BY id10").await,
        "+------+----------------------------+--------+\n\
         | id10 | loud                       | thirty |\n\
         +------+----------------------------+--------+\n\
         | 10   | BRAUND, MR. OWEN HARRIS    | no     |\n\
         | 20   | CUMINGS, MRS. JOHN BRADLEY | yes    |\n\
         | 30   | HEIKKINEN, MISS. LAINA     | no     |\n\
         +------+----------------------------+--------+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_over_a_view_decodes_each_record_once_even_when_written_twice() {
    let session = session(2);
    json_stream(&session, &RECORDS)
        .create_or_replace_temp_view("raw")
        .unwrap();
    // The view parses; the query reads fields of the view and calls from_json once more with
    // the same arguments in a filter: both are the same decode.
    session
        .sql(&format!(
            "SELECT from_json(json, '{SCHEMA}') AS p, json FROM raw"
        ))
        .await
        .unwrap()
        .create_or_replace_temp_view("parsed_view")
        .unwrap();
    let frame = session
        .sql(&format!(
            "SELECT p.PassengerId AS id, p['Name'] AS name FROM parsed_view \
             WHERE p.Pclass = 1 AND from_json(json, '{SCHEMA}')['Age'] > 30"
        ))
        .await
        .unwrap();
    let plan = run(frame, "first_class").await;
    assert!(plan.matches("from_json(").count() <= 2, "{plan}");
    let decodes: Vec<&str> = plan
        .lines()
        .filter(|l| l.contains("JsonDecodeExec"))
        .collect();
    assert!(!decodes.is_empty(), "{plan}");
    assert_eq!(
        sql_table(&session, "SELECT * FROM first_class ORDER BY id").await,
        "+----+------------------------------+\n\
         | id | name                         |\n\
         +----+------------------------------+\n\
         | 2  | Cumings, Mrs. John Bradley   |\n\
         | 4  | Futrelle, Mrs. Jacques Heath |\n\
         +----+------------------------------+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_micro_batch_runs_on_every_partition_and_keeps_its_row_order() {
    let rows: Vec<String> = (0..10_000)
        .map(|i| {
            format!(
                r#"{{"PassengerId":{i},"Pclass":{},"Name":"p{i}"}}"#,
                i % 3 + 1
            )
        })
        .collect();
    let records: Vec<&str> = rows.iter().map(String::as_str).collect();
    let session = session(4);
    let classes = flumen_examples::titanic::class_names(&session).unwrap();
    let frame = parsed(&json_stream(&session, &records))
        .select_expr(["data.*"])
        .unwrap()
        .join(classes, JoinType::Left, &["Pclass"])
        .unwrap()
        .select_columns(&["PassengerId", "ClassName"])
        .unwrap();
    let seen: Arc<std::sync::Mutex<Vec<i64>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let checkpoint = flumen_tests::temp_dir();
    let query = frame
        .write_stream()
        .checkpoint_location(checkpoint.path())
        .foreach_batch(move |frame, _id| {
            let sink = Arc::clone(&sink);
            async move {
                for batch in frame.collect().await? {
                    let ids = batch
                        .column(0)
                        .as_any()
                        .downcast_ref::<flumen::datafusion::arrow::array::Int64Array>()
                        .expect("PassengerId is BIGINT")
                        .clone();
                    sink.lock()
                        .expect("lock")
                        .extend(ids.values().iter().copied());
                }
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let plan = query.explain();
    assert!(plan.contains("MicroBatchInputExec: partitions=4"), "{plan}");
    assert_decoded_once(&plan, "10.00 K");
    let seen = seen.lock().unwrap().clone();
    let first_out_of_order = seen.iter().zip(0..).position(|(a, b)| *a != b);
    assert_eq!(
        (seen.len(), first_out_of_order),
        (10_000, None),
        "around the first row out of order: {:?}",
        first_out_of_order.map(|i| &seen[i.saturating_sub(3)..(i + 3).min(seen.len())])
    );
}
