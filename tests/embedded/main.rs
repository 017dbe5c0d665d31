//! Flumen's integration tests against the embedded broker (librdkafka's mock cluster), with an
//! independent Kafka client writing inputs and reading outputs.

mod api;
mod dead_letters;
mod decode_once;
mod event_time;
mod faults;
mod files;
mod joins;
mod late_rows;
mod listener;
mod monitor;
mod pipeline;
mod restart;
mod static_csv;
mod titanic_time;
