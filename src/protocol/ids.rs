//! Identifiers of jobs and executions: time-ordered UUIDv7s, so sorting by id sorts by
//! creation time (listings and FIFO scheduling rely on it).

use std::fmt;
use std::str::FromStr;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// A new id, later than every id made before it in this process.
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = crate::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::try_parse(s).map(Self).map_err(|_| {
                    crate::Error::invalid_spec($what, format!("{s:?} is not a valid {}", $what))
                })
            }
        }
    };
}

uuid_id!(
    /// Identifies a job.
    JobId,
    "job_id"
);
uuid_id!(
    /// Identifies one execution (attempt) of a job.
    ExecutionId,
    "execution_id"
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids made later sort later, which FIFO scheduling and listings depend on.
    #[test]
    fn ids_are_time_ordered_and_round_trip() {
        let a = JobId::new();
        let b = JobId::new();
        assert!(a < b);
        assert_eq!(a.to_string().parse::<JobId>().expect("parses"), a);
        assert!(a.to_string() < b.to_string());
        assert!("not-a-uuid".parse::<ExecutionId>().is_err());
    }
}
