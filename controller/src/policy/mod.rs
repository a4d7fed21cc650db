//! Wave policies: what a plan may ask of a wave ([`spec`]) and the pure
//! decisions the scheduler takes from it ([`decide`], over [`facts`] and
//! maintenance [`window`]s).

pub mod decide;
pub mod facts;
pub mod spec;
pub mod window;

#[cfg(test)]
mod sim_tests;

pub use decide::{
    Admission, BatchChange, Decision, Expiry, Retry, Skip, WaveJobs, decide, decide_list, is_queued,
};
pub use facts::{BatchStats, FailureFacts, JobFacts, Load, PlanLoad, WaveFacts};
pub use spec::{
    Advance, BatchSize, Batches, Budget, Caps, Deadlines, MaintenanceWindow, PlanPolicy, Retries,
    SuccessCriteria, WavePolicy, WindowTimes,
};
