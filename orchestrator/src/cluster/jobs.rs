//! Job transitions: submit (validated, defaulted, idempotent by key, bounded by the queue)
//! and cancel.

use std::collections::HashMap;
use std::time::SystemTime;

use shoal::proto::{Failure, FailureKind, Job, JobSpec, JobState, orchestrator_message};
use shoal::spec::ValidSpec;

use super::*;
use crate::error::{Error, Result};
use crate::records::ShardListing;

impl Cluster {
    /// Accepts a checked and completed spec: the job is QUEUED.
    /// `trace_context` is the W3C context of the job's trace (empty when traces are off).
    pub fn submit(
        &mut self,
        spec: ValidSpec,
        trace_context: HashMap<String, String>,
        now: SystemTime,
    ) -> Result<Job> {
        self.submit_once(spec, "", trace_context, now)
            .map(|(job, _)| job)
    }

    /// Like [`submit`](Self::submit), with the client's idempotency key (empty for none):
    /// a key already used returns its job instead (`false`: not new); with a different
    /// spec it is refused.
    pub fn submit_once(
        &mut self,
        spec: ValidSpec,
        idempotency_key: &str,
        trace_context: HashMap<String, String>,
        now: SystemTime,
    ) -> Result<(Job, bool)> {
        self.submit_sharded(spec, idempotency_key, trace_context, None, now)
    }

    /// The job a submission with `idempotency_key` made before, if one did: a retried
    /// submission gets it back. The same key with a different spec is refused. A sharded
    /// spec may leave out the count the stored one was given (derived from its listing).
    pub fn resubmission(&self, idempotency_key: &str, spec: &JobSpec) -> Result<Option<Job>> {
        let Some(id) = self.idempotency_keys.get(idempotency_key) else {
            return Ok(None);
        };
        let existing = self.job(id)?;
        let mut stored = existing.spec.clone().unwrap_or_default();
        if spec.partitions == 0 && stored.inputs.iter().any(|i| i.shard) {
            stored.partitions = 0;
        }
        if &stored != spec {
            return Err(Error::AlreadyExists(format!(
                "idempotency_key was used for job {id}, with a different spec"
            )));
        }
        Ok(Some(existing.clone()))
    }

    /// Whether the queue takes another job (RESOURCE_EXHAUSTED when it is full).
    pub fn check_room(&self) -> Result<()> {
        if self.queue.len() >= self.config.max_queued {
            return Err(Error::ResourceExhausted(format!(
                "the queue is full ({} jobs waiting); try again later",
                self.queue.len()
            )));
        }
        Ok(())
    }

    /// Like [`submit_once`](Self::submit_once), for a spec whose sharded input was listed
    /// (`shards`): the listing is stored with the job, and its partitions run over it.
    pub fn submit_sharded(
        &mut self,
        spec: ValidSpec,
        idempotency_key: &str,
        trace_context: HashMap<String, String>,
        shards: Option<ShardListing>,
        now: SystemTime,
    ) -> Result<(Job, bool)> {
        if let Some(existing) = self.resubmission(idempotency_key, spec.spec())? {
            return Ok((existing, false));
        }
        self.check_room()?;
        let memory = spec.memory_bytes();
        let largest = self
            .nodes
            .values()
            .filter_map(|n| n.node.capacity.map(|c| c.memory_bytes))
            .max();
        if let Some(largest) = largest
            && memory > largest
        {
            // Known executors could never take it: say so now, not after the queue timeout.
            return Err(Error::InvalidArgument(format!(
                "resources.memory_bytes: {} is more than any executor offers (the largest \
                 offers {})",
                shoal::spec::units::format_size(memory),
                shoal::spec::units::format_size(largest)
            )));
        }
        let id = shoal::ids::JobId::new().to_string();
        let rules = spec.rules().clone();
        let shards = match (spec.shard(), shards) {
            (Some(input), Some(listing)) => Some(super::shards::Shards::new(
                spec.spec(),
                input.index,
                listing,
            )),
            (None, None) => None,
            _ => {
                return Err(Error::Internal(
                    "a sharded input and its listing must come together".into(),
                ));
            }
        };
        let job = Job {
            spec: Some(spec.into_spec()),
            id: id.clone(),
            state: JobState::Unspecified as i32,
            created_at: Some(shoal::proto::timestamp(now)),
            trace_context,
            idempotency_key: idempotency_key.to_owned(),
            shard_entries: shards.as_ref().map_or(0, |s| s.entries() as u32),
            ..Default::default()
        };
        if !idempotency_key.is_empty() {
            self.idempotency_keys
                .insert(idempotency_key.to_owned(), id.clone());
        }
        self.jobs.insert(
            id.clone(),
            JobEntry {
                job,
                rules,
                last_sequence: 0,
                queued_since: now,
                waiting_notes: 0,
                partitions: None,
            },
        );
        if let Some(shards) = &shards {
            self.effects.writes.push(Write::Shards {
                job_id: id.clone(),
                listing: shards.listing(),
            });
        }
        self.start_partitions(&id, shards);
        self.set_job_state(&id, JobState::Queued, "queued".into(), None, None, now);
        self.queue.insert(id.clone());
        self.metrics.jobs_submitted.inc();
        self.effects.schedule = true;
        Ok((self.job(&id)?.clone(), true))
    }

