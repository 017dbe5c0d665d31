//! End to end against a real Apache Kafka broker (`scripts/kafka.sh start` in CI). Runs when
//! `FLUMEN_E2E_BOOTSTRAP` names the broker (`host:port`); otherwise every test returns at once
//! and says so.

use std::sync::Arc;

use flumen::prelude::*;
use flumen_examples::titanic;
use flumen_tests::*;

fn broker() -> Option<String> {
    let servers = std::env::var("FLUMEN_E2E_BOOTSTRAP").ok();
    if servers.is_none() {
        eprintln!("FLUMEN_E2E_BOOTSTRAP is not set: skipping the real-broker suite");
    }
    servers
}

fn unique(topic: &str) -> String {
    format!(
        "{topic}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titanic_enrichment_against_a_real_broker() {
    let Some(servers) = broker() else { return };
    let raw = unique("raw-titanic");
    let enriched_topic = unique("enriched-titanic");
    let broker = flumen_examples::Broker::connect(Some(servers.clone())).unwrap();
    broker
        .ensure_topics(&[(raw.as_str(), 2), (enriched_topic.as_str(), 1)])
        .await
        .unwrap();
    let session = StreamSession::new();
    let passengers = session.read_csv(titanic_csv()).await.unwrap();
    let schema = Arc::new(passengers.schema().as_arrow().clone());
    assert_eq!(
        titanic::load_into_kafka(passengers, &session, &servers, &raw, &[])
            .await
            .unwrap(),
        891
    );

    let options = vec![("maxOffsetsPerTrigger".to_string(), "300".to_string())];
    let stream = titanic::enriched_stream(&session, &servers, &raw, &options, schema).unwrap();
    let checkpoint = temp_dir();
    let query = titanic::to_kafka_records(&stream)
        .unwrap()
        .write_stream()
        .kafka()
        .bootstrap_servers(&servers)
        .topic(&enriched_topic)
        .checkpoint_location(checkpoint.path())
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    query.await_termination(None).await.unwrap();
    assert_eq!(
        query
            .recent_progress()
            .iter()
            .map(|p| p.num_input_rows)
            .sum::<u64>(),
        891
    );

    let records = read_topic(&servers, &enriched_topic);
    assert_eq!(records.len(), 891);
    let expected = passengers_from_csv();
    let mut seen = std::collections::BTreeSet::new();
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
        let id = v["PassengerId"].as_i64().unwrap();
        let p = expected.iter().find(|p| p.id == id).unwrap();
        let class = ["First Class", "Second Class", "Third Class"][(p.pclass - 1) as usize];
        assert_eq!(v["ClassName"], class);
        assert_eq!(
            v["is_adult"],
            if p.age.is_some_and(|a| a >= 18.0) {
                "yes"
            } else {
                "no"
            }
        );
        assert!(seen.insert(id));
    }
    // Print the topic name for the CI script's independent (Python) cross-check.
    println!("FLUMEN_E2E_ENRICHED_TOPIC={enriched_topic}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_against_a_real_broker_continues_where_it_stopped() {
    let Some(servers) = broker() else { return };
    let input = unique("restart-in");
    let broker = flumen_examples::Broker::connect(Some(servers.clone())).unwrap();
    broker.ensure_topics(&[(input.as_str(), 1)]).await.unwrap();
    produce_values(&servers, &input, &["0", "1", "2"]);
    let checkpoint = temp_dir();
    let session = StreamSession::new();
    let run = |name: &'static str| {
        let session = session.clone();
        let servers = servers.clone();
        let input = input.clone();
        let path = checkpoint.path().to_path_buf();
        async move {
            let q = session
                .read_stream()
                .kafka()
                .bootstrap_servers(&servers)
                .subscribe([input.as_str()])
                .starting_offsets(StartingOffsets::Earliest)
                .load()
                .unwrap()
                .select_expr(["CAST(value AS STRING) AS v"])
                .unwrap()
                .write_stream()
                .memory()
                .query_name(name)
                .checkpoint_location(path)
                .start()
                .await
                .unwrap();
            q.process_all_available().await.unwrap();
            q.stop().await.unwrap();
        }
    };
    run("first_run").await;
    produce_values(&servers, &input, &["3", "4"]);
    run("second_run").await;
    assert_eq!(
        sql_table(&session, "SELECT v FROM first_run ORDER BY v").await,
        "+---+\n| v |\n+---+\n| 0 |\n| 1 |\n| 2 |\n+---+"
    );
    assert_eq!(
        sql_table(&session, "SELECT v FROM second_run ORDER BY v").await,
        "+---+\n| v |\n+---+\n| 3 |\n| 4 |\n+---+"
    );
}
