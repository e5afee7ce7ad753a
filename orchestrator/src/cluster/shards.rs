//! A sharded job's entries at scheduling time: the listing its sharded input got at
//! submit (`service/shards.rs`), split into partitions of `shard_size` entries, each turned
//! into the plain inputs of that partition's assignment.

use shoal::proto::{InputSpec, JobSpec, S3Options};

use crate::records::ShardListing;

/// A sharded job's entries, as listed at submit: partition i runs over entries
/// `i * size .. (i + 1) * size`, in place of the sharded input.
pub(super) struct Shards {
    /// The job's spec without the sharded input (whose `sources` may be long), made once:
    /// each partition's spec is it with the partition's entries put in (by the executor,
    /// from an `AssignBatch`, which carries it once).
    base: JobSpec,
    /// The sharded input's index in the spec's inputs, its target and S3 settings.
    input: usize,
    target: String,
    s3: Option<S3Options>,
    /// Entries per partition.
    size: usize,
    listing: ShardListing,
}

impl Shards {
    /// The shards of `spec`, whose input `input` was listed as `listing`.
    pub(super) fn new(spec: &JobSpec, input: usize, listing: ShardListing) -> Self {
        let mut base = JobSpec {
            inputs: Vec::new(),
            ..spec.clone()
        };
        let mut sharded = InputSpec::default();
        for (i, each) in spec.inputs.iter().enumerate() {
            if i == input {
                sharded = InputSpec {
                    sources: Vec::new(),
                    ..each.clone()
                };
            } else {
                base.inputs.push(each.clone());
            }
        }
        base.shard_size = 0;
        // The cap was taken before the count was known; what the executor checks is the
        // spec of a plain partitioned job, where it cannot exceed the count.
        base.max_parallel = base.max_parallel.min(base.partitions);
        // A version names one object; a prefix's entries are other objects.
        let s3 = sharded.s3.map(|s3| S3Options {
            version_id: String::new(),
            ..s3
        });
        Shards {
            base,
            input: input.min(spec.inputs.len()),
            target: sharded.target.trim_end_matches('/').to_owned(),
            s3,
            size: spec.shard_size.max(1) as usize,
            listing,
        }
    }

    pub(super) fn entries(&self) -> usize {
        self.listing.entries.len()
    }

    pub(super) fn listing(&self) -> ShardListing {
        self.listing.clone()
    }

    /// The spec every partition shares: the job's, without the sharded input.
    pub(super) fn base(&self) -> &JobSpec {
        &self.base
    }

    /// Where a partition's entries go among the base spec's inputs: the sharded input's
    /// place.
    pub(super) fn inputs_at(&self) -> usize {
        self.input
    }

    /// The inputs partition `index` runs over in place of the sharded input: one plain
    /// input per entry of the partition, at `target/<entry name>`, in listing order.
    pub(super) fn partition_inputs(&self, index: u32) -> Vec<InputSpec> {
        let start = (index as usize).saturating_mul(self.size);
        let end = start.saturating_add(self.size).min(self.entries());
        let entries = self.listing.entries.get(start..end).unwrap_or_default();
        entries
            .iter()
            .map(|entry| InputSpec {
                source: entry.source.clone(),
                target: format!("{}/{}", self.target, entry.name),
                s3: self
                    .s3
                    .clone()
                    .filter(|_| entry.source.starts_with("s3://")),
                shard: false,
                sources: Vec::new(),
            })
            .collect()
    }
}
