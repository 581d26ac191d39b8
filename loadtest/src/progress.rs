//! A progress line on stderr for long runs (only when stderr is a terminal).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Progress of one measurement: a counter that a background task prints as a bar.
#[derive(Debug, Clone)]
pub struct Progress {
    done: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Progress {
    /// Starts showing progress of `label` towards `total` operations.
    #[must_use]
    pub fn start(label: &str, total: u64) -> Self {
        let p = Progress { done: Arc::new(AtomicU64::new(0)), stop: Arc::new(Default::default()) };
        if std::io::stderr().is_terminal() {
            let (done, stop, label) = (p.done.clone(), p.stop.clone(), label.to_owned());
            let started = Instant::now();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = done.load(Ordering::Relaxed);
                    let frac = if total == 0 { 1.0 } else { (n as f64 / total as f64).min(1.0) };
                    let filled = (frac * 30.0) as usize;
                    let line = format!(
                        "\r{label:<32} [{}{}] {:>5.1}% {n}/{total} {:.1}s",
                        "#".repeat(filled),
                        "-".repeat(30 - filled),
                        frac * 100.0,
                        started.elapsed().as_secs_f64()
                    );
                    let _ = std::io::stderr().write_all(line.as_bytes());
                    std::thread::sleep(Duration::from_millis(200));
                }
                let _ = std::io::stderr().write_all(b"\r\x1b[2K");
            });
        }
        p
    }

    /// Adds `n` finished operations.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Stops showing progress.
    pub fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if Arc::strong_count(&self.stop) <= 2 {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}
