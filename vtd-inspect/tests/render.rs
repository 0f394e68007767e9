//! Each tab rendered with ratatui's TestBackend from a recorded snapshot and event stream
//! (tests/data, recorded by end_to_end.rs with VTD_INSPECT_RECORD=1).

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use vtd_inspect::protocol::{EventBatch, EventRecord, Snapshot};
use vtd_inspect::tui::app::{Action, App, Drill, Link, Tab};
use vtd_inspect::tui::ui::render;

fn recorded() -> App {
    let snap: Snapshot = serde_json::from_str(include_str!("data/snapshot.json")).unwrap();
    let events: Vec<EventRecord> = include_str!("data/events.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut app = App::new("/tmp/vtd.sock");
    app.link = Link::Connected {
        server: "e2e-test".into(),
    };
    app.on_snapshot(snap);
    app.on_events(EventBatch { events, dropped: 0 });
    app
}

fn screen(app: &App, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| render(app, f)).unwrap();
    let buf = term.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

fn key(app: &mut App, code: KeyCode) -> Action {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn has(screen: &str, needles: &[&str]) {
    for n in needles {
        assert!(screen.contains(n), "missing {n:?} in\n{screen}");
    }
}

#[test]
fn overview_shows_registers_queue_caches_and_counters() {
    let app = recorded();
    let s = screen(&app, 140, 40);
    has(
        &s,
        &[
            "1 Overview",
            "attached: e2e-test",
            "CAP",
            "GSTS",
            "TES",
            "QIES",
            "(scalable)",
            "queue",
            "on base",
            "IOTLB",
            "hit",
            "p-iotlb",
            "pasid-cache",
            "Tab/Shift-Tab or 1-5 tabs",
        ],
    );
    let cap = format!("{:#018x}", app.snapshot.as_ref().unwrap().unit.cap);
    has(&s, &[&cap]);
}

#[test]
fn devices_drill_down_from_bdf_to_pasid_entry_and_first_stage_root() {
    let mut app = recorded();
    key(&mut app, KeyCode::Char('2'));
    assert_eq!(app.tab, Tab::Devices);
    let s = screen(&app, 140, 40);
    has(
        &s,
        &[
            "00:03.0",
            "scalable",
            "1,2,3",
            "PASIDDIRPTR",
            "Enter context entry",
        ],
    );

    key(&mut app, KeyCode::Enter);
    assert_eq!(app.drill, Drill::Context);
    let s = screen(&app, 140, 40);
    has(
        &s,
        &["PASID entries (3)", "first-stage", "raw[0]", "Esc back"],
    );

    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.drill, Drill::Pasid);
    let s = screen(&app, 140, 40);
    let p = &app.snapshot.as_ref().unwrap().devices[0].pasids[1];
    has(
        &s,
        &[
            "PASID          1 of 00:03.0",
            "FSPTPTR",
            &format!("{:#x}", p.fs_table.unwrap()),
            "SRE WPE EAFE   0 0 0",
            "qword 0",
            &format!("{:#018x}", p.raw[0]),
            "first-stage root at",
            "0x000000001000 -> 0x000000500000",
        ],
    );
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.drill, Drill::List);
}

#[test]
fn bindings_tab_says_when_there_are_none() {
    let mut app = recorded();
    key(&mut app, KeyCode::Char('3'));
    has(&screen(&app, 120, 30), &["No passthrough bindings"]);
    app.snapshot
        .as_mut()
        .unwrap()
        .bindings
        .push(vtd_inspect::protocol::BindingView {
            bdf: "00:04.0".into(),
            backend: "sim".into(),
            parent_hwpt: Some(3),
            nested: vec![vtd_inspect::protocol::NestedHwptView {
                pasid: 0,
                hwpt: 7,
                fs_table: 0x1234000,
            }],
            state: "bound".into(),
            last_error: None,
            counters: vec![vtd_inspect::protocol::Field::new("flushes", 2u64)],
        });
    has(
        &screen(&app, 140, 30),
        &["00:04.0", "sim", "0:7@0x1234000", "bound", "flushes=2"],
    );
}

#[test]
fn invalidations_log_filters_and_pauses() {
    let mut app = recorded();
    key(&mut app, KeyCode::Char('4'));
    let s = screen(&app, 140, 40);
    has(
        &s,
        &[
            "Rates",
            "p-iotlb",
            "pasid-cache",
            "QI[",
            "page",
            "0x1000",
            "Invalidations: 7 shown",
        ],
    );

    key(&mut app, KeyCode::Char('/'));
    for c in "did=2 type=p-iotlb".chars() {
        key(&mut app, KeyCode::Char(c));
    }
    has(&screen(&app, 140, 40), &["filter> did=2 type=p-iotlb_"]);
    key(&mut app, KeyCode::Enter);
    let s = screen(&app, 140, 40);
    has(&s, &["Invalidations: 2 shown, filter [did=2 type=p-iotlb]"]);

    key(&mut app, KeyCode::Char('p'));
    let more: Vec<EventRecord> = include_str!("data/events.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    app.on_events(EventBatch {
        events: more,
        dropped: 3,
    });
    let s = screen(&app, 140, 40);
    has(
        &s,
        &["Invalidations: 2 shown", "PAUSED (7 held)", "3 dropped"],
    );
    key(&mut app, KeyCode::Char('p'));
    has(&screen(&app, 140, 40), &["Invalidations: 4 shown"]);
    key(&mut app, KeyCode::Char('c'));
    has(&screen(&app, 140, 40), &["Invalidations: 14 shown"]);

    key(&mut app, KeyCode::Char('/'));
    for c in "pasid=x".chars() {
        key(&mut app, KeyCode::Char(c));
    }
    key(&mut app, KeyCode::Enter);
    has(&screen(&app, 140, 40), &["filter error: not a number: x"]);
}

#[test]
fn faults_tab_shows_records_and_events() {
    let mut app = recorded();
    key(&mut app, KeyCode::Char('5'));
    let s = screen(&app, 140, 40);
    has(
        &s,
        &[
            "FSTS",
            "PPF",
            "1 of 1 records pending",
            "00:03.0",
            "DMA 00:03.0 pasid 7",
            "recorded in FRCD 0",
        ],
    );
}

#[test]
fn the_vmm_going_away_shows_and_small_or_resized_terminals_render() {
    let mut app = recorded();
    app.link = Link::Down {
        error: "the server closed the connection".into(),
    };
    has(&screen(&app, 140, 30), &["VMM GONE", "reconnecting"]);
    for tab in ["1", "2", "3", "4", "5"] {
        key(&mut app, KeyCode::Char(tab.chars().next().unwrap()));
        for (w, h) in [(20, 5), (80, 24), (200, 60), (1, 1)] {
            screen(&app, w, h);
        }
    }
    let fresh = App::new("/x");
    has(&screen(&fresh, 80, 24), &["Waiting for the first snapshot"]);
    let mut app = recorded();
    assert_eq!(key(&mut app, KeyCode::Char('q')), Action::Quit);
    assert_eq!(key(&mut app, KeyCode::Char('r')), Action::Reconnect);
    assert_eq!(
        app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Action::Quit
    );
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.tab, Tab::Devices);
    key(&mut app, KeyCode::BackTab);
    key(&mut app, KeyCode::BackTab);
    assert_eq!(app.tab, Tab::Faults);
}
