//! File sources and sinks: directories of JSON Lines, CSV and Parquet files as streams (each
//! file read exactly once, across restarts), and exactly-once file output committed through
//! `_spark_metadata`, read back by batch reads and file sources.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use flumen::datafusion::arrow::array::StringArray;
use flumen::datafusion::arrow::array::{ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch};
use flumen::datafusion::arrow::datatypes::DataType;
use flumen::datafusion::arrow::util::pretty::pretty_format_batches;
use flumen::datafusion::parquet::arrow::ArrowWriter;
use flumen::prelude::*;
use flumen_tests::*;

/// 2026-01-01T00:00:00Z, the modification time files are given (plus a few seconds each).
const T0: u64 = 1_767_225_600;
const DAY: u64 = 86_400;

/// Writes `text` to `dir/name` and sets its modification time to `mtime` (seconds).
fn write_at(dir: &Path, name: &str, text: &[u8], mtime: u64) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    set_mtime(&path, mtime);
    path
}

fn set_mtime(path: &Path, mtime: u64) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
        .unwrap();
}

/// A JSON Lines file `<name>.json` holding one record `{"name":"<name>"}`.
fn name_file(dir: &Path, name: &str, mtime: u64) {
    write_at(
        dir,
        &format!("{name}.json"),
        format!("{{\"name\":\"{name}\"}}\n").as_bytes(),
        mtime,
    );
}

type Seen = Arc<Mutex<Vec<(u64, Vec<String>)>>>;

/// A `foreach_batch` sink recording each batch's `name` values; it fails once ("crashes")
/// after seeing batch `crash_at`, before the engine commits it.
fn recording(writer: DataStreamWriter, seen: Seen, crash_at: Option<u64>) -> DataStreamWriter {
    let crashed = Arc::new(Mutex::new(false));
    writer.foreach_batch(move |df, id| {
        let seen = Arc::clone(&seen);
        let crashed = Arc::clone(&crashed);
        async move {
            let mut names = Vec::new();
            for batch in df.collect().await? {
                let column = batch.column_by_name("name").unwrap().as_string::<i32>();
                names.extend(column.iter().map(|n| n.unwrap_or("null").to_string()));
            }
            seen.lock().unwrap().push((id, names));
            let mut crashed = crashed.lock().unwrap();
            if crash_at == Some(id) && !*crashed {
                *crashed = true;
                return Err(FlumenError::IllegalState("simulated crash".into()));
            }
            Ok(())
        }
    })
}

fn names_stream(session: &StreamSession, dir: &Path, max_files: Option<u64>) -> StreamFrame {
    let mut reader = session.read_stream().schema_ddl("name STRING").unwrap();
    if let Some(n) = max_files {
        reader = reader.max_files_per_trigger(n);
    }
    reader.json(dir).unwrap()
}

fn batches(seen: &Seen) -> Vec<(u64, Vec<String>)> {
    seen.lock().unwrap().clone()
}

fn owned(batches: &[(u64, &[&str])]) -> Vec<(u64, Vec<String>)> {
    batches
        .iter()
        .map(|(id, names)| (*id, names.iter().map(|n| n.to_string()).collect()))
        .collect()
}

/// The file names listed in a file source's log entry `n`.
fn logged_files(checkpoint: &Path, n: u64) -> Vec<String> {
    let text = std::fs::read_to_string(checkpoint.join(format!("sources/0/files/{n}"))).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("v1"));
    lines
        .map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            let path = entry["path"].as_str().unwrap();
            assert!(path.starts_with("file:///"), "{path}");
            assert_eq!(entry["batchId"], n);
            path.rsplit('/').next().unwrap().to_string()
        })
        .collect()
}

async fn run_available_now(writer: DataStreamWriter) -> StreamingQuery {
    let query = writer.trigger(Trigger::AvailableNow).start().await.unwrap();
    assert!(query.await_termination(None).await.unwrap());
    query
}

