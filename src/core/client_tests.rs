//! Unit tests of [`super::Client`]: queueing, logging for resume, high-water marks, flush listing.

use super::*;
use crate::frame::Frame;
use std::sync::Arc;

fn client(kind: ConnKind, queue_limit: usize) -> (Rc<Client>, Rc<FlushList>) {
    let flush = Rc::new(FlushList::default());
    let init = ClientInit {
        key: 1,
        session: "00aa".into(),
        kind,
        queue_limit,
        session_retain: 16,
        now_ms: 0,
    };
    (Client::new(init, flush.clone()), flush)
}

fn frame(subject: &str, seq: u64) -> LocalFrame {
    Rc::new(Arc::new(Frame::encode(subject, seq, 0, b"1", None)))
}

#[test]
fn a_client_lists_itself_once_for_the_flusher() {
    let (c, flush) = client(ConnKind::WebSocket, 1 << 20);
    let m = CoreMetrics::default();
    c.send_ok(&m, None);
    c.send_ok(&m, None);
    assert!(c.push_msg(&m, &frame("a", 1), false, None));
    assert!(flush.ready.is_set());
    let listed = flush.drain();
    assert_eq!(listed.len(), 1);
    assert!(Rc::ptr_eq(&listed[0], &c));
    assert!(flush.drain().is_empty());
    // Taken by the flusher: new output after the queue drained lists it again.
    let mut batch = WriteBatch::default();
    c.fill(&mut batch);
    assert!(!c.has_output());
    c.send_ok(&m, None);
    assert_eq!(flush.drain().len(), 1);
}

#[test]
fn a_message_at_or_below_the_high_water_mark_is_not_queued_again() {
    let (c, _) = client(ConnKind::WebSocket, 1 << 20);
    let m = CoreMetrics::default();
    c.track_hwm();
    assert!(c.push_msg(&m, &frame("a", 2), false, None));
    assert!(!c.push_msg(&m, &frame("a", 2), false, None));
    assert!(!c.push_msg(&m, &frame("a", 1), false, None));
    assert!(c.push_msg(&m, &frame("b", 1), false, None));
    assert_eq!(c.next_k.get(), 3);
}

#[test]
fn overflow_closes_a_slow_consumer_and_logs_what_it_was_not_sent() {
    let f = frame("a", 1);
    let (c, _) = client(ConnKind::WebSocket, f.wire_len() * 2);
    let m = CoreMetrics::default();
    assert!(c.push_msg(&m, &frame("a", 1), false, None));
    assert!(c.push_msg(&m, &frame("a", 2), false, None));
    assert!(
        c.push_msg(&m, &frame("a", 3), false, None),
        "logged for the resume"
    );
    assert_eq!(c.closing(), Some(CloseReason::SlowConsumer));
    assert_eq!(m.closes(CloseReason::SlowConsumer), 1);
    let logged: Vec<u64> = c
        .log
        .borrow()
        .after(0)
        .unwrap()
        .iter()
        .map(|f| f.seq())
        .collect();
    assert_eq!(
        logged,
        vec![1, 2, 3],
        "queued and overflowing messages stay resumable"
    );
    assert!(c.has_output(), "the close frame waits for the writer");
}

#[test]
fn a_closing_connection_logs_what_it_is_routed_for_a_resume() {
    let (c, _) = client(ConnKind::WebSocket, 1 << 20);
    let m = CoreMetrics::default();
    assert!(c.push_msg(&m, &frame("a", 1), false, None));
    c.close(&m, CloseReason::ClientClosed, 1000, "");
    assert!(c.push_msg(&m, &frame("a", 2), false, None));
    let logged: Vec<u64> = c
        .log
        .borrow()
        .after(0)
        .unwrap()
        .iter()
        .map(|f| f.seq())
        .collect();
    assert_eq!(logged, vec![1, 2]);
}

#[test]
fn a_detached_session_logs_instead_of_queueing() {
    let (c, flush) = client(ConnKind::WebSocket, 1 << 20);
    let m = CoreMetrics::default();
    c.mark_gone(&m);
    c.detached_at.set(Some(5));
    assert!(c.push_msg(&m, &frame("a", 1), false, None));
    assert!(!c.has_output());
    assert!(flush.drain().is_empty());
    assert_eq!(c.log.borrow().after(0).map(|v| v.len()), Some(1));
}

#[test]
fn sse_streams_carry_events_but_no_replies() {
    let (c, _) = client(ConnKind::Sse, 1 << 20);
    let m = CoreMetrics::default();
    c.send_ok(&m, None);
    assert!(!c.has_output());
    c.send_event(&m, "gap", b"{}");
    let mut batch = WriteBatch::default();
    c.fill(&mut batch);
    assert_eq!(batch.remaining(), b"event: gap\ndata: {}\n\n".len());
}
