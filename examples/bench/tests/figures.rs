//! The inspector figure measures what it says: an attached client really follows the unit
//! and takes snapshots while the hits are timed, and the group yields its figures.

use std::time::Duration;

use vtd_bench::{AttachedInspector, Effort, Fixture, FixtureSpec, Group, SID, figures_of};

#[test]
fn an_attached_inspector_takes_snapshots_while_hits_run() {
    let f = Fixture::new(FixtureSpec::default());
    f.warm(SID);
    let inspector = AttachedInspector::attach(&f.unit);
    let deadline = std::time::Instant::now() + Duration::from_millis(300);
    while std::time::Instant::now() < deadline {
        f.translate(SID, 3);
    }
    let snapshots = inspector.detach();
    assert!(snapshots >= 1, "no snapshot in 300 ms");
}

#[test]
fn the_inspector_group_reports_its_figures_and_target() {
    let figures = figures_of(&[Group::Inspector], Effort { scale: 1, runs: 1 });
    let names: Vec<&str> = figures.iter().map(|f| f.name).collect();
    assert_eq!(
        names,
        [
            "inspector.hit_alone",
            "inspector.hit_attached",
            "inspector.snapshots_taken",
            "inspector.hit_attached_vs_alone"
        ]
    );
    assert!(figures.iter().all(|f| f.value.is_finite() && f.value > 0.0));
    assert!(figures[3].pass().is_some(), "the ratio has a target");
}
