//! Flumen's benchmark suite: every engine path against its baselines in the same process, on
//! the same bytes, interleaved; a table and one JSON line per figure.
//!
//! ```text
//! cargo bench --bench suite -- --quick        # under 3 minutes on 2 cores
//! cargo bench --bench suite                   # the full run, under 15
//! cargo bench --bench suite -- --only a,c     # some sections
//! ```
//!
//! Sections: (a) JSON decode, (b) Kafka end to end, (i) exactly-once vs at-least-once Kafka sink, (c) windowed count, (d) tiny batches and
//! Kafka round trip, (e) checkpoint cost, (f) state bytes per key, (g) the Titanic enrichment
//! against Spark (`pyspark`, installed by `benches/setup.sh`; skipped with a line saying so when
//! it cannot be imported), (h) the same enrichment on one core and on two (`taskset`), with its
//! peak memory, (j) a stream-stream join against a hand-written hash join. Every figure that
//! speaks for the engine runs a real query through the public API; function-level micro-benchmarks say so in their name. Ratios are engine against
//! baseline, measured side by side; targets come from `../shared/reference/benchmarks.md` and
//! the performance issue. Timings are never asserted: a missed target is reported, not failed.

mod alloc;
mod checkpoint;
mod data;
mod decode;
mod e2e;
mod join;
mod measure;
mod pipeline;
mod tiny;
mod window;

use std::path::PathBuf;

use measure::{Figure, print_table};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Size {
    /// Tiny inputs, one repetition: checks the harness works (CI, debug builds).
    Smoke,
    /// Under 3 minutes on 2 cores.
    Quick,
    /// Under 15 minutes on 2 cores.
    Full,
}

struct Plan {
    decode_rows: usize,
    e2e_rows: usize,
    window_rows: usize,
    cardinalities: Vec<u64>,
    tiny_batches: usize,
    replans: usize,
    round_trips: usize,
    checkpoints: u64,
    state_keys: u64,
    pipeline_rows: usize,
    join_rows: usize,
    reps: usize,
}

impl Plan {
    fn for_size(size: Size) -> Self {
        match size {
            Size::Smoke => Plan {
                decode_rows: 5_000,
                e2e_rows: 5_000,
                window_rows: 20_000,
                cardinalities: vec![10, 1_000],
                tiny_batches: 100,
                replans: 20,
                round_trips: 20,
                checkpoints: 20,
                state_keys: 10_000,
                pipeline_rows: 20_000,
                join_rows: 20_000,
                reps: 1,
            },
            Size::Quick => Plan {
                decode_rows: 200_000,
                e2e_rows: 100_000,
                window_rows: 2_000_000,
                cardinalities: vec![10, 10_000, 1_000_000],
                tiny_batches: 2_000,
                replans: 300,
                round_trips: 100,
                checkpoints: 100,
                state_keys: 200_000,
                pipeline_rows: 400_000,
                join_rows: 200_000,
                reps: 3,
            },
            Size::Full => Plan {
                decode_rows: 1_000_000,
                e2e_rows: 500_000,
                window_rows: 5_000_000,
                cardinalities: vec![10, 10_000, 1_000_000],
                tiny_batches: 10_000,
                replans: 1_000,
                round_trips: 400,
                checkpoints: 300,
                state_keys: 1_000_000,
                pipeline_rows: 1_000_000,
                join_rows: 1_000_000,
                reps: 5,
            },
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // (h) runs this binary again, pinned to some cores, as `--pipeline-child ROWS REPS`.
    if let Some(i) = args.iter().position(|a| a == "--pipeline-child") {
        let number = |k: usize| {
            args.get(i + k)
                .and_then(|v| v.parse().ok())
                .expect("--pipeline-child ROWS REPS")
        };
        pipeline::child(number(1), number(2));
        return;
    }
    let size = if args.iter().any(|a| a == "--smoke") {
        Size::Smoke
    } else if args.iter().any(|a| a == "--quick") {
        Size::Quick
    } else {
        Size::Full
    };
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_string).collect());
    let wanted = |section: &str| only.as_ref().is_none_or(|o| o.iter().any(|s| s == section));
    let plan = Plan::for_size(size);