    /// Places a just-submitted job in the submitting transition when no other job waits, so
    /// at low load a job is accepted and assigned after one commit rather than two (the
    /// submit's, then the scheduler's; B3 in docs/PERFORMANCE.md). Behind other queued
    /// jobs it is left to the scheduler loop, which places the queue oldest first, many
    /// jobs per pass.
    pub fn place_if_first(&mut self, job_id: &str, now: SystemTime) {
        if self.queue.len() == 1 && self.queue.contains(job_id) {
            self.schedule_placements(now);
        }
    }

    /// Cancels a job. A queued job ends at once; a running one is told to stop and the job
    /// is CANCELLED now, while its execution records the executor's confirmation later.
    pub fn cancel(&mut self, job_id: &str, reason: &str, now: SystemTime) -> Result<Job> {
        let job = self.job(job_id)?;
        if job.state().is_terminal() {
            return Err(Error::FailedPrecondition(format!(
                "job {job_id} is already {}",
                job.state().short_name()
            )));
        }
        let execution_id = job.execution_id.clone();
        self.queue.remove(job_id);
        // Every running partition is told to stop; none that waits will start.
        self.stop_partitions(job_id, reason);
        if let Some(execution) = self.executions.get(&execution_id)
            && !execution.state().is_terminal()
        {
            let executor_id = execution.executor_id.clone();
            self.send_to(
                &executor_id,
                orchestrator_message::Message::Cancel(shoal::proto::Cancel {
                    execution_id: execution_id.clone(),
                    reason: reason.to_owned(),
                }),
            );
        }
        let message = if reason.is_empty() {
            "cancelled by a user".to_owned()
        } else {
            format!("cancelled: {reason}")
        };
        let failure = Failure::new(FailureKind::Cancelled, message.clone());
        self.set_job_state(
            job_id,
            JobState::Cancelled,
            message,
            Some(failure),
            None,
            now,
        );
        Ok(self.job(job_id)?.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use shoal::proto::Resources;

    /// A submission with an idempotency key already used returns that job, even after a
    /// restart (the key is stored with the job); the same key with another spec is refused.
    #[test]
    fn idempotency_keys_return_the_same_job() {
        let mut c = cluster();
        let now = SystemTime::now();
        let (first, new) = c
            .submit_once(accept(spec()), "k1", HashMap::new(), now)
            .expect("submit");
        assert!(new);
        let (again, new) = c
            .submit_once(accept(spec()), "k1", HashMap::new(), now)
            .expect("again");
        assert!(!new);
        assert_eq!(again.id, first.id);
        let mut other = spec();
        other.args = vec!["different".into()];
        let refused = c
            .submit_once(accept(other), "k1", HashMap::new(), now)
            .expect_err("another spec");
        assert!(matches!(refused, Error::AlreadyExists(_)), "{refused}");
        let snapshot = Snapshot {
            jobs: vec![c.job(&first.id).expect("job").clone()],
            ..Default::default()
        };
        let mut restored = Cluster::restore(snapshot, c.config, Instant::now());
        let (after, new) = restored
            .submit_once(accept(spec()), "k1", HashMap::new(), now)
            .expect("after");
        assert!(!new);
        assert_eq!(after.id, first.id);
        let (unkeyed, _) = restored
            .submit_once(accept(spec()), "", HashMap::new(), now)
            .expect("no key");
        assert_ne!(unkeyed.id, first.id);
    }

    /// A unique prefix names its job; a prefix of several is refused naming some of them;
    /// one of none is NOT_FOUND.
    #[test]
    fn jobs_are_found_by_a_unique_prefix() {
        let mut c = cluster();
        let now = SystemTime::now();
        let ids: Vec<String> = (0..3)
            .map(|_| {
                c.submit_once(accept(spec()), "", HashMap::new(), now)
                    .expect("submit")
                    .0
                    .id
            })
            .collect();
        for id in &ids {
            // The last characters of a UUIDv7 are random: all but the last few are unique.
            let prefix = &id[..30];
            assert_eq!(c.job_with_prefix(prefix).expect("unique"), *id);
            assert_eq!(c.job_with_prefix(id).expect("whole"), *id);
        }
        // Submitted in the same millisecond, they share their first twelve characters.
        let shared = &ids[0][..8];
        let ambiguous = c.job_with_prefix(shared).expect_err("three match");
        assert!(
            matches!(ambiguous, Error::InvalidArgument(_)),
            "{ambiguous}"
        );
        assert!(ambiguous.to_string().contains(&ids[0]), "{ambiguous}");
        let none = c.job_with_prefix("ffff").expect_err("none match");
        assert!(matches!(none, Error::NotFound(_)), "{none}");
    }

    /// Cancelling a queued job ends it; a terminal job cannot be cancelled; a running one
    /// is told to stop.
    #[test]
    fn cancel_rules() {
        let mut c = cluster();
        let now = SystemTime::now();
        let queued = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
        assert_eq!(
            c.cancel(&queued, "", now).expect("cancel").state(),
            JobState::Cancelled
        );
        assert!(matches!(
            c.cancel(&queued, "", now),
            Err(Error::FailedPrecondition(_))
        ));
        let _a = connect(&mut c, "a", 1, &[]);
        let running = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
        c.schedule(now);
        let execution = assignments(&mut c)[0].1.clone();
        c.cancel(&running, "enough", now).expect("cancel");
        let sent_cancel = c.take_effects().messages.into_iter().any(|(_, m)| {
            matches!(m.message, Some(orchestrator_message::Message::Cancel(ref x)) if x.execution_id == execution)
        });
        assert!(sent_cancel);
        assert!(matches!(
            c.cancel("no-such-job", "", now),
            Err(Error::NotFound(_))
        ));
    }

    /// A job needing more memory than any known executor offers is refused at submit,
    /// naming the largest offer, instead of waiting out its queue timeout.
    #[test]
    fn memory_beyond_every_executor_is_refused_at_submit() {
        let mut c = cluster();
        let small = Register {
            executor_id: "small".into(),
            protocol_version: 1,
            capacity: Some(Capacity {
                slots: 1,
                memory_bytes: 1 << 30,
            }),
            ..Default::default()
        };
        c.register(small, SystemTime::now(), Instant::now())
            .expect("register");
        let mut big = spec();
        big.resources = Some(Resources {
            memory_bytes: 2 << 30,
        });
        let refused = c
            .submit(accept(big), HashMap::new(), SystemTime::now())
            .expect_err("too big");
        assert!(
            refused.to_string().contains("the largest offers 1.0 GiB"),
            "{refused}"
        );
    }

    /// Past the queue bound, submissions are refused as RESOURCE_EXHAUSTED; a job leaving
    /// the queue makes room again.
    #[test]
    fn a_full_queue_refuses_submissions() {
        let mut c = cluster();
        c.config.max_queued = 2;
        let now = SystemTime::now();
        let first = c.submit(accept(spec()), HashMap::new(), now).expect("room");
        c.submit(accept(spec()), HashMap::new(), now).expect("room");
        let refused = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect_err("full");
        assert!(
            matches!(refused, Error::ResourceExhausted(_)),
            "{refused:?}"
        );
        c.cancel(&first.id, "make room", now).expect("cancel");
        c.submit(accept(spec()), HashMap::new(), now)
            .expect("room again");
    }

    /// A queued job whose stored spec no longer passes the checks (they tightened since it
    /// was accepted) fails at restore, saying why, instead of being scheduled on guesses;
    /// a finished one is kept as it is.
    #[test]
    fn a_stored_job_with_an_unusable_spec_fails_at_restore() {
        let job = |id: &str, state: JobState| Job {
            id: id.into(),
            state: state as i32,
            spec: Some(JobSpec {
                program: "not a content id".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let snapshot = Snapshot {
            jobs: vec![
                job("queued", JobState::Queued),
                job("done", JobState::Completed),
            ],
            ..Default::default()
        };
        let mut c = Cluster::restore(snapshot, ClusterConfig::default(), Instant::now());
        let queued = c.job("queued").expect("job");
        assert_eq!(queued.state(), JobState::Failed);
        let failure = queued.failure.as_ref().expect("failure");
        assert_eq!(failure.kind(), FailureKind::Internal);
        assert!(failure.message.contains("program"), "{}", failure.message);
        assert_eq!(c.job("done").expect("job").state(), JobState::Completed);
        let written: Vec<_> = c
            .take_effects()
            .writes
            .into_iter()
            .filter_map(|w| match w {
                Write::Job(job) => Some(job.id),
                _ => None,
            })
            .collect();
        assert_eq!(written, ["queued"]);
    }
}