// ---------------------------------------------------------------------------------------------
// Source: formats

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_lines_directory_streams_its_rows() {
    let input = temp_dir();
    write_at(
        input.path(),
        "a.json",
        b"{\"id\":1,\"name\":\"Ann\",\"city\":\"Oslo\"}\n{\"id\":2,\"name\":\"Bob\"}\n",
        T0,
    );
    write_at(
        input.path(),
        "b.json",
        b"\n{\"id\":3,\"name\":\"Cid\",\"extra\":true}\r\n",
        T0 + 1,
    );
    let session = StreamSession::new();
    let query = run_available_now(
        session
            .read_stream()
            .format("json")
            .schema_ddl("id INT, name STRING, city STRING")
            .unwrap()
            .load(input.path())
            .unwrap()
            .write_stream()
            .memory()
            .query_name("people"),
    )
    .await;
    assert_eq!(query.recent_progress().len(), 1);
    assert_eq!(
        sql_table(&session, "SELECT * FROM people").await,
        "+----+------+------+\n\
         | id | name | city |\n\
         +----+------+------+\n\
         | 1  | Ann  | Oslo |\n\
         | 2  | Bob  |      |\n\
         | 3  | Cid  |      |\n\
         +----+------+------+"
    );
    let source = &query.last_progress().unwrap().sources[0];
    assert!(source.description.starts_with("FileStreamSource[file:///"));
    assert_eq!(source.start_offset, serde_json::json!({"logOffset": -1}));
    assert_eq!(source.end_offset, serde_json::json!({"logOffset": 0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_directory_streams_with_sparks_csv_options() {
    let input = temp_dir();
    write_at(
        input.path(),
        "a.csv",
        b"id;name;age\n1;\"Kelly; Jim\";34\n2;Anna;NA\n",
        T0,
    );
    write_at(input.path(), "b.csv", b"id;name;age\n3;Cid;x\n", T0 + 1);
    let session = StreamSession::new();
    run_available_now(
        session
            .read_stream()
            .schema_ddl("id BIGINT, name STRING, age DOUBLE, _corrupt_record STRING")
            .unwrap()
            .option("header", true)
            .option("sep", ";")
            .option("nullValue", "NA")
            .csv(input.path())
            .unwrap()
            .write_stream()
            .memory()
            .query_name("people_csv"),
    )
    .await;
    assert_eq!(
        sql_table(&session, "SELECT * FROM people_csv").await,
        "+----+------------+------+-----------------+\n\
         | id | name       | age  | _corrupt_record |\n\
         +----+------------+------+-----------------+\n\
         | 1  | Kelly; Jim | 34.0 |                 |\n\
         | 2  | Anna       |      |                 |\n\
         | 3  | Cid        |      | 3;Cid;x         |\n\
         +----+------------+------+-----------------+"
    );
}

fn parquet_bytes(batch: &RecordBatch) -> Vec<u8> {
    let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_directory_streams_columns_by_name_cast_to_the_schema() {
    let input = temp_dir();
    // The first file has the columns in another order, `id` as INT32 and an extra column.
    let first = RecordBatch::try_from_iter([
        (
            "name",
            Arc::new(StringArray::from(vec!["Ann", "Bob"])) as ArrayRef,
        ),
        ("id", Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef),
        ("extra", Arc::new(Int32Array::from(vec![9, 9])) as ArrayRef),
    ])
    .unwrap();
    // The second lacks `name`.
    let second =
        RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from(vec![3])) as ArrayRef)])
            .unwrap();
    write_at(input.path(), "a.parquet", &parquet_bytes(&first), T0);
    write_at(input.path(), "b.parquet", &parquet_bytes(&second), T0 + 1);
    let session = StreamSession::new();
    run_available_now(
        session
            .read_stream()
            .schema_ddl("id BIGINT, name STRING")
            .unwrap()
            .parquet(input.path())
            .unwrap()
            .write_stream()
            .memory()
            .query_name("people_parquet"),
    )
    .await;
    assert_eq!(
        sql_table(&session, "SELECT * FROM people_parquet").await,
        "+----+------+\n\
         | id | name |\n\
         +----+------+\n\
         | 1  | Ann  |\n\
         | 2  | Bob  |\n\
         | 3  |      |\n\
         +----+------+"
    );
    let schema = session
        .sql("SELECT * FROM people_parquet")
        .await
        .unwrap()
        .schema();
    assert_eq!(schema.field(0).data_type(), &DataType::Int64);
}

// ---------------------------------------------------------------------------------------------
// Source: which files, in which batches

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_files_per_trigger_takes_files_oldest_first() {
    let input = temp_dir();
    let checkpoint = temp_dir();
    // Names and modification times disagree: the times decide; equal times go by name.
    name_file(input.path(), "e", T0 + 1);
    name_file(input.path(), "d", T0 + 2);
    name_file(input.path(), "c", T0 + 3);
    name_file(input.path(), "a", T0 + 5);
    name_file(input.path(), "b", T0 + 5);
    let session = StreamSession::new();
    let seen = Seen::default();
    let query = run_available_now(
        recording(
            names_stream(&session, input.path(), Some(2)).write_stream(),
            Arc::clone(&seen),
            None,
        )
        .checkpoint_location(checkpoint.path()),
    )
    .await;
    assert_eq!(
        batches(&seen),
        owned(&[(0, &["e", "d"]), (1, &["c", "a"]), (2, &["b"])])
    );
    let sizes: Vec<u64> = query
        .recent_progress()
        .iter()
        .map(|p| p.num_input_rows)
        .collect();
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(logged_files(checkpoint.path(), 0), ["e.json", "d.json"]);
    assert_eq!(logged_files(checkpoint.path(), 1), ["c.json", "a.json"]);
    assert_eq!(logged_files(checkpoint.path(), 2), ["b.json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_first_takes_the_newest_files_first() {
    let input = temp_dir();
    name_file(input.path(), "a", T0 + 1);
    name_file(input.path(), "b", T0 + 2);
    name_file(input.path(), "c", T0 + 3);
    let session = StreamSession::new();
    let seen = Seen::default();
    let checkpoint = temp_dir();
    run_available_now(
        recording(
            session
                .read_stream()
                .schema_ddl("name STRING")
                .unwrap()
                .max_files_per_trigger(1)
                .latest_first(true)
                .json(input.path())
                .unwrap()
                .write_stream(),
            Arc::clone(&seen),
            None,
        )
        .checkpoint_location(checkpoint.path()),
    )
    .await;
    assert_eq!(
        batches(&seen),
        owned(&[(0, &["c"]), (1, &["b"]), (2, &["a"])])
    );

    // Without a limit, latestFirst orders the files of the one batch.
    let seen = Seen::default();
    let checkpoint = temp_dir();
    run_available_now(
        recording(
            session
                .read_stream()
                .schema_ddl("name STRING")
                .unwrap()
                .latest_first(true)
                .json(input.path())
                .unwrap()
                .write_stream(),
            Arc::clone(&seen),
            None,
        )
        .checkpoint_location(checkpoint.path()),
    )
    .await;
    assert_eq!(batches(&seen), owned(&[(0, &["c", "b", "a"])]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_file_age_ignores_files_older_than_the_newest_taken_minus_the_age() {
    let input = temp_dir();
    let checkpoint = temp_dir();
    // The first batch takes every file, however old (Spark's rule).
    name_file(input.path(), "ancient", T0 - 30 * DAY);
    name_file(input.path(), "newest", T0);
    let session = StreamSession::new();
    let seen = Seen::default();
    let start = || {
        recording(
            session
                .read_stream()
                .schema_ddl("name STRING")
                .unwrap()
                .max_file_age("7d")
                .json(input.path())
                .unwrap()
                .write_stream(),
            Arc::clone(&seen),
            None,
        )
        .checkpoint_location(checkpoint.path())
        .start()
    };
    let query = start().await.unwrap();
    query.process_all_available().await.unwrap();
    // Older than the newest taken file (T0) minus 7 days: ignored; younger: read.
    name_file(input.path(), "eight_days_old", T0 - 8 * DAY);
    name_file(input.path(), "one_day_old", T0 - DAY);
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(
        batches(&seen),
        owned(&[(0, &["ancient", "newest"]), (1, &["one_day_old"])])
    );

    // A restart restores the rule from the file log.
    name_file(input.path(), "nine_days_old", T0 - 9 * DAY);
    name_file(input.path(), "six_days_old", T0 - 6 * DAY);
    let query = start().await.unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(
        batches(&seen).last(),
        Some(&(2, vec!["six_days_old".to_string()]))
    );
    assert_eq!(batches(&seen).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_added_while_the_query_runs_is_picked_up_once_complete() {
    let input = temp_dir();
    name_file(input.path(), "a", T0);
    let session = StreamSession::new();
    let seen = Seen::default();
    let checkpoint = temp_dir();
    let query = recording(
        names_stream(&session, input.path(), None).write_stream(),
        Arc::clone(&seen),
        None,
    )
    .checkpoint_location(checkpoint.path())
    .start()
    .await
    .unwrap();
    query.process_all_available().await.unwrap();

    // Hidden files, `_` files and files still being written are not data.
    name_file(input.path(), ".hidden", T0 + 1);
    name_file(input.path(), "_underscore", T0 + 1);
    write_at(input.path(), "b.json.tmp", b"{\"name\":\"b\"}\n", T0 + 1);
    write_at(
        input.path(),
        "c.json._COPYING_",
        b"{\"name\":\"c\"}\n",
        T0 + 1,
    );
    query.process_all_available().await.unwrap();
    assert_eq!(batches(&seen), owned(&[(0, &["a"])]));

    // Renamed into place, the file is read by the next batch.
    std::fs::rename(input.path().join("b.json.tmp"), input.path().join("b.json")).unwrap();
    query.process_all_available().await.unwrap();
    // Rewriting a file that was read does not read it again.
    name_file(input.path(), "a", T0 + 2);
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(batches(&seen), owned(&[(0, &["a"]), (1, &["b"])]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_name_only_counts_a_file_seen_by_its_name() {
    let input = temp_dir();
    name_file(input.path(), "a", T0);
    let session = StreamSession::new();
    let seen = Seen::default();
    let checkpoint = temp_dir();
    let start = || {
        recording(
            session
                .read_stream()
                .schema_ddl("name STRING")
                .unwrap()
                .file_name_only(true)
                .json(input.path())
                .unwrap()
                .write_stream(),
            Arc::clone(&seen),
            None,
        )
        .checkpoint_location(checkpoint.path())
    };
    run_available_now(start()).await;
    // The same name in a subdirectory is the same file.
    write_at(
        input.path(),
        "sub/a.json",
        b"{\"name\":\"a again\"}\n",
        T0 + 1,
    );
    name_file(input.path(), "b", T0 + 1);
    run_available_now(start()).await;
    assert_eq!(batches(&seen), owned(&[(0, &["a"]), (1, &["b"])]));
}

// ---------------------------------------------------------------------------------------------
// Source: restarts read each file exactly once

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_query_reads_only_files_it_has_not_read() {
    let input = temp_dir();
    let checkpoint = temp_dir();
    name_file(input.path(), "a", T0 + 1);
    name_file(input.path(), "b", T0 + 2);
    let session = StreamSession::new();
    let seen = Seen::default();
    let run = || {
        run_available_now(
            recording(
                names_stream(&session, input.path(), Some(1)).write_stream(),
                Arc::clone(&seen),
                None,
            )
            .checkpoint_location(checkpoint.path()),
        )
    };
    run().await;
    name_file(input.path(), "c", T0 + 3);
    name_file(input.path(), "d", T0 + 4);
    run().await;
    run().await; // nothing new: no batch
    assert_eq!(
        batches(&seen),
        owned(&[(0, &["a"]), (1, &["b"]), (2, &["c"]), (3, &["d"])])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_crashed_before_its_commit_rereads_exactly_its_files() {
    let input = temp_dir();
    let checkpoint = temp_dir();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        name_file(input.path(), name, T0 + i as u64);
    }
    let session = StreamSession::new();
    let seen = Seen::default();

    // Run 1 fails in batch 1, after its sink saw the rows and before commits/1.
    let query = recording(
        names_stream(&session, input.path(), Some(1)).write_stream(),
        Arc::clone(&seen),
        Some(1),
    )
    .checkpoint_location(checkpoint.path())
    .start()
    .await
    .unwrap();
    let error = query.await_termination(None).await.unwrap_err().to_string();
    assert!(error.contains("simulated crash"), "{error}");
    assert!(!checkpoint.path().join("commits/1").exists());

    // A newer file arrives meanwhile; run 2 re-runs batch 1 with exactly its logged file.
    name_file(input.path(), "0_newest_but_first_by_name", T0 + 10);
    run_available_now(
        recording(
            names_stream(&session, input.path(), Some(1)).write_stream(),
            Arc::clone(&seen),
            None,
        )
        .checkpoint_location(checkpoint.path()),
    )
    .await;
    assert_eq!(
        batches(&seen),
        owned(&[
            (0, &["a"]),
            (1, &["b"]),
            (1, &["b"]), // the same batch again: same id, same file
            (2, &["c"]),
            (3, &["0_newest_but_first_by_name"]),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_rerun_after_its_commit_is_deleted_reads_the_same_files() {
    let input = temp_dir();
    let checkpoint = temp_dir();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        name_file(input.path(), name, T0 + i as u64);
    }
    let session = StreamSession::new();
    let seen = Seen::default();
    let run = || {
        run_available_now(
            recording(
                names_stream(&session, input.path(), Some(2)).write_stream(),
                Arc::clone(&seen),
                None,
            )
            .checkpoint_location(checkpoint.path()),
        )
    };
    run().await;
    assert_eq!(batches(&seen), owned(&[(0, &["a", "b"]), (1, &["c"])]));

    // As if the run had died after batch 1's sink and before commits/1.
    std::fs::remove_file(checkpoint.path().join("commits/1")).unwrap();
    name_file(input.path(), "d", T0 + 5);
    run().await;
    assert_eq!(
        batches(&seen),
        owned(&[(0, &["a", "b"]), (1, &["c"]), (1, &["c"]), (2, &["d"])])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_logged_by_a_run_that_died_before_its_offsets_are_the_next_batch() {
    let input = temp_dir();
    let checkpoint = temp_dir();
    for (i, name) in ["a", "b"].iter().enumerate() {
        name_file(input.path(), name, T0 + i as u64);
    }
    let session = StreamSession::new();
    let seen = Seen::default();
    let run = || {
        run_available_now(
            recording(
                names_stream(&session, input.path(), Some(1)).write_stream(),
                Arc::clone(&seen),
                None,
            )
            .checkpoint_location(checkpoint.path()),
        )
    };
    run().await;
    // As if the run had died after logging batch 1's files and before offsets/1.
    for file in ["offsets/1", "commits/1"] {
        std::fs::remove_file(checkpoint.path().join(file)).unwrap();
    }
    assert_eq!(logged_files(checkpoint.path(), 1), ["b.json"]);
    name_file(input.path(), "0_first_by_name", T0 + 5);
    run().await;
    assert_eq!(
        batches(&seen),
        owned(&[
            (0, &["a"]),
            (1, &["b"]),
            (1, &["b"]),
            (2, &["0_first_by_name"])
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// Source: bad input

const PEOPLE_JSON: &[u8] = b"{\"id\":1,\"name\":\"Ann\"}\n\
{\"id\":2,\"name\":}\n\
not json at all\n\
{\"id\":\"three\",\"name\":\"Cid\"}\n\
\n\
{\"id\":4,\"name\":\"Dan\"}\n";

async fn read_people(
    session: &StreamSession,
    ddl: &str,
    mode: Option<&str>,
    table: &str,
) -> StreamingQuery {
    let input = temp_dir();
    write_at(input.path(), "people.json", PEOPLE_JSON, T0);
    let mut reader = session.read_stream().schema_ddl(ddl).unwrap();
    if let Some(mode) = mode {
        reader = reader.option("mode", mode);
    }
    let query = reader
        .json(input.path())
        .unwrap()
        .write_stream()
        .memory()
        .query_name(table)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    let _ = query.await_termination(None).await;
    drop(input);
    query
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_lines_are_null_rows_with_their_text_in_the_corrupt_record_column() {
    let session = StreamSession::new();
    read_people(
        &session,
        "id INT, name STRING, _corrupt_record STRING",
        None,
        "with_corrupt",
    )
    .await;
    assert_eq!(
        sql_table(&session, "SELECT * FROM with_corrupt").await,
        "+----+------+-----------------------------+\n\
         | id | name | _corrupt_record             |\n\
         +----+------+-----------------------------+\n\
         | 1  | Ann  |                             |\n\
         |    |      | {\"id\":2,\"name\":}            |\n\
         |    |      | not json at all             |\n\
         |    |      | {\"id\":\"three\",\"name\":\"Cid\"} |\n\
         | 4  | Dan  |                             |\n\
         +----+------+-----------------------------+"
    );
    // Without a corrupt-record column the rows are still there, all null.
    read_people(&session, "id INT, name STRING", None, "without_corrupt").await;
    assert_eq!(
        sql_table(&session, "SELECT * FROM without_corrupt").await,
        "+----+------+\n\
         | id | name |\n\
         +----+------+\n\
         | 1  | Ann  |\n\
         |    |      |\n\
         |    |      |\n\
         |    |      |\n\
         | 4  | Dan  |\n\
         +----+------+"
    );
    read_people(
        &session,
        "id INT, name STRING",
        Some("DROPMALFORMED"),
        "dropped",
    )
    .await;
    assert_eq!(
        sql_table(&session, "SELECT id FROM dropped").await,
        "+----+\n| id |\n+----+\n| 1  |\n| 4  |\n+----+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failfast_stops_the_query_naming_the_file_and_line() {
    let session = StreamSession::new();
    let query = read_people(
        &session,
        "id INT, name STRING",
        Some("FAILFAST"),
        "failfast",
    )
    .await;
    let error = query.exception().unwrap().to_string();
    assert!(error.contains("people.json:2"), "{error}");
    assert!(error.contains("FAILFAST"), "{error}");
    assert!(error.contains("{\"id\":2,\"name\":}"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_parquet_stops_the_query_naming_the_file() {
    let good =
        RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef)])
            .unwrap();
    let bytes = parquet_bytes(&good);
    for (name, content) in [
        ("garbage.parquet", b"this is not a parquet file".to_vec()),
        ("truncated.parquet", bytes[..bytes.len() / 2].to_vec()),
    ] {
        let input = temp_dir();
        write_at(input.path(), "good.parquet", &bytes, T0);
        write_at(input.path(), name, &content, T0 + 1);
        let session = StreamSession::new();
        let checkpoint = temp_dir();
        let query = session
            .read_stream()
            .schema_ddl("id BIGINT")
            .unwrap()
            .parquet(input.path())
            .unwrap()
            .write_stream()
            .memory()
            .query_name("ids")
            .checkpoint_location(checkpoint.path())
            .trigger(Trigger::AvailableNow)
            .start()
            .await
            .unwrap();
        let error = query.await_termination(None).await.unwrap_err().to_string();
        assert!(error.contains(name), "{error}");
        assert!(error.contains("is not a readable Parquet file"), "{error}");
        // Nothing of the failed batch reached the sink or was committed.
        assert_eq!(
            sql_table(&session, "SELECT count(*) AS n FROM ids").await,
            "+---+\n| n |\n+---+\n| 0 |\n+---+"
        );
        assert!(!checkpoint.path().join("commits/0").exists());

        // A static read fails the same way.
        let error = session
            .read()
            .parquet(input.path())
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(name), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_without_a_schema_or_directory_is_refused_with_sparks_messages() {
    let session = StreamSession::new();
    let dir = temp_dir();
    let error = session
        .read_stream()
        .format("json")
        .load(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(
            "Schema must be specified when creating a streaming source DataFrame. If some files already exist in the directory, then depending on the file format you may be able to create a static DataFrame on that directory with 'spark.read.load(directory)' and infer schema from it."
        ),
        "{error}"
    );
    let error = session
        .read_stream()
        .schema_ddl("a INT")
        .unwrap()
        .json(dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("Path does not exist: "), "{error}");
    let error = session
        .read_stream()
        .format("orc")
        .schema_ddl("a INT")
        .unwrap()
        .load(dir.path())
        .unwrap_err()
        .to_string();
    assert!(error.contains("'orc' is not a file format"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Sink

fn events(rows: &[(i64, &str)]) -> RecordBatch {
    RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        (
            "city",
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
    ])
    .unwrap()
}

/// The data files under `dir` (not hidden, not the metadata log), relative, sorted.
fn data_files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if name.starts_with('_') || name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

async fn start_file_sink(
    session: &StreamSession,
    input: &Arc<MemoryStream>,
    format: &str,
    out: &Path,
    checkpoint: &Path,
) -> StreamingQuery {
    session
        .stream(input.clone())
        .unwrap()
        .write_stream()
        .format(format)
        .option("path", out.display())
        .checkpoint_location(checkpoint)
        .start()
        .await
        .unwrap()
}

async fn read_json_table(session: &StreamSession, dir: &Path) -> String {
    let frame = session.read().json(dir).await.unwrap();
    let rows = session
        .frame(frame)
        .order_by([col("id")])
        .unwrap()
        .collect()
        .await
        .unwrap();
    pretty_format_batches(&rows).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_sink_commits_each_batch_in_spark_metadata() {
    let (out, checkpoint) = (temp_dir(), temp_dir());
    let session = StreamSession::new();
    let input = Arc::new(MemoryStream::new("events", events(&[]).schema()));
    let query = start_file_sink(&session, &input, "json", out.path(), checkpoint.path()).await;
    input
        .add_batch(events(&[(1, "Oslo"), (2, "Rome")]))
        .unwrap();
    query.process_all_available().await.unwrap();
    input.add_batch(events(&[(3, "Oslo")])).unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();

    let files = data_files_under(out.path());
    assert_eq!(files.len(), 2, "{files:?}");
    for file in &files {
        assert!(
            file.starts_with("part-00000-") && file.ends_with(".c000.json"),
            "{file}"
        );
    }
    // Each batch's entry: `v1`, then its file with Spark's fields.
    let mut committed = Vec::new();
    for batch in 0..2 {
        let text =
            std::fs::read_to_string(out.path().join(format!("_spark_metadata/{batch}"))).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0], "v1");
        let entry: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        let mut keys: Vec<&String> = entry.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "action",
                "blockReplication",
                "blockSize",
                "isDir",
                "modificationTime",
                "path",
                "size"
            ]
        );
        // In Spark's order.
        let positions: Vec<usize> = [
            "{\"path\":\"file:///",
            ",\"size\":",
            ",\"isDir\":",
            ",\"modificationTime\":",
            ",\"blockReplication\":",
            ",\"blockSize\":",
            ",\"action\":",
        ]
        .iter()
        .map(|key| lines[1].find(key).unwrap())
        .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{}", lines[1]);
        assert_eq!(entry["action"], "add");
        assert_eq!(entry["isDir"], false);
        assert_eq!(entry["blockReplication"], 1);
        assert_eq!(entry["blockSize"], 33_554_432);
        let path = PathBuf::from(
            entry["path"]
                .as_str()
                .unwrap()
                .strip_prefix("file://")
                .unwrap(),
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            entry["size"].as_u64().unwrap()
        );
        committed.push(std::fs::read_to_string(&path).unwrap());
    }
    assert_eq!(
        committed,
        [
            "{\"id\":1,\"city\":\"Oslo\"}\n{\"id\":2,\"city\":\"Rome\"}\n",
            "{\"id\":3,\"city\":\"Oslo\"}\n"
        ]
    );
    assert_eq!(
        read_json_table(&session, out.path()).await,
        "+------+----+\n\
         | city | id |\n\
         +------+----+\n\
         | Oslo | 1  |\n\
         | Rome | 2  |\n\
         | Oslo | 3  |\n\
         +------+----+"
    );

    // Another query (a new checkpoint) on this directory would have its batches 0 and 1
    // skipped as already written: it is refused instead.
    let other_checkpoint = temp_dir();
    let query = start_file_sink(
        &session,
        &input,
        "json",
        out.path(),
        other_checkpoint.path(),
    )
    .await;
    let error = query.await_termination(None).await.unwrap_err().to_string();
    assert!(error.contains("lists batches up to 1"), "{error}");
    assert!(
        error.contains("another query wrote this directory"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_holding_only_another_querys_batch_0_is_refused() {
    let (out, checkpoint) = (temp_dir(), temp_dir());
    let session = StreamSession::new();
    let input = Arc::new(MemoryStream::new("events", events(&[]).schema()));
    let query = start_file_sink(&session, &input, "json", out.path(), checkpoint.path()).await;
    input.add_batch(events(&[(1, "Oslo")])).unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    // A new checkpoint never planned a batch 0: the log's batch 0 is someone else's, and this
    // query's own batch 0 would be skipped as written.
    let other_checkpoint = temp_dir();
    let other = start_file_sink(
        &session,
        &input,
        "json",
        out.path(),
        other_checkpoint.path(),
    )
    .await;
    let error = other.await_termination(None).await.unwrap_err().to_string();
    assert!(error.contains("lists batches up to 0"), "{error}");
    // The query that wrote it restarts fine.
    let again = start_file_sink(&session, &input, "json", out.path(), checkpoint.path()).await;
    input.add_batch(events(&[(2, "Rome")])).unwrap();
    again.process_all_available().await.unwrap();
    again.stop().await.unwrap();
    assert_eq!(
        read_json_table(&session, out.path()).await,
        "+------+----+\n| city | id |\n+------+----+\n| Oslo | 1  |\n| Rome | 2  |\n+------+----+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_batch_already_in_spark_metadata_is_not_written_again() {
    let (out, checkpoint) = (temp_dir(), temp_dir());
    let session = StreamSession::new();
    let input = Arc::new(MemoryStream::new("events", events(&[]).schema()));
    input.add_batch(events(&[(1, "Oslo")])).unwrap();
    let query = start_file_sink(&session, &input, "json", out.path(), checkpoint.path()).await;
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let before = data_files_under(out.path());

    // The crash came after the sink's commit and before the checkpoint's: batch 0 re-runs.
    std::fs::remove_file(checkpoint.path().join("commits/0")).unwrap();
    let query = start_file_sink(&session, &input, "json", out.path(), checkpoint.path()).await;
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert!(checkpoint.path().join("commits/0").exists());
    assert_eq!(data_files_under(out.path()), before);
    assert_eq!(
        read_json_table(&session, out.path()).await,
        "+------+----+\n\
         | city | id |\n\
         +------+----+\n\
         | Oslo | 1  |\n\
         +------+----+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_a_batch_that_never_committed_are_invisible_to_readers() {
    let (out, checkpoint) = (temp_dir(), temp_dir());
    let session = StreamSession::new();
    let input = Arc::new(MemoryStream::new("events", events(&[]).schema()));
    let query = start_file_sink(&session, &input, "json", out.path(), checkpoint.path()).await;
    input.add_batch(events(&[(1, "Oslo")])).unwrap();
    query.process_all_available().await.unwrap();
    input.add_batch(events(&[(2, "Rome")])).unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();

    // As if the run had died after writing batch 1's file, before committing it.
    std::fs::remove_file(out.path().join("_spark_metadata/1")).unwrap();
    std::fs::remove_file(checkpoint.path().join("commits/1")).unwrap();
    assert_eq!(data_files_under(out.path()).len(), 2);
    let only_batch_0 = "+------+----+\n\
                        | city | id |\n\
                        +------+----+\n\
                        | Oslo | 1  |\n\
                        +------+----+";
    assert_eq!(read_json_table(&session, out.path()).await, only_batch_0);
    // A file source over the directory sees only committed files too.
    let seen = Seen::default();
    let cities_checkpoint = temp_dir();
    let cities = session
        .read_stream()
        .schema_ddl("id BIGINT, city STRING")
        .unwrap()
        .json(out.path())
        .unwrap()
        .select_expr(["city AS name"])
        .unwrap();
    run_available_now(
        recording(cities.write_stream(), Arc::clone(&seen), None)
            .checkpoint_location(cities_checkpoint.path()),
    )
    .await;
    assert_eq!(batches(&seen), owned(&[(0, &["Oslo"])]));

    // The restarted query re-runs batch 1: new files, committed once; the orphan stays unread.
    let query = start_file_sink(&session, &input, "json", out.path(), checkpoint.path()).await;
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(data_files_under(out.path()).len(), 3);
    assert_eq!(
        read_json_table(&session, out.path()).await,
        "+------+----+\n\
         | city | id |\n\
         +------+----+\n\
         | Oslo | 1  |\n\
         | Rome | 2  |\n\
         +------+----+"
    );
    // A CSV read of a sink's directory honours the log as well.
    let csv_out = temp_dir();
    let csv_checkpoint = temp_dir();
    let query = start_file_sink(
        &session,
        &input,
        "csv",
        csv_out.path(),
        csv_checkpoint.path(),
    )
    .await;
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    write_at(
        csv_out.path(),
        "part-99999-uncommitted.c000.csv",
        b"9,Nowhere\n",
        T0,
    );
    let rows = session
        .read()
        .schema_ddl("id BIGINT, city STRING")
        .unwrap()
        .csv(csv_out.path())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut ids: Vec<i64> = rows
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<flumen::datafusion::arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_read_of_a_partitioned_sink_directory_gets_the_partition_column() {
    let (out, checkpoint) = (temp_dir(), temp_dir());
    let session = StreamSession::new();
    let input = Arc::new(MemoryStream::new("events", events(&[]).schema()));
    input
        .add_batch(events(&[(1, "Oslo"), (2, "Rome"), (3, "Oslo")]))
        .unwrap();
    let query = session
        .stream(input.clone())
        .unwrap()
        .write_stream()
        .format("csv")
        .path(out.path())
        .partition_by(["city"])
        .checkpoint_location(checkpoint.path())
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    // An uncommitted file in a partition directory stays invisible.
    write_at(
        &out.path().join("city=Oslo"),
        "part-99999-uncommitted.c000.csv",
        b"9\n",
        T0,
    );
    for schema in [Some("id BIGINT, city STRING"), None] {
        let mut reader = session.read();
        if let Some(ddl) = schema {
            reader = reader.schema_ddl(ddl).unwrap();
        }
        let frame = reader.csv(out.path()).await.unwrap();
        let rows = session
            .frame(frame)
            .order_by([
                col("city"),
                col(if schema.is_some() { "id" } else { "_c0" }),
            ])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let header = if schema.is_some() { "id" } else { "_c0" };
        assert_eq!(
            pretty_format_batches(&rows).unwrap().to_string(),
            format!(
                "+{dash}+------+\n| {header} | city |\n+{dash}+------+\n| 1{pad} | Oslo |\n| 3{pad} | Oslo |\n| 2{pad} | Rome |\n+{dash}+------+",
                dash = "-".repeat(header.len() + 2),
                pad = " ".repeat(header.len() - 1),
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_value_that_does_not_fit_the_schema_is_an_error_not_a_null() {
    let input = temp_dir();
    let batch = RecordBatch::try_from_iter([(
        "id",
        Arc::new(StringArray::from(vec!["1", "abc"])) as ArrayRef,
    )])
    .unwrap();
    write_at(input.path(), "a.parquet", &parquet_bytes(&batch), T0);
    let session = StreamSession::new();
    let error = session
        .read()
        .schema_ddl("id BIGINT")
        .unwrap()
        .parquet(input.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(
            "Parquet column cannot be converted. Column: id, Expected: Int64, Found: Utf8"
        ),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_by_writes_hive_directories_read_back_as_columns() {
    let (out, checkpoint) = (temp_dir(), temp_dir());
    let session = StreamSession::new();
    let input = Arc::new(MemoryStream::new("events", events(&[]).schema()));
    input
        .add_batch(events(&[(1, "Oslo"), (2, "São Paulo/SP"), (3, "Oslo")]))
        .unwrap();
    let query = session
        .stream(input.clone())
        .unwrap()
        .write_stream()
        .format("parquet")
        .path(out.path())
        .partition_by(["city"])
        .checkpoint_location(checkpoint.path())
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();

    let files = data_files_under(out.path());
    let directories: Vec<&str> = files
        .iter()
        .map(|f| f.rsplit_once('/').unwrap().0)
        .collect();
    assert_eq!(directories, ["city=Oslo", "city=São Paulo%2FSP"]);
    assert!(
        files.iter().all(|f| f.ends_with(".c000.snappy.parquet")),
        "{files:?}"
    );
    // The files hold the other columns only.
    let oslo = session
        .read()
        .parquet(out.path().join(&files[0]))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        pretty_format_batches(&oslo).unwrap().to_string(),
        "+----+\n| id |\n+----+\n| 1  |\n| 3  |\n+----+"
    );
    // Read back, the partition column comes from the directory names.
    let all = session.read().parquet(out.path()).await.unwrap();
    let rows = session
        .frame(all)
        .order_by([col("id")])
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        pretty_format_batches(&rows).unwrap().to_string(),
        "+----+--------------+\n\
         | id | city         |\n\
         +----+--------------+\n\
         | 1  | Oslo         |\n\
         | 2  | São Paulo/SP |\n\
         | 3  | Oslo         |\n\
         +----+--------------+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_parquet_sinks_round_trip_through_streams_and_batch_reads() {
    let session = StreamSession::new();
    let input = Arc::new(MemoryStream::new("events", events(&[]).schema()));
    input
        .add_batch(events(&[(1, "Oslo, Norway"), (2, "Rome")]))
        .unwrap();
    for format in ["csv", "parquet"] {
        let (out, checkpoint) = (temp_dir(), temp_dir());
        let query = start_file_sink(&session, &input, format, out.path(), checkpoint.path()).await;
        query.process_all_available().await.unwrap();
        query.stop().await.unwrap();
        let table = format!("back_{format}");
        run_available_now(
            session
                .read_stream()
                .format(format)
                .schema_ddl("id BIGINT, city STRING")
                .unwrap()
                .load(out.path())
                .unwrap()
                .write_stream()
                .memory()
                .query_name(&table),
        )
        .await;
        assert_eq!(
            sql_table(&session, &format!("SELECT * FROM {table} ORDER BY id")).await,
            "+----+--------------+\n\
             | id | city         |\n\
             +----+--------------+\n\
             | 1  | Oslo, Norway |\n\
             | 2  | Rome         |\n\
             +----+--------------+",
            "{format}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_sink_refuses_other_modes_and_missing_settings_with_sparks_messages() {
    let session = StreamSession::new();
    let input = Arc::new(MemoryStream::new("events", events(&[]).schema()));
    let stream = session.stream(input.clone()).unwrap();
    let out = temp_dir();
    let checkpoint = temp_dir();
    let error = start_error(
        stream
            .write_stream()
            .format("json")
            .path(out.path())
            .checkpoint_location(checkpoint.path())
            .output_mode(OutputMode::Update),
    )
    .await;
    assert_eq!(
        error,
        "Data source json does not support Update output mode"
    );
    let counts = stream.group_by([col("city")]).count().unwrap();
    let error = start_error(
        counts
            .write_stream()
            .format("parquet")
            .path(out.path())
            .checkpoint_location(checkpoint.path())
            .output_mode(OutputMode::Complete),
    )
    .await;
    assert_eq!(
        error,
        "Data source parquet does not support Complete output mode"
    );
    let error = start_error(stream.write_stream().format("csv").path(out.path())).await;
    assert!(
        error.contains("checkpointLocation must be specified"),
        "{error}"
    );
    let error = start_error(
        stream
            .write_stream()
            .format("json")
            .checkpoint_location(checkpoint.path()),
    )
    .await;
    assert!(error.contains("'path' is not specified"), "{error}");
    let error = start_error(
        stream
            .write_stream()
            .format("json")
            .path(out.path())
            .partition_by(["country"])
            .checkpoint_location(checkpoint.path()),
    )
    .await;
    assert!(
        error.contains("Partition column `country` not found in schema (id, city)"),
        "{error}"
    );
    let error = start_error(
        stream
            .write_stream()
            .format("json")
            .path(out.path())
            .partition_by(["city", "city"])
            .checkpoint_location(checkpoint.path()),
    )
    .await;
    assert!(
        error.contains("Found duplicate column(s) in the partition schema: `city`"),
        "{error}"
    );
    // CSV has no nested values: refused at start, not at the first batch.
    let nested = stream
        .select([col("id"), struct_(vec![col("city")]).alias("place")])
        .unwrap();
    let error = start_error(
        nested
            .write_stream()
            .format("csv")
            .path(out.path())
            .checkpoint_location(checkpoint.path()),
    )
    .await;
    assert!(
        error.contains("The CSV datasource doesn't support the column `place` of the type Struct("),
        "{error}"
    );
    assert!(
        !out.path().join("_spark_metadata").exists(),
        "nothing written"
    );
}
