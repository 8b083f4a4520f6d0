//! Per-subject sequence checks of one subscriber connection: every delivery's seq (ringcast)
//! or publisher counter (NATS) is compared with the last one seen on its subject, and skips
//! and reorders are counted into the thread's [`Stats`]. Owned by the connection's task.

use super::Stats;

/// Per-subject last seq of one connection.
pub enum SeqTrack {
    /// A few subjects: (subject index, last seq) pairs searched linearly.
    Small(Vec<(u32, u64)>),
    /// A wildcard over many subjects: last seq indexed by subject index.
    Dense(Vec<u64>),
}

impl SeqTrack {
    #[inline]
    pub fn check(&mut self, subject: u32, seq: u64, st: &mut Stats) {
        let last = match self {
            SeqTrack::Dense(v) => {
                let i = subject as usize;
                if i >= v.len() {
                    v.resize(i + 1, 0);
                }
                &mut v[i]
            }
            SeqTrack::Small(v) => match v.iter().position(|(s, _)| *s == subject) {
                Some(p) => &mut v[p].1,
                None => {
                    v.push((subject, 0));
                    &mut v.last_mut().expect("pushed").1
                }
            },
        };
        if *last == 0 || seq == *last + 1 {
            *last = seq;
        } else if seq > *last + 1 {
            st.gaps += seq - *last - 1;
            *last = seq;
        } else {
            st.reorders += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(track: &mut SeqTrack, msgs: &[(u32, u64)]) -> (u64, u64) {
        let mut st = Stats::default();
        for &(subject, seq) in msgs {
            track.check(subject, seq, &mut st);
        }
        (st.gaps, st.reorders)
    }

    #[test]
    fn skips_are_gaps_and_repeats_are_reorders_per_subject() {
        let msgs = [(1, 5), (2, 1), (1, 6), (1, 9), (2, 2), (1, 9), (2, 1)];
        assert_eq!(run(&mut SeqTrack::Small(Vec::new()), &msgs), (2, 2));
        assert_eq!(run(&mut SeqTrack::Dense(vec![0; 2]), &msgs), (2, 2));
    }

    #[test]
    fn the_first_message_of_a_subject_sets_its_start() {
        assert_eq!(
            run(&mut SeqTrack::Dense(Vec::new()), &[(7, 100), (7, 101)]),
            (0, 0)
        );
    }
}
