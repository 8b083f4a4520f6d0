//! The built-in demo feed (`--demo-feed`): a synthetic price publisher running on core 0, so
//! a newcomer sees the demo page move. It publishes through the same path as any client
//! (owner core, sequencing, fanout); it is a toy random walk, not market data.

use crate::core::Core;
use std::rc::Rc;
use std::time::Duration;

/// Instruments the demo feed publishes, with their starting mid prices.
pub const INSTRUMENTS: [(&str, f64); 12] = [
    ("EURUSD", 1.0842),
    ("GBPUSD", 1.2710),
    ("USDJPY", 151.42),
    ("USDCHF", 0.9012),
    ("AUDUSD", 0.6551),
    ("USDCAD", 1.3605),
    ("NZDUSD", 0.6023),
    ("EURGBP", 0.8531),
    ("EURJPY", 164.17),
    ("XAUUSD", 2341.5),
    ("BTCUSD", 67250.0),
    ("ETHUSD", 3410.0),
];

/// Time between ticks (one random instrument per tick).
const TICK: Duration = Duration::from_millis(40);

/// Runs forever on the calling core, until shutdown.
pub async fn run(core: Rc<Core>) {
    let mut mids: Vec<f64> = INSTRUMENTS.iter().map(|(_, p)| *p).collect();
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15 ^ core.now_ms();
    let mut next = || {
        // xorshift64*: plenty for a demo random walk.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    while !core.is_shutting_down() {
        monoio::time::sleep(TICK).await;
        let i = (next() % INSTRUMENTS.len() as u64) as usize;
        let step = ((next() % 2001) as f64 - 1000.0) / 1000.0 * 0.0002;
        mids[i] *= 1.0 + step;
        let mid = mids[i];
        let spread = mid * 0.00004;
        let subject = format!("prices.{}", INSTRUMENTS[i].0);
        let data = format!(r#"{{"bid":{:.5},"ask":{:.5}}}"#, mid - spread, mid + spread);
        // A refused tick (store or cluster trouble) is simply skipped: the next one follows.
        let _ = core.publish_http(&subject, data.as_bytes(), None).await;
    }
}
