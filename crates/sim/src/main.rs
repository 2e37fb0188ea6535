//! `paxlog-sim`: run the deterministic cluster simulator over many seeds.

use clap::Parser;
use paxlog_sim::{Bug, SimOptions, SimReport, Simulation};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Deterministic Multi-Paxos cluster simulator")]
struct Args {
    /// Replay one seed and print its full report.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// First seed of the range.
    #[arg(long, default_value_t = 0)]
    start_seed: u64,
    /// Run a deliberately broken variant, to see the checkers catch it.
    #[arg(long, value_enum)]
    bug: Option<Bug>,
    /// A client keeps leases alive and lets them go; every expiry is
    /// checked against its keep-alives (never early).
    #[arg(long)]
    leases: bool,
    /// Run every seed with this many replicas instead of the size it draws.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=5))]
    nodes: Option<u32>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(seed) = args.seed {
        let options = SimOptions::from_seed(seed)
            .with_leases(args.leases)
            .with_bug(args.bug)
            .with_nodes(args.nodes);
        println!("options: {options:#?}");
        let report = Simulation::new(options).run();
        print_report(&report);
        return if report.violations.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let started = Instant::now();
    let mut totals = SimReport::default();
    let mut failed = Vec::new();
    // Seeds run per cluster size, 1 to 5 replicas.
    let mut sizes = [0u64; 5];
    for seed in args.start_seed..args.start_seed + args.seeds {
        let report = run_caught(
            SimOptions::from_seed(seed)
                .with_leases(args.leases)
                .with_bug(args.bug)
                .with_nodes(args.nodes),
        );
        totals.ticks += report.ticks;
        totals.steps += report.steps;
        totals.committed += report.committed;
        totals.slots += report.slots;
        totals.leader_changes += report.leader_changes;
        totals.reads += report.reads;
        totals.request_expired += report.request_expired;
        totals.sessions_expired += report.sessions_expired;
        totals.residual_reruns += report.residual_reruns;
        let f = &mut totals.faults;
        f.dropped += report.faults.dropped;
        f.duplicated += report.faults.duplicated;
        f.partitions += report.faults.partitions;
        f.crashes += report.faults.crashes;
        f.torn_writes += report.faults.torn_writes;
        f.snapshots_taken += report.faults.snapshots_taken;
        f.snapshots_installed += report.faults.snapshots_installed;
        f.crashes_after_win += report.faults.crashes_after_win;
        f.disks_lost += report.faults.disks_lost;
        f.synced_tails_cut += report.faults.synced_tails_cut;
        f.recoveries += report.faults.recoveries;
        f.stalls += report.faults.stalls;
        f.fsync_errors += report.faults.fsync_errors;
        f.stale_deliveries += report.faults.stale_deliveries;
        f.queue_full_drops += report.faults.queue_full_drops;
        f.connection_resets += report.faults.connection_resets;
        f.reset_drops += report.faults.reset_drops;
        f.oversized_drops += report.faults.oversized_drops;
        f.clock_jumps += report.faults.clock_jumps;
        f.membership_changes_placed += report.faults.membership_changes_placed;
        f.membership_epoch += report.faults.membership_epoch;
        f.lease_keep_alives += report.faults.lease_keep_alives;
        f.lease_expiries_checked += report.faults.lease_expiries_checked;
        sizes[report.nodes.clamp(1, 5) as usize - 1] += 1;
        if !report.violations.is_empty() {
            eprintln!(
                "seed {seed}: {} violation(s); first: {}",
                report.violations.len(),
                report.violations[0]
            );
            eprintln!("  replay: {}", report.replay_command());
            failed.push(seed);
        }
    }
    let f = &totals.faults;
    println!(
        "seeds {} | ticks {} | steps {} | commands committed {} | reads checked {} | slots {} | leader changes {} | \
         sessions expired {} request_expired answers {} residual first-request re-runs {} | \
         faults: dropped {} duplicated {} partitions {} crashes {} (after winning {}) torn writes {} fsync errors {} stalls {} stale deliveries {} disks lost {} synced tails cut {} (recovered {}) snapshots taken {} installed {} \
         queue-full drops {} connection resets {} (messages lost {}) oversized frames {} clock jumps {} membership changes placed {} (chosen {}) | \
         cluster sizes 1-5: {:?} | violations {} | {:.1}s",
        args.seeds,
        totals.ticks,
        totals.steps,
        totals.committed,
        totals.reads,
        totals.slots,
        totals.leader_changes,
        totals.sessions_expired,
        totals.request_expired,
        totals.residual_reruns,
        f.dropped,
        f.duplicated,
        f.partitions,
        f.crashes,
        f.crashes_after_win,
        f.torn_writes,
        f.fsync_errors,
        f.stalls,
        f.stale_deliveries,
        f.disks_lost,
        f.synced_tails_cut,
        f.recoveries,
        f.snapshots_taken,
        f.snapshots_installed,
        f.queue_full_drops,
        f.connection_resets,
        f.reset_drops,
        f.oversized_drops,
        f.clock_jumps,
        f.membership_changes_placed,
        f.membership_epoch,
        sizes,
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if args.leases {
        println!(
            "leases: keep-alives answered {}, expiries checked against them {}",
            f.lease_keep_alives, f.lease_expiries_checked
        );
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs one seed; a panic (a core invariant assertion, say) is reported as
/// that seed's violation, so one seed does not end the sweep.
fn run_caught(options: SimOptions) -> SimReport {
    let seed = options.seed;
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Simulation::new(options).run()
    }));
    run.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        SimReport {
            seed,
            violations: vec![format!("panic: {message}")],
            ..SimReport::default()
        }
    })
}

fn print_report(report: &SimReport) {
    println!(
        "seed {} | nodes {} | ticks {} | steps {} | committed {} | slots {} | leader changes {} | \
         sessions expired {} | request_expired answers {} | faults {:?}",
        report.seed,
        report.nodes,
        report.ticks,
        report.steps,
        report.committed,
        report.slots,
        report.leader_changes,
        report.sessions_expired,
        report.request_expired,
        report.faults
    );
    if report.violations.is_empty() {
        println!("violations: 0");
    } else {
        println!("violations ({}):", report.violations.len());
        for violation in &report.violations {
            println!("  {violation}");
        }
        println!("replay: {}", report.replay_command());
    }
}
