//! The counters one generator thread keeps about its connections ([`Stats`]), and their sum
//! over all threads. Each `bench-<i>` runtime thread owns one; the main thread only ever sees
//! copies ([`Stats::snapshot`], sent back on a `Cmd::Snapshot`) and merges them.

use hdrhistogram::Histogram;

/// A latency histogram in ns: 1 ns to 120 s, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds")
}

/// Counters of one generator thread (or their sum).
#[derive(Clone)]
pub struct Stats {
    /// End-to-end latency, ns, from the intended send time.
    pub hist: Histogram<u64>,
    pub delivered: u64,
    /// Messages missing inside a subject's stream (seq jumped forward).
    pub gaps: u64,
    /// Messages whose seq was not above the last one seen (duplicate or out of order).
    pub reorders: u64,
    /// Close frames with code 4008.
    pub slow_closes: u64,
    /// Close frames with any other code.
    pub other_closes: u64,
    /// Connections that ended without a close frame.
    pub disconnects: u64,
    pub connected: u64,
    pub connect_failed: u64,
    pub sub_ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Time the last connection became ready (hello / PONG), mono ns.
    pub last_ready_ns: u64,
    /// Time the last message was received, mono ns.
    pub last_msg_ns: u64,
    pub unparsed: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            hist: new_hist(),
            delivered: 0,
            gaps: 0,
            reorders: 0,
            slow_closes: 0,
            other_closes: 0,
            disconnects: 0,
            connected: 0,
            connect_failed: 0,
            sub_ok: 0,
            errors: 0,
            first_error: None,
            last_ready_ns: 0,
            last_msg_ns: 0,
            unparsed: 0,
        }
    }
}

impl Stats {
    pub fn merge(&mut self, o: &Stats) {
        let _ = self.hist.add(&o.hist);
        self.delivered += o.delivered;
        self.gaps += o.gaps;
        self.reorders += o.reorders;
        self.slow_closes += o.slow_closes;
        self.other_closes += o.other_closes;
        self.disconnects += o.disconnects;
        self.connected += o.connected;
        self.connect_failed += o.connect_failed;
        self.sub_ok += o.sub_ok;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.last_ready_ns = self.last_ready_ns.max(o.last_ready_ns);
        self.last_msg_ns = self.last_msg_ns.max(o.last_msg_ns);
        self.unparsed += o.unparsed;
    }

    /// A copy for the main thread. With `hist` it carries the latencies recorded since the
    /// last such snapshot, and the histogram starts over; without, it carries an empty one
    /// (cheap to copy and merge) and the histogram is left alone.
    pub fn snapshot(&mut self, hist: bool) -> Stats {
        if hist {
            let s = self.clone();
            self.hist.reset();
            s
        } else {
            let h = std::mem::replace(&mut self.hist, Histogram::new(1).expect("hist"));
            let s = self.clone();
            self.hist = h;
            s
        }
    }

    /// Counts an error; the first one is kept for the report.
    pub fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_with_the_histogram_starts_it_over() {
        let mut st = Stats::default();
        st.hist.record(5).unwrap();
        st.delivered = 3;
        let light = st.snapshot(false);
        assert_eq!((light.hist.len(), light.delivered), (0, 3));
        assert_eq!(st.hist.len(), 1);
        let full = st.snapshot(true);
        assert_eq!(full.hist.len(), 1);
        assert_eq!((st.hist.len(), st.delivered), (0, 3));
    }

    #[test]
    fn merged_stats_keep_the_first_error() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        b.error("second thread");
        b.error("later");
        a.merge(&b);
        a.error("mine");
        assert_eq!(a.errors, 3);
        assert_eq!(a.first_error.as_deref(), Some("second thread"));
    }
}
