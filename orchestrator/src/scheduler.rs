//! The scheduler loop: runs the state machine's placement whenever capacity or the queue
//! changes, and its lease and queue-timeout sweep on a timer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::orchestrator::Orchestrator;

/// Places queued jobs whenever capacity or the queue changes, and checks leases and queue
/// timeouts every half heartbeat (at most every second), so a lost executor's work is
/// re-dispatched within half a heartbeat of its lease running out (B10).
pub(crate) async fn scheduler_loop(orchestrator: Arc<Orchestrator>) {
    let sweep_every = (orchestrator.config.heartbeat_interval / 2)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(sweep_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let sweep = tokio::select! {
            _ = orchestrator.shutdown.cancelled() => return,
            _ = orchestrator.schedule.notified() => false,
            _ = tick.tick() => true,
        };
        let result = orchestrator
            .apply(|cluster| {
                let now = SystemTime::now();
                if sweep {
                    cluster.sweep(now, Instant::now());
                    cluster.schedule(now);
                } else {
                    cluster.schedule_placements(now);
                }
                Ok(())
            })
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "scheduling pass failed");
        }
        orchestrator.finish_ended_partitions();
    }
}
