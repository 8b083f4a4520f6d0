//! The rate sweeps (broadcast, pricefeed): connect the subscribers a [`Plan`] describes and
//! wait for every subscription to be acknowledged, connect the publishers, then run one
//! measured [`Step`] per rate until the rates run out, a server dies, or a step goes bad
//! (loss, closes, p99 over the limit) without `--keep-going`. Runs on the main thread; each
//! step lends the publishers to pacer threads of its own.

use super::plan::Plan;
use super::step::Step;
use crate::bench::Bench;
use crate::publisher::{PubShared, Publisher};
use crate::report::{self, Row};
use crate::wire::mono_ns;
use crate::worker::Role;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Runs the sweep of `plan`: one row per step.
pub fn run(b: &mut Bench, mut plan: Plan) -> Result<Vec<Row>, String> {
    let roles = std::mem::take(&mut plan.roles);
    connect_subscribers(b, roles, plan.wildcards)?;
    let shared = PubShared::new(plan.subjects.len());
    let mut pubs = connect_publishers(b, &plan, &shared)?;
    std::thread::sleep(Duration::from_millis(200));
    let mut rows = Vec::new();
    for &rate in &plan.rates {
        let (row, errs0) = Step::new(b, &plan, &shared, rate).run(&mut pubs);
        log_step(rate, &row, &shared, errs0);
        let bad = row.lost != 0
            || row.gaps > 0
            || row.reorders > 0
            || row.slow_closes > 0
            || row.other_closes + row.disconnects > 0
            || row.p99_ms > b.args.p99_limit_ms;
        rows.push(row);
        if let Some(dead) = b.dead_servers() {
            eprintln!("  stopping the sweep: {dead}");
            break;
        }
        if bad && !b.args.keep_going {
            eprintln!(
                "  stopping the sweep: loss, closes or p99 above {} ms",
                b.args.p99_limit_ms
            );
            break;
        }
    }
    Ok(rows)
}

/// Connects one subscriber per role and waits for all their subscriptions; any failed
/// connection ends the run.
fn connect_subscribers(b: &mut Bench, roles: Vec<Role>, wildcards: usize) -> Result<(), String> {
    let total_subs: u64 = roles
        .iter()
        .map(|r| match r {
            Role::Sub { subjects, .. } => subjects.len() as u64,
            Role::Idle => 0,
        })
        .sum();
    let specs = roles
        .into_iter()
        .enumerate()
        .map(|(i, role)| b.spec(i, role))
        .collect();
    let t0 = mono_ns();
    let a = &b.args;
    let (_, st) = b.connect(specs, a.connect_concurrency, a.read_buf, total_subs)?;
    eprintln!(
        "  {} subscribers ({} subscriptions, {} wildcard) ready in {:.2} s; {} failed",
        st.connected,
        total_subs,
        wildcards,
        (mono_ns() - t0) as f64 / 1e9,
        st.connect_failed
    );
    if st.connect_failed > 0 {
        return Err(format!(
            "{} subscriber connections failed: {:?}{}",
            st.connect_failed,
            st.first_error,
            b.dead_servers()
                .map(|d| format!("; {d}"))
                .unwrap_or_default()
        ));
    }
    Ok(())
}

/// The plan's publishers, each connected to every node, after the subscribers (their source
/// addresses continue the subscribers' round-robin).
fn connect_publishers(
    b: &Bench,
    plan: &Plan,
    shared: &Arc<PubShared>,
) -> Result<Vec<Publisher>, String> {
    (0..plan.publishers)
        .map(|p| {
            Publisher::connect(
                &b.eps,
                b.args.pub_spread,
                b.src(plan.subscribers + p),
                plan.subjects_of(p),
                shared.clone(),
            )
            .map_err(|e| format!("publisher connect: {e}"))
        })
        .collect()
}

/// The step's progress line and its first errors (stderr).
fn log_step(rate: f64, row: &Row, shared: &PubShared, errs0: u64) {
    let pub_errors = shared.errors.load(Ordering::Relaxed) - errs0;
    eprintln!("{}", report::step_line(rate, row, pub_errors));
    if let Some(e) = &row.first_error {
        eprintln!("    first error: {e}");
    }
    if let Some(e) = shared.first_error.lock().expect("lock").as_ref() {
        if row.first_error.as_ref() != Some(e) {
            eprintln!("    first publisher error: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(subjects: usize, publishers: usize) -> Plan {
        Plan {
            subjects: (0..subjects).map(|i| format!("s.{i}")).collect(),
            subscribers: 0,
            roles: Vec::new(),
            fanout: (1..=subjects as u64).collect(),
            wildcards: 0,
            payload: 100,
            rates: Vec::new(),
            publishers,
        }
    }

    #[test]
    fn publishers_split_the_subjects_between_them() {
        let p = plan(5, 2);
        assert_eq!(p.subjects_of(0), ["s.0", "s.2", "s.4"]);
        assert_eq!(p.subjects_of(1), ["s.1", "s.3"]);
    }

    #[test]
    fn expected_deliveries_weigh_each_subject_by_its_subscribers() {
        assert_eq!(plan(3, 1).expected(&[10, 0, 2]), 10 + 3 * 2);
    }
}
