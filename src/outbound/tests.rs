//! Unit tests of the outbound queue and write batch: limits, conflation, framing, runs.

use super::*;

fn frame(subject: &str, seq: u64) -> LocalFrame {
    Rc::new(Arc::new(Frame::encode(subject, seq, 0, b"0", None)))
}

#[test]
fn overflow_is_reported_past_the_byte_limit() {
    let mut q = OutboundQueue::default();
    let f = frame("a", 1);
    let limit = f.wire_len() * 3;
    for _ in 0..3 {
        assert_eq!(q.push_msg(&f, 1, false, limit), Pushed::Queued);
    }
    assert_eq!(q.push_msg(&f, 1, false, limit), Pushed::Overflow);
    assert_eq!(q.bytes(), limit);
    assert_eq!(q.clear(), 3);
    assert!(q.is_empty());
}

#[test]
fn conflation_replaces_the_pending_message_of_the_same_subject() {
    let mut q = OutboundQueue::default();
    let limit = frame("a", 1).wire_len() * 2;
    q.push_msg(&frame("a", 1), 1, true, limit);
    q.push_msg(&frame("b", 1), 2, true, limit);
    assert_eq!(
        q.push_msg(&frame("a", 2), 3, true, limit),
        Pushed::Conflated(1)
    );
    assert_eq!(
        q.push_msg(&frame("a", 3), 3, true, limit),
        Pushed::Conflated(1)
    );
    let mut b = WriteBatch::default();
    q.fill(&mut b, Framing::WebSocket);
    let seqs: Vec<_> = b
        .items
        .iter()
        .map(|o| match o {
            Out::Msg(f, _) => (f.subject().to_string(), f.seq()),
            _ => unreachable!("conflated messages are frames"),
        })
        .collect();
    assert_eq!(seqs, vec![("a".to_string(), 3), ("b".to_string(), 1)]);
}

#[test]
fn sse_framing_adds_only_the_id_line_per_connection() {
    let mut q = OutboundQueue::default();
    let f = frame("a", 7);
    q.push_msg(&f, 41, false, 1 << 20);
    let mut b = WriteBatch::default();
    q.fill(&mut b, Framing::Sse("s1"));
    let want = [b"id: s1.41\nevent: msg\ndata: " as &[u8], f.json(), b"\n\n"].concat();
    assert_eq!(wire(&b), want);
    assert_eq!(b.remaining(), want.len());
}

/// The bytes a batch's iovecs describe.
fn wire(b: &WriteBatch) -> Vec<u8> {
    let mut wire = Vec::new();
    for v in &b.iov[b.start..] {
        // SAFETY: test reads the iovecs of a batch it owns, whose buffers are alive.
        wire.extend_from_slice(unsafe {
            std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
        });
    }
    wire
}

#[test]
fn an_sse_batch_of_heartbeats_then_many_messages_frames_every_one_intact() {
    // Heartbeats take one iovec, messages four: far more messages fit into the batch than
    // the first MAX_IOVECS/4 items hold, and every `id:` line must still be intact.
    let mut q = OutboundQueue::default();
    for _ in 0..200 {
        q.push_raw(b":\n\n".to_vec().into(), usize::MAX);
    }
    let frames: Vec<_> = (1..=400).map(|i| frame("a", i)).collect();
    for (i, f) in frames.iter().enumerate() {
        q.push_msg(f, 1_000_000 + i as u64, false, usize::MAX);
    }
    let mut b = WriteBatch::default();
    q.fill(&mut b, Framing::Sse("0123456789abcdef01"));
    let taken = (MAX_IOVECS - 200) / SSE_IOVS_PER_MSG;
    let mut want = b":\n\n".repeat(200);
    for (i, f) in frames.iter().take(taken).enumerate() {
        want.extend_from_slice(format!("id: 0123456789abcdef01.{}\n", 1_000_000 + i).as_bytes());
        want.extend_from_slice(SSE_EVENT);
        want.extend_from_slice(f.json());
        want.extend_from_slice(SSE_END);
    }
    assert_eq!(b.iov.len(), 200 + taken * SSE_IOVS_PER_MSG);
    assert_eq!(wire(&b), want);
    assert_eq!(b.remaining(), want.len());
    // The rest waits for the next write.
    q.fill(&mut b, Framing::Sse("0123456789abcdef01"));
    assert_eq!(b.messages(), 400 - taken);
    assert!(q.is_empty());
}

fn run_of(frames: &[LocalFrame]) -> (Rc<Run>, Vec<RunSlot>) {
    let run = Run::new(1 << 15);
    let at = frames
        .iter()
        .map(|f| RunSlot::new(run.clone(), run.push(f).unwrap()))
        .collect();
    (run, at)
}

#[test]
fn consecutive_frames_of_a_run_are_one_item_and_one_iovec() {
    assert_eq!(
        std::mem::size_of::<Out>(),
        24,
        "a queue slot stays three words"
    );
    let frames: Vec<_> = (1..=5).map(|i| frame("a", i)).collect();
    let (_run, at) = run_of(&frames);
    let mut q = OutboundQueue::default();
    for (i, a) in at.iter().enumerate().take(3) {
        assert_eq!(q.push_run(a, 10 + i as u64, usize::MAX), Pushed::Queued);
    }
    // Frame 4 skipped (say, not admitted): frame 5 starts a new stretch.
    q.push_run(&at[4], 13, usize::MAX);
    assert_eq!(q.items.len(), 2);
    let want: usize = [0, 1, 2, 4].iter().map(|i| frames[*i].wire_len()).sum();
    assert_eq!(q.bytes(), want);
    let mut b = WriteBatch::default();
    q.fill(&mut b, Framing::WebSocket);
    assert_eq!(b.iov.len(), 2);
    assert_eq!(b.messages(), 4);
    let expect = [0, 1, 2, 4].map(|i| frames[i].ws_bytes()).concat();
    assert_eq!(wire(&b), expect);
}

