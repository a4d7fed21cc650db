//! Wave policies: what a plan may ask of a wave ([`spec`]) and the pure
//! decisions the scheduler takes from it.

pub mod spec;

pub use spec::{
    Advance, BatchSize, Batches, Budget, Caps, Deadlines, MaintenanceWindow, PlanPolicy, Retries,
    SuccessCriteria, WavePolicy, WindowTimes,
};
