//! Static CSV reads with Spark's options, checked against what Spark 4.3 read from the same file.

use std::collections::BTreeMap;

use flumen::datafusion::arrow::array::{Array, AsArray, RecordBatch};
use flumen::datafusion::arrow::compute::concat_batches;
use flumen::datafusion::arrow::datatypes::Int64Type;
use flumen::prelude::*;
use flumen_tests::*;

/// The file's rows as `PassengerId → every column rendered as text`.
async fn rows_by_id(escape: Option<&str>) -> BTreeMap<i64, Vec<String>> {
    let session = StreamSession::new();
    let mut reader = session
        .read()
        .option("header", "true")
        .option("inferSchema", "true");
    if let Some(escape) = escape {
        reader = reader.option("escape", escape);
    }
    let frame = reader.csv(titanic_csv()).await.unwrap();
    let batches = frame.collect().await.unwrap();
    let batch: RecordBatch = concat_batches(&batches[0].schema(), &batches).unwrap();
    let ids = batch.column(0).as_primitive::<Int64Type>();
    let mut rows = BTreeMap::new();
    for row in 0..batch.num_rows() {
        let cells = batch
            .columns()
            .iter()
            .map(|column| {
                if column.is_null(row) {
                    "null".to_string()
                } else {
                    flumen::datafusion::arrow::util::display::array_value_to_string(column, row)
                        .unwrap()
                }
            })
            .collect();
        rows.insert(ids.value(row), cells);
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backslash_escape_reads_the_titanic_file_exactly_as_spark_does() {
    let rfc4180 = rows_by_id(None).await;
    let spark_like = rows_by_id(Some("\\")).await;
    assert_eq!(rfc4180.len(), 891);
    assert_eq!(spark_like.len(), 891);
    const NAME: usize = 3;
    assert_eq!(rfc4180[&23][NAME], r#"McGowan, Miss. Anna "Annie""#);

    // Spark 4.3, `spark.read.option("header", "true").option("inferSchema", "true").csv(..)`:
    // the names it reads differently from RFC 4180 (doubled quotes kept, outer quotes kept).
    let spark_names: BTreeMap<i64, String> = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/spark-titanic-names-with-escape-backslash.tsv"),
    )
    .unwrap()
    .lines()
    .map(|line| {
        let (id, name) = line.split_once('\t').unwrap();
        (id.parse().unwrap(), name.to_string())
    })
    .collect();
    assert_eq!(spark_names.len(), 53);

    let differing: BTreeMap<i64, String> = spark_like
        .iter()
        .filter(|(id, row)| row[NAME] != rfc4180[*id][NAME])
        .map(|(id, row)| (*id, row[NAME].clone()))
        .collect();
    assert_eq!(differing, spark_names);
    for (id, row) in &spark_like {
        let mut other_columns = row.clone();
        other_columns.remove(NAME);
        let mut expected = rfc4180[id].clone();
        expected.remove(NAME);
        assert_eq!(other_columns, expected, "passenger {id}");
    }
}
