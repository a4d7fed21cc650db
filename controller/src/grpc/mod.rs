//! The gRPC edge: tonic adapters over [`crate::controller::Controller`] and
//! the wire/domain conversions. Nothing else in the crate knows tonic.

pub mod access;
pub mod convert;
pub mod operator;
pub mod peer;
pub mod storage;
pub mod worker;
