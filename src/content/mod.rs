//! Content addressing and transfer: content ids ([`cid`]), the UnixFS layout that makes
//! them identical to IPFS's ([`unixfs`]), bounded walks and removal of local trees
//! ([`local_tree`]), and moving trees between disk and the storage API ([`transfer`]).

pub mod cid;
pub mod local_tree;
pub mod transfer;
pub mod unixfs;
