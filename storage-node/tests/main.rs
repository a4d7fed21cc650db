//! Integration tests of the storage node, run in-process against a fake
//! controller registry.

mod registration;
