//! What the frames of one subscriber connection mean, apart from any I/O: the WebSocket
//! opcodes (data, close, ping), then the protocol on top. ringcast: `hello` makes the
//! connection ready and sends its `sub` ops, `ok` acks count as acknowledged subscriptions,
//! `msg` is a delivery (latency from its intended send time, sequence check). NATS: `INFO` is
//! answered with `CONNECT` + `SUB`s + `PING`, the `PONG` makes it ready, `MSG` is a delivery.
//! Owned by the connection's task; it writes into its thread's [`Stats`] and into the
//! connection's outgoing buffer.

use super::seq::SeqTrack;
use super::{Role, Stats};
use crate::wire::{self, nats, rc, Frame, NatsOp, RcFrame, Target};

/// Protocol state of one connection.
pub struct Session {
    target: Target,
    /// `hello` (ringcast) or the `PONG` after the subscriptions (NATS) has arrived.
    pub ready: bool,
    n_subs: u64,
    subjects: Vec<String>,
    track: SeqTrack,
    /// NATS: the protocol byte stream reassembled from WebSocket payloads.
    nats: Vec<u8>,
}

impl Session {
    pub fn new(role: Role, target: Target) -> Session {
        let (subjects, track) = match role {
            Role::Sub {
                subjects,
                dense: Some(n),
            } => (subjects, SeqTrack::Dense(vec![0; n])),
            Role::Sub {
                subjects,
                dense: None,
            } => (subjects, SeqTrack::Small(Vec::with_capacity(4))),
            Role::Idle => (Vec::new(), SeqTrack::Small(Vec::new())),
        };
        Session {
            target,
            ready: false,
            n_subs: subjects.len() as u64,
            subjects,
            track,
            nats: Vec::new(),
        }
    }

    /// Handles one server frame received at `now`, queueing any reply in `out`. True when it
    /// was a close frame (the connection is over).
    pub fn on_frame(&mut self, f: &Frame, st: &mut Stats, out: &mut Vec<u8>, now: u64) -> bool {
        if f.masked {
            st.error("server sent a masked frame");
        }
        match f.op {
            0x0..=0x2 => {
                if self.target == Target::Nats {
                    self.nats.extend_from_slice(f.payload);
                    self.nats_ops(st, out, now);
                } else {
                    if !f.fin || f.op == 0 {
                        st.unparsed += 1;
                    }
                    self.rc_text(st, out, f.payload, now);
                }
            }
            0x8 => {
                on_close(f.payload, st);
                return true;
            }
            0x9 => out.extend(wire::frame(0xA, f.payload)),
            _ => {}
        }
        false
    }

    /// One ringcast text frame.
    #[inline]
    fn rc_text(&mut self, st: &mut Stats, out: &mut Vec<u8>, p: &[u8], now: u64) {
        match wire::parse_rc(p) {
            RcFrame::Msg(m) => {
                record_delivery(st, now, m.t);
                self.track.check(m.subject, m.seq, st);
            }
            RcFrame::Ok(_) => st.sub_ok += 1,
            RcFrame::Hello if !self.ready => {
                self.ready = true;
                st.connected += 1;
                st.last_ready_ns = now;
                for (i, s) in self.subjects.iter().enumerate() {
                    out.extend(wire::frame(0x1, rc::encode_sub(i, s).as_bytes()));
                }
            }
            RcFrame::Hello => {}
            RcFrame::Err(e) => st.error(String::from_utf8_lossy(e)),
            RcFrame::Other => st.unparsed += 1,
        }
    }

    /// Every complete NATS op reassembled so far; the replies go out as one binary frame.
    fn nats_ops(&mut self, st: &mut Stats, out: &mut Vec<u8>, now: u64) {
        let mut reply = Vec::new();
        nats::drain_ops(&mut self.nats, |op| match op {
            NatsOp::Msg { subject, payload } => {
                let (t, cnt) = wire::parse_payload(payload);
                record_delivery(st, now, t);
                self.track.check(wire::subject_index(subject), cnt, st);
            }
            NatsOp::Ping => reply.extend_from_slice(b"PONG\r\n"),
            NatsOp::Pong if !self.ready => {
                self.ready = true;
                st.connected += 1;
                st.sub_ok += self.n_subs;
                st.last_ready_ns = now;
            }
            NatsOp::Info if !self.ready => nats::encode_subscribe(&mut reply, &self.subjects),
            NatsOp::Err(e) => st.error(String::from_utf8_lossy(e)),
            _ => {}
        });
        if !reply.is_empty() {
            out.extend(wire::frame(0x2, &reply));
        }
    }
}

