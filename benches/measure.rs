//! Timing: wall clock and process CPU time (user + system, all threads), medians over
//! interleaved repetitions, and the report (a table and one JSON line per figure).

use std::time::{Duration, Instant};

/// Process CPU time so far (user + system, every thread), from `getrusage(RUSAGE_SELF)`.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we pass; a zeroed rusage is a valid value.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// One timed run.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub wall: Duration,
    pub cpu: Duration,
}

/// Times `f`, wall and CPU.
pub fn time<T>(f: impl FnOnce() -> T) -> (T, Sample) {
    let cpu = cpu_time();
    let start = Instant::now();
    let out = f();
    let sample = Sample {
        wall: start.elapsed(),
        cpu: cpu_time().saturating_sub(cpu),
    };
    (out, sample)
}

/// Times an async `f`, wall and CPU.
pub async fn time_async<T>(f: impl std::future::Future<Output = T>) -> (T, Sample) {
    let cpu = cpu_time();
    let start = Instant::now();
    let out = f.await;
    let sample = Sample {
        wall: start.elapsed(),
        cpu: cpu_time().saturating_sub(cpu),
    };
    (out, sample)
}

/// The median sample by wall time, and the median CPU time.
pub fn median(samples: &[Sample]) -> Sample {
    let mut walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
    let mut cpus: Vec<Duration> = samples.iter().map(|s| s.cpu).collect();
    walls.sort();
    cpus.sort();
    Sample {
        wall: walls[walls.len() / 2],
        cpu: cpus[cpus.len() / 2],
    }
}

/// One figure of the report: the engine against one baseline.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub engine: String,
    pub baseline: String,
    /// Engine rate / baseline rate (higher is better for the engine), or a ratio named in
    /// `unit` for figures that are not rates.
    pub ratio: f64,
    pub rows: u64,
    /// Engine rows per second (wall).
    pub rows_per_s: f64,
    /// Engine CPU seconds (median run).
    pub cpu_s: f64,
    /// Extra numbers worth reporting (e.g. the baseline's rate, latencies).
    pub notes: String,
    /// The target, in words, and whether this run met it.
    pub target: String,
    pub met: Option<bool>,
}

impl Figure {
    /// The engine's and the baseline's medians over `rows` rows; ratio = baseline time /
    /// engine time (so > 1 means the engine is faster).
    pub fn rate(name: &str, engine: &str, baseline: &str, rows: u64, e: Sample, b: Sample) -> Self {
        let ratio = b.wall.as_secs_f64() / e.wall.as_secs_f64().max(1e-12);
        Figure {
            name: name.into(),
            engine: engine.into(),
            baseline: baseline.into(),
            ratio,
            rows,
            rows_per_s: rows as f64 / e.wall.as_secs_f64().max(1e-12),
            cpu_s: e.cpu.as_secs_f64(),
            notes: format!(
                "baseline {:.0} rows/s, {:.3} cpu-s",
                rows as f64 / b.wall.as_secs_f64().max(1e-12),
                b.cpu.as_secs_f64()
            ),
            target: String::new(),
            met: None,
        }
    }

    /// Sets the target: met when `ratio >= min`.
    pub fn at_least(mut self, min: f64) -> Self {
        self.target = format!("ratio ≥ {min}");
        self.met = Some(self.ratio >= min);
        self
    }

    /// Sets the target: met when `ratio <= max`.
    pub fn at_most(mut self, max: f64) -> Self {
        self.target = format!("ratio ≤ {max}");
        self.met = Some(self.ratio <= max);
        self
    }

    /// A free-form target and its verdict.
    pub fn target(mut self, text: &str, met: bool) -> Self {
        self.target = text.into();
        self.met = Some(met);
        self
    }

    /// Appends to the notes.
    pub fn note(mut self, text: impl AsRef<str>) -> Self {
        if !self.notes.is_empty() {
            self.notes.push_str("; ");
        }
        self.notes.push_str(text.as_ref());
        self
    }

    /// The JSON line.
    pub fn json(&self) -> String {
        serde_json::json!({
            "name": self.name,
            "engine": self.engine,
            "baseline": self.baseline,
            "ratio": (self.ratio * 1000.0).round() / 1000.0,
            "rows": self.rows,
            "rows_per_s": self.rows_per_s.round(),
            "cpu_s": (self.cpu_s * 1000.0).round() / 1000.0,
            "target": self.target,
            "met": self.met,
            "notes": self.notes,
        })
        .to_string()
    }
}

/// Prints the table of all figures.
pub fn print_table(figures: &[Figure]) {
    println!();
    println!(
        "| {:<34} | {:<30} | {:<34} | {:>8} | {:>12} | {:>7} | {:<16} | {:<4} |",
        "bench", "engine", "baseline", "ratio", "rows/s", "cpu-s", "target", "met"
    );
    println!("|{}|", ["-"; 8].map(|_| "---").join("|"));
    for f in figures {
        println!(
            "| {:<34} | {:<30} | {:<34} | {:>8.3} | {:>12.0} | {:>7.3} | {:<16} | {:<4} |",
            f.name,
            f.engine,
            f.baseline,
            f.ratio,
            f.rows_per_s,
            f.cpu_s,
            f.target,
            match f.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            }
        );
    }
    println!();
    for f in figures {
        if !f.notes.is_empty() {
            println!("  {}: {}", f.name, f.notes);
        }
    }
}
