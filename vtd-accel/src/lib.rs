//! Not built yet: this crate is a placeholder in the workspace layout of DESIGN.md and
//! exports nothing. See the open issues for its scope.
