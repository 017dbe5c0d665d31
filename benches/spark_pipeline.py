"""Section (g) of Flumen's benchmark suite: the seed's Titanic enrichment in Spark Structured
Streaming, on the records the suite wrote.

Reads the directory of JSON-lines files as a text stream (one file, 200K records, per
trigger), parses each line with `from_json` and the Titanic schema, expands `data.*`, adds
`is_adult`, left-joins the class table and writes to the `noop` sink, available-now: the same
query Flumen runs. One cold run (JVM start-up and JIT warm-up), then `--reps` timed runs in the
same JVM, each with a fresh checkpoint. Prints one JSON line:
{"version", "cold_s", "warm_s": [...], "rows"}.

    python3 benches/spark_pipeline.py --input DIR --rows N --reps R
"""

import argparse
import json
import shutil
import sys
import tempfile
import time

from pyspark import __version__ as PYSPARK_VERSION
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
)

TITANIC = StructType(
    [
        StructField("PassengerId", LongType()),
        StructField("Survived", LongType()),
        StructField("Pclass", LongType()),
        StructField("Name", StringType()),
        StructField("Sex", StringType()),
        StructField("Age", DoubleType()),
        StructField("SibSp", LongType()),
        StructField("Parch", LongType()),
        StructField("Ticket", StringType()),
        StructField("Fare", DoubleType()),
        StructField("Cabin", StringType()),
        StructField("Embarked", StringType()),
    ]
)


def enrichment(spark, input_dir, rows):
    """Runs the query once; returns its wall time in seconds."""
    checkpoint = tempfile.mkdtemp(prefix="flumen-bench-spark-")
    try:
        classes = spark.createDataFrame(
            [(1, "First Class"), (2, "Second Class"), (3, "Third Class")],
            "Pclass BIGINT, ClassName STRING",
        )
        enriched = (
            spark.readStream.option("maxFilesPerTrigger", 1)
            .text(input_dir)
            .select(F.from_json(F.col("value"), TITANIC).alias("data"))
            .select("data.*")
            .withColumn("is_adult", F.when(F.col("Age") >= 18, "yes").otherwise("no"))
            .join(classes, on="Pclass", how="left")
        )
        start = time.perf_counter()
        query = (
            enriched.writeStream.format("noop")
            .option("checkpointLocation", checkpoint)
            .trigger(availableNow=True)
            .start()
        )
        query.awaitTermination()
        elapsed = time.perf_counter() - start
        seen = sum(p["numInputRows"] for p in query.recentProgress)
        if seen != rows:
            sys.exit(f"Spark read {seen} rows, expected {rows}")
        return elapsed
    finally:
        shutil.rmtree(checkpoint, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    spark = (
        SparkSession.builder.master("local[*]")
        .appName("flumen-bench-g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    cold = enrichment(spark, args.input, args.rows)
    warm = [enrichment(spark, args.input, args.rows) for _ in range(max(args.reps, 1))]
    spark.stop()
    print(
        json.dumps(
            {"version": PYSPARK_VERSION, "cold_s": cold, "warm_s": warm, "rows": args.rows}
        )
    )


if __name__ == "__main__":
    main()