/// A message received at `now` that was meant to be sent at `t` (0: not known).
#[inline]
fn record_delivery(st: &mut Stats, now: u64, t: u64) {
    st.delivered += 1;
    st.last_msg_ns = now;
    if t != 0 {
        st.hist.saturating_record(now.saturating_sub(t).max(1));
    }
}

/// A close frame: 4008 is the server dropping a slow consumer, anything else is an error.
fn on_close(p: &[u8], st: &mut Stats) {
    let code = wire::close_code(p);
    if code == 4008 {
        st.slow_closes += 1;
    } else {
        st.other_closes += 1;
        st.error(format!(
            "close {code}: {}",
            String::from_utf8_lossy(&p[2.min(p.len())..])
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(p: &[u8]) -> Frame<'_> {
        Frame {
            op: 0x1,
            fin: true,
            masked: false,
            payload: p,
        }
    }

    fn sub(subjects: &[&str]) -> Role {
        Role::Sub {
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            dense: None,
        }
    }

    #[test]
    fn ringcast_hello_makes_it_ready_and_sends_the_subscriptions() {
        let mut s = Session::new(sub(&["a.1", "b.2"]), Target::Ringcast);
        let (mut st, mut out) = (Stats::default(), Vec::new());
        assert!(!s.on_frame(&text(br#"{"op":"hello"}"#), &mut st, &mut out, 10));
        assert!(s.ready);
        assert_eq!((st.connected, st.last_ready_ns), (1, 10));
        let mut expected = wire::frame(0x1, br#"{"op":"sub","id":0,"subject":"a.1"}"#);
        expected.extend(wire::frame(0x1, br#"{"op":"sub","id":1,"subject":"b.2"}"#));
        assert_eq!(out, expected);
        s.on_frame(&text(br#"{"op":"ok","id":0}"#), &mut st, &mut out, 11);
        assert_eq!(st.sub_ok, 1);
    }

    #[test]
    fn ringcast_deliveries_are_timed_and_sequence_checked() {
        let mut s = Session::new(sub(&["a.1"]), Target::Ringcast);
        let (mut st, mut out) = (Stats::default(), Vec::new());
        for seq in [1, 2, 4] {
            let m =
                format!(r#"{{"op":"msg","subject":"a.1","seq":{seq},"ts":1,"data":{{"t":100}}}}"#);
            s.on_frame(&text(m.as_bytes()), &mut st, &mut out, 1100);
        }
        assert_eq!((st.delivered, st.gaps, st.last_msg_ns), (3, 1, 1100));
        assert_eq!(st.hist.len(), 3);
        assert_eq!(st.hist.max(), st.hist.highest_equivalent(1000));
    }

    #[test]
    fn a_4008_close_is_a_slow_consumer_and_others_are_errors() {
        let mut s = Session::new(Role::Idle, Target::Ringcast);
        let (mut st, mut out) = (Stats::default(), Vec::new());
        let close = |p: &'static [u8]| Frame {
            op: 0x8,
            fin: true,
            masked: false,
            payload: p,
        };
        assert!(s.on_frame(&close(b"\x0f\xa8"), &mut st, &mut out, 0));
        assert!(s.on_frame(&close(b"\x03\xe8bye"), &mut st, &mut out, 0));
        assert_eq!((st.slow_closes, st.other_closes), (1, 1));
        assert_eq!(st.first_error.as_deref(), Some("close 1000: bye"));
    }

    #[test]
    fn nats_info_gets_connect_and_subs_and_the_pong_makes_it_ready() {
        let mut s = Session::new(sub(&["a.1", "a.2"]), Target::Nats);
        let (mut st, mut out) = (Stats::default(), Vec::new());
        s.on_frame(&text(b"INFO {}\r\n"), &mut st, &mut out, 0);
        let mut hello = Vec::new();
        nats::encode_subscribe(&mut hello, &["a.1".into(), "a.2".into()]);
        assert_eq!(out, wire::frame(0x2, &hello));
        // A PONG split over two frames.
        s.on_frame(&text(b"PO"), &mut st, &mut out, 5);
        assert!(!s.ready);
        s.on_frame(&text(b"NG\r\n"), &mut st, &mut out, 6);
        assert!(s.ready);
        assert_eq!((st.connected, st.sub_ok, st.last_ready_ns), (1, 2, 6));
    }
}