#[test]
fn a_stretch_grows_only_with_the_next_frame_and_the_next_index() {
    let frames: Vec<_> = (1..=3).map(|i| frame("a", i)).collect();
    let (_run, at) = run_of(&frames);
    let mut q = OutboundQueue::default();
    q.push_run(&at[0], 1, usize::MAX);
    q.push_run(&at[1], 5, usize::MAX);
    assert_eq!(q.items.len(), 2, "k does not follow on: a new item");
    q.push_raw(b"pong".to_vec().into(), usize::MAX);
    q.push_run(&at[2], 6, usize::MAX);
    assert_eq!(q.items.len(), 4, "a reply in between: a new item");
}

#[test]
fn spilling_and_clearing_count_every_message_of_a_stretch() {
    let frames: Vec<_> = (1..=4).map(|i| frame("a", i)).collect();
    let (_run, at) = run_of(&frames);
    let mut q = OutboundQueue::default();
    for (i, a) in at.iter().enumerate() {
        q.push_run(a, 7 + i as u64, usize::MAX);
    }
    q.push_raw(b"pong".to_vec().into(), usize::MAX);
    let mut got = Vec::new();
    q.drain_messages(|f, k| got.push((f.seq(), k)));
    assert_eq!(got, vec![(1, 7), (2, 8), (3, 9), (4, 10)]);
    assert_eq!(q.bytes(), 4, "the reply stays");
    for (i, a) in at.iter().enumerate() {
        q.push_run(a, 7 + i as u64, usize::MAX);
    }
    assert_eq!(q.clear(), 4);
}

#[test]
fn a_stretch_is_framed_per_message_for_sse() {
    let frames: Vec<_> = (1..=2).map(|i| frame("a", i)).collect();
    let (_run, at) = run_of(&frames);
    let mut q = OutboundQueue::default();
    q.push_run(&at[0], 3, usize::MAX);
    q.push_run(&at[1], 4, usize::MAX);
    let mut b = WriteBatch::default();
    q.fill(&mut b, Framing::Sse("s"));
    let mut want = Vec::new();
    for (f, k) in frames.iter().zip([3, 4]) {
        want.extend_from_slice(format!("id: s.{k}\n").as_bytes());
        want.extend_from_slice(SSE_EVENT);
        want.extend_from_slice(f.json());
        want.extend_from_slice(SSE_END);
    }
    assert_eq!(wire(&b), want);
}

#[test]
fn an_sse_stretch_longer_than_a_write_is_split_across_writes_in_order() {
    let frames: Vec<_> = (1..=600).map(|i| frame("a", i)).collect();
    let (_run, at) = run_of(&frames);
    let mut q = OutboundQueue::default();
    for (i, a) in at.iter().enumerate() {
        q.push_run(a, 1 + i as u64, usize::MAX);
    }
    assert_eq!(q.items.len(), 1, "one stretch");
    let (mut got, mut b) = (Vec::new(), WriteBatch::default());
    while !q.is_empty() {
        q.fill(&mut b, Framing::Sse("s"));
        assert!(b.segments() <= MAX_IOVECS, "{} iovecs", b.segments());
        got.extend(wire(&b));
    }
    assert_eq!(q.bytes(), 0);
    let mut want = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        want.extend_from_slice(format!("id: s.{}\n", i + 1).as_bytes());
        want.extend_from_slice(SSE_EVENT);
        want.extend_from_slice(f.json());
        want.extend_from_slice(SSE_END);
    }
    assert_eq!(got, want);
}

#[test]
fn the_session_log_replays_every_message_of_a_stretch() {
    let frames: Vec<_> = (1..=4).map(|i| frame("a", i)).collect();
    let (_run, at) = run_of(&frames);
    let mut q = OutboundQueue::default();
    for (i, a) in at.iter().enumerate() {
        q.push_run(a, 1 + i as u64, usize::MAX);
    }
    let mut b = WriteBatch::default();
    q.fill(&mut b, Framing::WebSocket);
    let mut log = SessionLog::new(100, 1);
    log.add(b.share());
    assert_eq!((log.len(), log.next_k()), (4, 5));
    let seqs: Vec<_> = log.after(2).unwrap().iter().map(|f| f.seq()).collect();
    assert_eq!(seqs, vec![3, 4]);
}

#[test]
fn a_batch_advances_across_partial_writes() {
    let mut q = OutboundQueue::default();
    q.push_raw(b"hello".to_vec().into(), 100);
    q.push_raw(b"world".to_vec().into(), 100);
    let mut b = WriteBatch::default();
    q.fill(&mut b, Framing::WebSocket);
    assert_eq!(b.remaining(), 10);
    b.advance(3);
    assert_eq!(b.start, 0);
    assert_eq!(b.iov[0].iov_len, 2);
    b.advance(4);
    assert_eq!((b.start, b.iov[1].iov_len, b.remaining()), (1, 3, 3));
    b.advance(3);
    assert_eq!(b.remaining(), 0);
}
