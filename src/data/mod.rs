//! The data sources programs and inputs come from, each fetching to disk within a size
//! limit and saying why it failed: HTTP(S) URLs with the URL policy ([`http`]), S3 objects,
//! prefixes and globs ([`s3`]), and IPFS trustless gateways with every block verified
//! ([`ipfs`]).

pub mod http;
pub mod ipfs;
pub mod s3;
