//! Where the milliseconds of a sequence go: wall-clock time per named
//! phase, rendered as one log line.
//!
//! The step-start path (plugin and `sifrun slurm-setup`) is measured in
//! milliseconds against bare `srun`; this line in the slurmd log (debug
//! level) is how a site, or the next engineer, sees which phase grew.

use std::fmt::Write;
use std::time::{Duration, Instant};

/// Phases measured one after the other from [`Phases::start`].
#[derive(Debug, Clone)]
pub struct Phases {
    started: Instant,
    last: Instant,
    marks: Vec<(&'static str, Duration)>,
}

impl Default for Phases {
    fn default() -> Self {
        Self::start()
    }
}

impl Phases {
    /// Starts the clock.
    pub fn start() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            marks: Vec::new(),
        }
    }

    /// Ends the phase called `name` now (it began at the previous mark).
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.marks.push((name, now - self.last));
        self.last = now;
    }

    /// Time since [`Phases::start`].
    pub fn total(&self) -> Duration {
        self.last - self.started
    }

    /// `name 0.12 ms, other 1.50 ms, total 1.62 ms`.
    pub fn line(&self) -> String {
        let mut s = String::new();
        for (name, d) in &self.marks {
            let _ = write!(s, "{name} {:.2} ms, ", millis(*d));
        }
        let _ = write!(s, "total {:.2} ms", millis(self.total()));
        s
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_to_the_total_in_order() {
        let mut p = Phases::start();
        std::thread::sleep(Duration::from_millis(2));
        p.mark("first");
        p.mark("second");
        let line = p.line();
        assert!(line.starts_with("first "), "{line}");
        assert!(line.contains(", second "), "{line}");
        assert!(line.ends_with(" ms"), "{line}");
        let sum: Duration = p.marks.iter().map(|(_, d)| *d).sum();
        assert_eq!(sum, p.total());
        assert!(p.total() >= Duration::from_millis(2));
    }
}
