//! Versioned, checksummed save and restore of a VT-d unit (layer above vtd-core and
//! vtd-accel).
//!
//! Not built yet: this crate reserves its place in the workspace's layering and exports
//! nothing. See the open issues for its scope.
#![forbid(unsafe_code)]