    let disk = tempfile::Builder::new()
        .prefix("flumen-bench-")
        .tempdir_in(
            std::env::var_os("FLUMEN_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from),
        )
        .expect("scratch directory");
    let shm = PathBuf::from("/dev/shm");
    let tmpfs = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("flumen-bench-")
            .tempdir_in(&shm)
            .ok()
    } else {
        None
    };
    let fast = tmpfs
        .as_ref()
        .map_or(disk.path(), |t| t.path())
        .to_path_buf();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    eprintln!(
        "Flumen benchmarks ({size:?}): {} CPUs, profile {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if cfg!(debug_assertions) {
            "debug (numbers are meaningless)"
        } else {
            "release"
        }
    );
    let mut figures: Vec<Figure> = Vec::new();
    let mut report = |section: &str, new: Vec<Figure>| {
        for f in &new {
            eprintln!(
                "  [{section}] {}: ratio {:.3} ({})",
                f.name, f.ratio, f.notes
            );
        }
        figures.extend(new);
    };
    if wanted("a") {
        eprintln!("(a) decode, {} rows", plan.decode_rows);
        report("a", decode::run(plan.decode_rows, plan.reps, &runtime));
    }
    if wanted("b") {
        eprintln!("(b) end to end, {} rows", plan.e2e_rows);
        report(
            "b",
            runtime.block_on(e2e::run(plan.e2e_rows, plan.reps.min(3))),
        );
    }
    if wanted("i") {
        eprintln!("(i) exactly-once vs at-least-once, {} rows", plan.e2e_rows);
        report(
            "i",
            runtime.block_on(e2e::exactly_once(plan.e2e_rows, plan.reps.min(3))),
        );
    }
    if wanted("c") {
        eprintln!("(c) windowed count, {} rows", plan.window_rows);
        report(
            "c",
            runtime.block_on(window::run(
                plan.window_rows,
                &plan.cardinalities,
                plan.reps,
                &fast,
            )),
        );
    }
    if wanted("d") {
        eprintln!("(d) tiny batches, {} batches", plan.tiny_batches);
        report(
            "d",
            runtime.block_on(tiny::per_batch(
                plan.tiny_batches,
                plan.replans,
                plan.reps,
                &fast,
            )),
        );
        report(
            "d",
            runtime.block_on(tiny::kafka_round_trip(plan.round_trips)),
        );
    }
    if wanted("e") {
        eprintln!("(e) checkpoints");
        report(
            "e",
            checkpoint::per_checkpoint(plan.checkpoints, plan.reps, disk.path()),
        );
        report(
            "e",
            runtime.block_on(checkpoint::throughput(
                plan.window_rows,
                8_192,
                plan.reps,
                disk.path(),
                &fast,
            )),
        );
    }
    if wanted("f") {
        eprintln!("(f) state bytes per key");
        report(
            "f",
            runtime.block_on(window::state_bytes(plan.state_keys, &fast)),
        );
    }
    if wanted("j") {
        eprintln!("(j) stream-stream join, {} rows per side", plan.join_rows);
        report("j", runtime.block_on(join::run(plan.join_rows, plan.reps)));
    }
    if wanted("g") {
        eprintln!(
            "(g) Titanic enrichment vs Spark, {} rows",
            plan.pipeline_rows
        );
        report(
            "g",
            runtime.block_on(pipeline::versus_spark(
                plan.pipeline_rows,
                plan.reps.min(3),
                disk.path(),
            )),
        );
    }
    if wanted("h") {
        eprintln!("(h) scaling 1 → 2 cores, {} rows", plan.pipeline_rows);
        report("h", pipeline::scaling(plan.pipeline_rows, plan.reps.min(3)));
    }
    print_table(&figures);
    println!();
    for f in &figures {
        println!("{}", f.json());
    }
}
