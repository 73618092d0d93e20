//! `sluicectl up` end to end.
