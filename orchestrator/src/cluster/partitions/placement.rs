//! Placing a partitioned job's partitions: the next waiting one onto an executor that runs
//! partitions, its execution recorded, and its assignment sent, in the pass's
//! `AssignBatch` for that executor when it takes batches, alone otherwise.

use super::*;

impl Cluster {
    /// Places the next waiting partition of a queued partitioned job, if its
    /// `max_parallel` allows: true when one was placed, false when none waits or the cap
    /// holds it back, and why not when no executor can take it.
    pub(in crate::cluster) fn place_next_partition(
        &mut self,
        job_id: &str,
        now: SystemTime,
    ) -> std::result::Result<bool, String> {
        let Some(entry) = self.jobs.get(job_id) else {
            return Ok(false);
        };
        let Some(partitions) = entry.partitions.as_deref() else {
            return Ok(false);
        };
        let cap = entry.rules.max_parallel;
        let Some(&index) = partitions.waiting.first() else {
            self.queue.remove(job_id);
            return Ok(false);
        };
        if cap > 0 && partitions.counts.running >= cap {
            return Ok(false);
        }
        let executor_id = self.placement(&entry.rules, true)?;
        self.assign_partition(job_id, index, &executor_id, now);
        Ok(true)
    }

    /// How many partitions of `job_id` run now (0 for a job without partitions).
    pub(in crate::cluster) fn running_partitions(&self, job_id: &str) -> u32 {
        self.jobs
            .get(job_id)
            .and_then(|j| j.partitions.as_deref())
            .map_or(0, |p| p.counts.running)
    }

    fn assign_partition(&mut self, job_id: &str, index: u32, executor_id: &str, now: SystemTime) {
        let Some(entry) = self.jobs.get_mut(job_id) else {
            return;
        };
        let Some(partitions) = entry.partitions.as_deref_mut() else {
            return;
        };
        let slot = index as usize;
        partitions.attempts[slot] = partitions.attempts[slot].saturating_add(1);
        let attempt = u32::from(partitions.attempts[slot]);
        let count = partitions.count();
        let execution_id = shoal::ids::ExecutionId::new().to_string();
        partitions.set(index, PartitionState::Running);
        partitions.running.insert(execution_id.clone(), index);
        if partitions.waiting.is_empty() {
            self.queue.remove(job_id);
        }
        entry.job.partitions = Some(partitions.counts);
        let first = entry.job.state() == JobState::Queued;
        if first {
            let waited = now.duration_since(entry.queued_since).unwrap_or_default();
            self.metrics
                .scheduling_latency
                .observe(waited.as_secs_f64());
        }
        let inputs = match &partitions.shards {
            Some(shards) => shards.partition_inputs(index),
            None => Vec::new(),
        };
        let trace_context = self.placement_trace(job_id, &execution_id, executor_id, attempt, now);
        let execution = Execution {
            id: execution_id.clone(),
            job_id: job_id.to_owned(),
            executor_id: executor_id.to_owned(),
            attempt,
            state: ExecutionState::Scheduled as i32,
            created_at: Some(shoal::proto::timestamp(now)),
            partition: index,
            ..Default::default()
        };
        self.record_assignment(execution, now);
        if first {
            let message = format!("running {count} partitions");
            self.set_job_state(job_id, JobState::Running, message, None, None, now);
        }
        let execution = BatchedExecution {
            execution_id,
            attempt,
            partition: index,
            trace_context,
            inputs,
        };
        self.send_partition(executor_id, job_id, execution);
    }

    /// Sends a placed partition's execution: to an executor that takes batches, in the
    /// `AssignBatch` this transition already holds for the job on its stream (a new one
    /// when there is none, or it is full); to one that does not, as its own `Assign`, the
    /// same one the batch stands for.
    fn send_partition(&mut self, executor_id: &str, job_id: &str, execution: BatchedExecution) {
        let Some(link) = self.nodes.get(executor_id).and_then(|n| n.link.as_ref()) else {
            return;
        };
        let recipient = Recipient {
            executor_id: executor_id.to_owned(),
            generation: link.generation,
        };
        let takes_batches = link.features.assign_batch;
        let key = (recipient, job_id.to_owned());
        if takes_batches
            && let Some(&at) = self.effects.open_batches.get(&key)
            && let Some((_, message)) = self.effects.messages.get_mut(at)
            && let Some(orchestrator_message::Message::AssignBatch(batch)) = &mut message.message
            && batch.executions.len() < AssignBatch::MAX_EXECUTIONS
        {
            batch.executions.push(execution);
            return;
        }
        let Some(entry) = self.jobs.get(job_id) else {
            return;
        };
        let Some(partitions) = entry.partitions.as_deref() else {
            return;
        };
        let (spec, inputs_at) = match &partitions.shards {
            Some(shards) => (Some(shards.base().clone()), shards.inputs_at()),
            None => (entry.job.spec.clone(), 0),
        };
        let batch = AssignBatch {
            job_id: job_id.to_owned(),
            spec,
            partition_count: partitions.count(),
            inputs_at: u32::try_from(inputs_at).unwrap_or(u32::MAX),
            executions: vec![execution],
        };
        let (recipient, _) = &key;
        let recipient = recipient.clone();
        if takes_batches {
            self.effects
                .open_batches
                .insert(key, self.effects.messages.len());
            let message = orchestrator_message::Message::AssignBatch(batch);
            self.effects.messages.push((
                recipient,
                OrchestratorMessage {
                    message: Some(message),
                },
            ));
        } else {
            for assign in batch.into_assignments() {
                let message = orchestrator_message::Message::Assign(assign);
                self.effects.messages.push((
                    recipient.clone(),
                    OrchestratorMessage {
                        message: Some(message),
                    },
                ));
            }
        }
    }
}
