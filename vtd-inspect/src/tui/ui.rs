//! Drawing the TUI from its state: a pure function of [`App`], so TestBackend tests render
//! each tab from a recorded snapshot.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Sparkline, Table, Tabs, Wrap};

use super::app::{App, Drill, Link, Tab};
use crate::protocol::{
    ContextView, DeviceView, Event, InvalidationSourceView, PasidView, Snapshot,
};

/// Draws the whole screen.
pub fn render(app: &App, frame: &mut Frame) {
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(3),
        Constraint::Length(2),
    ])
    .areas(frame.area());
    render_header(app, frame, header);
    match &app.snapshot {
        None => {
            let msg = match &app.link {
                Link::Down { error } => format!("Not connected: {error}\nRetrying every second."),
                _ => "Waiting for the first snapshot...".to_string(),
            };
            frame.render_widget(
                Paragraph::new(msg)
                    .block(Block::bordered())
                    .wrap(Wrap { trim: true }),
                body,
            );
        }
        Some(snap) => match app.tab {
            Tab::Overview => overview(snap, frame, body),
            Tab::Devices => devices(app, snap, frame, body),
            Tab::Bindings => bindings(snap, frame, body),
            Tab::Invalidations => invalidations(app, frame, body),
            Tab::Faults => faults(app, snap, frame, body),
        },
    }
    render_footer(app, frame, footer);
}

fn render_header(app: &App, frame: &mut Frame, area: Rect) {
    let status = match &app.link {
        Link::Connecting => Span::styled("connecting", Style::new().fg(Color::Yellow)),
        Link::Connected { server } => {
            Span::styled(format!("attached: {server}"), Style::new().fg(Color::Green))
        }
        Link::Down { error } => Span::styled(
            format!("VMM GONE: {error} (reconnecting)"),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
    };
    let titles = Tab::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{} {}", i + 1, t.title()));
    let selected = Tab::ALL.iter().position(|t| *t == app.tab).unwrap_or(0);
    let tabs = Tabs::new(titles)
        .select(selected)
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .block(
            Block::bordered()
                .title(format!(" vtd-inspect {} ", app.socket))
                .title(Line::from(status).right_aligned()),
        );
    frame.render_widget(tabs, area);
}

fn render_footer(app: &App, frame: &mut Frame, area: Rect) {
    let keys = match app.tab {
        _ if app.filter_input.is_some() => {
            "type: did=N pasid=N type=NAME   Enter apply   Esc cancel"
        }
        Tab::Devices => match app.drill {
            Drill::List => "↑↓ select  Enter context entry  Tab/1-5 tabs  r reconnect  q quit",
            Drill::Context => "↑↓ PASID  Enter PASID entry  Esc back  Tab/1-5 tabs  q quit",
            Drill::Pasid => "Esc back  Tab/1-5 tabs  r reconnect  q quit",
        },
        Tab::Invalidations => {
            "p pause  / filter  c clear filter  ↑↓ PgUp PgDn scroll  End follow  Tab/1-5 tabs  q quit"
        }
        _ => "Tab/Shift-Tab or 1-5 tabs  r reconnect  q quit",
    };
    let mut lines = vec![Line::from(keys.bold())];
    if let Some(input) = &app.filter_input {
        lines.insert(0, Line::from(format!("filter> {input}_")));
    } else if let Some(err) = &app.filter_error {
        lines.insert(0, Line::from(format!("filter error: {err}").red()));
    }
    frame.render_widget(Paragraph::new(lines), area);
}

fn kv(name: &str, value: String) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{name:<14} "), Style::new().fg(Color::Cyan)),
        Span::raw(value),
    ])
}

fn flag(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

fn overview(s: &Snapshot, frame: &mut Frame, area: Rect) {
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let u = &s.unit;
    let fields = |f: &[crate::protocol::Field]| {
        f.iter()
            .filter(|f| f.value != 0)
            .map(|f| format!("{}={}", f.name, f.value))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut l = vec![
        kv(
            "VMM",
            format!("{}  up {} s", s.software, s.uptime_ms / 1000),
        ),
        kv("VER", format!("{:#x}", u.version)),
        kv("CAP", format!("{:#018x}", u.cap)),
        Line::from(format!("  {}", fields(&u.cap_fields))),
        kv("ECAP", format!("{:#018x}", u.ecap)),
        Line::from(format!("  {}", fields(&u.ecap_fields))),
        kv(
            "GSTS",
            format!("{:#010x} {}", u.gsts, u.gsts_flags.join(" ")),
        ),
        kv("RTADDR", format!("{:#x}", u.rtaddr)),
        kv(
            "root",
            match &u.root {
                Some(r) => format!("{:#x} ({})", r.addr, r.mode),
                None => "not latched".into(),
            },
        ),
        kv("IRTA", format!("{:#x}", u.irta)),
        kv("devices", format!("{}", s.devices.len())),
    ];
    if s.enumeration.budget_exhausted {
        l.push(Line::from("table walk stopped at its read budget".yellow()));
    }
    for u in &s.enumeration.unreadable {
        l.push(Line::from(format!("unreadable: {u}").red()));
    }
    frame.render_widget(
        Paragraph::new(l)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" Unit ")),
        left,
    );
    let q = &s.queue;
    let c = &s.caches;
    let n = &s.counters;
    let cache = |name: &str, v: &crate::protocol::CacheView| {
        kv(
            name,
            format!(
                "{} entries, hit {:.1}% ({} / {}), inval {}",
                v.entries,
                v.hit_rate * 100.0,
                v.hits,
                v.hits + v.misses,
                v.invalidated
            ),
        )
    };
    let mut r = vec![
        kv(
            "queue",
            format!(
                "{} base {:#x} {}x{}B",
                if q.enabled { "on" } else { "off" },
                q.base,
                q.slots,
                q.descriptor_bytes
            ),
        ),
        kv("head/tail", format!("{} / {}", q.head, q.tail)),
        kv("processed", format!("{}", q.descriptors_processed)),
        kv(
            "FSTS",
            format!("{:#x} {}", s.faults.fsts, s.faults.fsts_flags.join(" ")),
        ),
        kv(
            "faults",
            format!(
                "{} records pending, {} DMA faults total",
                s.faults.records.len(),
                s.faults.dma_faults_total
            ),
        ),
        cache("IOTLB", &c.iotlb),
        cache("context cache", &c.context),
        cache("PASID cache", &c.pasid),
        kv(
            "invalidations",
            format!(
                "{} queued, {} register",
                n.queued_invalidations, n.register_invalidations
            ),
        ),
    ];
    for (t, count) in &n.invalidations {
        r.push(kv(&format!("  {t}"), count.to_string()));
    }
    r.push(kv(
        "events",
        format!(
            "{} ({} dropped by the server)",
            n.events, n.events_overwritten
        ),
    ));
    frame.render_widget(
        Paragraph::new(r).block(Block::bordered().title(" Queue, faults, caches ")),
        right,
    );
}

fn context_lines(d: &DeviceView) -> Vec<Line<'static>> {
    let mut l = vec![kv("BDF", format!("{} (sid {:#06x})", d.bdf, d.sid))];
    l.push(kv("entry at", format!("{:#x}", d.entry_addr)));
    match &d.context {
        ContextView::Legacy {
            raw,
            translation_type,
            aw,
            did,
            ss_table,
            fpd,
            accepted,
        } => {
            l.push(kv("mode", "legacy".into()));
            l.push(kv("TT", translation_type.clone()));
            l.push(kv("AW", format!("{aw} ({}-level)", aw + 2)));
            l.push(kv("DID", did.to_string()));
            l.push(kv("SLPTPTR", format!("{ss_table:#x}")));
            l.push(kv("FPD", flag(*fpd).into()));
            l.push(kv("accepted", accepted.to_string()));
            for (i, w) in raw.iter().enumerate() {
                l.push(kv(&format!("raw[{i}]"), format!("{w:#018x}")));
            }
        }
        ContextView::Scalable {
            raw,
            pasid_dir,
            pdts,
            pasid_limit,
            paside,
            pre,
            dte,
            rid_pasid,
            fpd,
            accepted,
        } => {
            l.push(kv("mode", "scalable".into()));
            l.push(kv("PASIDDIRPTR", format!("{pasid_dir:#x}")));
            l.push(kv("PDTS", format!("{pdts} ({pasid_limit} PASIDs)")));
            l.push(kv(
                "PASIDE PRE DTE",
                format!("{} {} {}", flag(*paside), flag(*pre), flag(*dte)),
            ));
            l.push(kv("RID_PASID", rid_pasid.to_string()));
            l.push(kv("FPD", flag(*fpd).into()));
            l.push(kv("accepted", accepted.to_string()));
            for (i, w) in raw.iter().enumerate() {
                l.push(kv(&format!("raw[{i}]"), format!("{w:#018x}")));
            }
        }
    }
    l
}

fn device_summary(d: &DeviceView) -> (String, String, String) {
    match &d.context {
        ContextView::Legacy { did, .. } => ("legacy".into(), did.to_string(), "-".into()),
        ContextView::Scalable { .. } => {
            let dids: std::collections::BTreeSet<u16> = d.pasids.iter().map(|p| p.did).collect();
            let dids: Vec<String> = dids.iter().map(|d| d.to_string()).collect();
            (
                "scalable".into(),
                dids.join(","),
                format!(
                    "{}{}",
                    d.pasids.len(),
                    if d.pasids_truncated { "+" } else { "" }
                ),
            )
        }
    }
}

fn devices(app: &App, s: &Snapshot, frame: &mut Frame, area: Rect) {
    // The selection may point past a list that shrank since the last key press.
    let selected = s.devices.get(app.device).or(s.devices.last());
    let Some(dev) = selected else {
        let why = match &s.unit.root {
            None => "No root table latched yet (SRTP not done).",
            Some(_) => "No present context entries.",
        };
        frame.render_widget(
            Paragraph::new(why).block(Block::bordered().title(" Devices ")),
            area,
        );
        return;
    };
    match app.drill {
        Drill::List => {
            let [list, detail] =
                Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)])
                    .areas(area);
            let rows = s.devices.iter().enumerate().map(|(i, d)| {
                let (mode, did, pasids) = device_summary(d);
                let row = Row::new(vec![d.bdf.clone(), mode, did, pasids]);
                if i == app.device {
                    row.style(Style::new().add_modifier(Modifier::REVERSED))
                } else {
                    row
                }
            });
            let table = Table::new(
                rows,
                [
                    Constraint::Length(8),
                    Constraint::Length(9),
                    Constraint::Length(8),
                    Constraint::Length(7),
                ],
            )
            .header(Row::new(vec!["BDF", "mode", "DID", "PASIDs"]).bold())
            .block(Block::bordered().title(" Devices "));
            frame.render_widget(table, list);
            frame.render_widget(
                Paragraph::new(context_lines(dev))
                    .block(Block::bordered().title(" Context entry ")),
                detail,
            );
        }
        Drill::Context => {
            let [ctx, below] =
                Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)])
                    .areas(area);
            frame.render_widget(
                Paragraph::new(context_lines(dev))
                    .block(Block::bordered().title(format!(" {} context entry ", dev.bdf))),
                ctx,
            );
            if dev.pasids.is_empty() {
                let mut l: Vec<Line> = vec![Line::from("No PASID entries; mappings:")];
                l.extend(mapping_lines(&dev.mappings));
                frame.render_widget(
                    Paragraph::new(l).block(Block::bordered().title(" Mappings ")),
                    below,
                );
                return;
            }
            let rows = dev.pasids.iter().enumerate().map(|(i, p)| {
                let ptr = p
                    .fs_table
                    .or(p.ss_table)
                    .map_or("-".into(), |v| format!("{v:#x}"));
                let row = Row::new(vec![
                    p.pasid.to_string(),
                    p.pgtt.clone(),
                    p.did.to_string(),
                    ptr,
                    if p.accepted { "ok" } else { "FAULTS" }.into(),
                ]);
                if i == app.pasid {
                    row.style(Style::new().add_modifier(Modifier::REVERSED))
                } else {
                    row
                }
            });
            let title = format!(
                " PASID entries ({}{}) ",
                dev.pasids.len(),
                if dev.pasids_truncated {
                    ", more not listed"
                } else {
                    ""
                }
            );
            frame.render_widget(
                Table::new(
                    rows,
                    [
                        Constraint::Length(7),
                        Constraint::Length(13),
                        Constraint::Length(6),
                        Constraint::Length(12),
                        Constraint::Length(7),
                    ],
                )
                .header(Row::new(vec!["PASID", "PGTT", "DID", "table", "state"]).bold())
                .block(Block::bordered().title(title)),
                below,
            );
        }
        Drill::Pasid => {
            let Some(p) = dev.pasids.get(app.pasid) else {
                return;
            };
            pasid_detail(dev, p, frame, area);
        }
    }
}

fn mapping_lines(maps: &[crate::protocol::MappingView]) -> Vec<Line<'static>> {
    maps.iter()
        .map(|m| {
            Line::from(format!(
                "{:#014x} -> {:#014x} {:>5} {}{}{}",
                m.iova,
                m.output,
                size_name(m.size),
                if m.read { "r" } else { "-" },
                if m.write { "w" } else { "-" },
                if m.execute { "x" } else { "-" }
            ))
        })
        .collect()
}

fn size_name(size: u64) -> String {
    match size {
        s if s >= 1 << 30 => format!("{}G", s >> 30),
        s if s >= 1 << 20 => format!("{}M", s >> 20),
        s => format!("{}K", s >> 10),
    }
}

fn pasid_detail(dev: &DeviceView, p: &PasidView, frame: &mut Frame, area: Rect) {
    let [top, bottom] = Layout::vertical([Constraint::Length(16), Constraint::Min(3)]).areas(area);
    let [decoded, raw] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v:#x}"));
    let l = vec![
        kv("PASID", format!("{} of {}", p.pasid, dev.bdf)),
        kv("entry at", format!("{:#x}", p.entry_addr)),
        kv("PGTT", p.pgtt.clone()),
        kv("DID", p.did.to_string()),
        kv("AW", format!("{} ({}-level SS)", p.aw, p.aw + 2)),
        kv("FSPTPTR", opt(p.fs_table)),
        kv("SSPTPTR", opt(p.ss_table)),
        kv(
            "FSPM",
            format!("{} ({}-level FS)", p.fspm, if p.fspm == 1 { 5 } else { 4 }),
        ),
        kv(
            "SRE WPE EAFE",
            format!("{} {} {}", flag(p.sre), flag(p.wpe), flag(p.eafe)),
        ),
        kv("ERE FPD", format!("{} {}", flag(p.ere), flag(p.fpd))),
        kv(
            "PWSNP PGSNP",
            format!("{} {}", flag(p.pwsnp), flag(p.pgsnp)),
        ),
        kv(
            "accepted",
            if p.accepted {
                "yes".into()
            } else {
                "no: DMA through this entry faults".into()
            },
        ),
    ];
    frame.render_widget(
        Paragraph::new(l).block(Block::bordered().title(" PASID entry (decoded) ")),
        decoded,
    );
    let raw_lines: Vec<Line> = p
        .raw
        .iter()
        .enumerate()
        .map(|(i, w)| kv(&format!("qword {i}"), format!("{w:#018x}")))
        .collect();
    frame.render_widget(
        Paragraph::new(raw_lines).block(Block::bordered().title(" raw ")),
        raw,
    );
    let mut l: Vec<Line> = Vec::new();
    if let Some(fs) = p.fs_table {
        l.push(Line::from(format!("first-stage root at {fs:#x}").bold()));
        if p.fs_root_entries.is_empty() {
            l.push(Line::from("  no present entries read"));
        }
        for e in &p.fs_root_entries {
            l.push(Line::from(format!(
                "  [{:3}] {:#018x} -> {:#x}",
                e.index,
                e.raw,
                e.raw & 0x000f_ffff_ffff_f000
            )));
        }
    }
    if !p.mappings.is_empty() {
        l.push(Line::from("first mappings:".bold()));
        l.extend(mapping_lines(&p.mappings));
    }
    frame.render_widget(
        Paragraph::new(l).block(Block::bordered().title(" First-stage root ")),
        bottom,
    );
}

fn bindings(s: &Snapshot, frame: &mut Frame, area: Rect) {
    if s.bindings.is_empty() {
        frame.render_widget(
            Paragraph::new(
                "No passthrough bindings (the VMM has no nested binder, or no device is bound).",
            )
            .block(Block::bordered().title(" Bindings ")),
            area,
        );
        return;
    }
    let rows = s.bindings.iter().map(|b| {
        let nested = b
            .nested
            .iter()
            .map(|n| format!("{}:{}@{:#x}", n.pasid, n.hwpt, n.fs_table))
            .collect::<Vec<_>>()
            .join(" ");
        let counters = b
            .counters
            .iter()
            .map(|f| format!("{}={}", f.name, f.value))
            .collect::<Vec<_>>()
            .join(" ");
        Row::new(vec![
            Cell::from(b.bdf.clone()),
            Cell::from(b.backend.clone()),
            Cell::from(b.parent_hwpt.map_or("-".into(), |h| h.to_string())),
            Cell::from(nested),
            Cell::from(b.state.clone()),
            Cell::from(b.last_error.clone().unwrap_or_default()),
            Cell::from(counters),
        ])
    });
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Min(16),
                Constraint::Length(9),
                Constraint::Min(10),
                Constraint::Min(10),
            ],
        )
        .header(
            Row::new(vec![
                "BDF",
                "backend",
                "parent",
                "nested (pasid:hwpt@fs)",
                "state",
                "last error",
                "counters",
            ])
            .bold(),
        )
        .block(Block::bordered().title(" Bindings ")),
        area,
    );
}

fn invalidations(app: &App, frame: &mut Frame, area: Rect) {
    let series: Vec<(&str, Vec<u64>)> = app.rates.series().take(4).collect();
    let spark_height = if series.is_empty() {
        3
    } else {
        series.len() as u16 * 2 + 2
    };
    let [top, log] =
        Layout::vertical([Constraint::Length(spark_height), Constraint::Min(3)]).areas(area);
    let block = Block::bordered().title(" Rates (events/s, last 60 s) ");
    let inner = block.inner(top);
    frame.render_widget(block, top);
    if series.is_empty() {
        frame.render_widget(Paragraph::new("no events yet"), inner);
    } else {
        let rows = Layout::vertical(vec![Constraint::Length(2); series.len()]).split(inner);
        for ((name, data), row) in series.iter().zip(rows.iter()) {
            let [label, spark] =
                Layout::horizontal([Constraint::Length(24), Constraint::Min(10)]).areas(*row);
            // The current second is still filling: show the last complete one.
            let last = data.iter().rev().nth(1).copied().unwrap_or(0);
            let total: u64 = data.iter().sum();
            frame.render_widget(
                Paragraph::new(format!("{name:<13} {last:>4}/s\n{total:>13} in 60s")),
                label,
            );
            frame.render_widget(
                Sparkline::default()
                    .data(data.as_slice())
                    .style(Style::new().fg(Color::Green)),
                spark,
            );
        }
    }
    let lines = app.filtered_log();
    let visible = log.height.saturating_sub(3) as usize;
    let end = lines.len().saturating_sub(app.scroll);
    let start = end.saturating_sub(visible);
    let rows = lines.get(start..end).unwrap_or_default().iter().map(|r| {
        let time = format!("{:>9.3}", r.time_us as f64 / 1e6);
        match &r.event {
            Event::Invalidation(i) => {
                let src = match i.source {
                    InvalidationSourceView::Queue { index, .. } => format!("QI[{index}]"),
                    InvalidationSourceView::Register => "register".into(),
                };
                let o = |v: Option<u64>, hex: bool| match v {
                    Some(v) if hex => format!("{v:#x}"),
                    Some(v) => v.to_string(),
                    None => "-".into(),
                };
                Row::new(vec![
                    time,
                    src,
                    i.desc_type.clone(),
                    i.granularity.clone(),
                    o(i.did.map(u64::from), false),
                    o(i.pasid.map(u64::from), false),
                    o(i.addr, true),
                    o(i.am.map(u64::from), false),
                    i.ih.map_or("-".into(), |b| flag(b).to_string()),
                ])
            }
            other => Row::new(vec![
                time,
                "-".into(),
                other.type_name().to_string(),
                serde_json::to_string(other).unwrap_or_default(),
            ]),
        }
    });
    let title = format!(
        " Invalidations: {} shown{}{}{} ",
        lines.len(),
        if app.filter.is_empty() {
            String::new()
        } else {
            format!(", filter [{}]", app.filter.describe())
        },
        if app.paused {
            format!(", PAUSED ({} held)", app.held.len())
        } else {
            String::new()
        },
        if app.dropped > 0 {
            format!(", {} dropped", app.dropped)
        } else {
            String::new()
        }
    );
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(13),
                Constraint::Length(7),
                Constraint::Length(5),
                Constraint::Length(6),
                Constraint::Length(14),
                Constraint::Length(3),
                Constraint::Length(2),
            ],
        )
        .header(
            Row::new(vec![
                "time s", "source", "type", "gran", "DID", "PASID", "addr", "AM", "IH",
            ])
            .bold(),
        )
        .block(Block::bordered().title(title)),
        log,
    );
}

fn faults(app: &App, s: &Snapshot, frame: &mut Frame, area: Rect) {
    let [regs, events] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let f = &s.faults;
    let rows = f.records.iter().map(|r| {
        Row::new(vec![
            r.index.to_string(),
            crate::protocol::bdf(r.sid),
            r.pasid.map_or("-".into(), |p| p.to_string()),
            format!("{:#x}", r.address),
            format!("{:#04x}", r.reason_code),
            r.request.clone(),
            r.reason.clone(),
        ])
    });
    let title = format!(
        " FSTS {:#x} [{}] FRI {}  FECTL {:#x}  {} of {} records pending ",
        f.fsts,
        f.fsts_flags.join(" "),
        f.fri,
        f.fectl,
        f.records.len(),
        f.record_slots
    );
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(4),
                Constraint::Length(8),
                Constraint::Length(6),
                Constraint::Length(14),
                Constraint::Length(5),
                Constraint::Length(6),
                Constraint::Min(20),
            ],
        )
        .header(
            Row::new(vec![
                "FRCD", "BDF", "PASID", "address", "FR", "req", "reason",
            ])
            .bold(),
        )
        .block(Block::bordered().title(title)),
        regs,
    );
    let visible = events.height.saturating_sub(2) as usize;
    let lines: Vec<Line> = app
        .fault_events
        .iter()
        .rev()
        .take(visible)
        .map(|r| match &r.event {
            Event::DmaFault {
                sid,
                pasid,
                address,
                reason_code,
                reason,
                disposition,
            } => Line::from(format!(
                "{:>9.3} DMA {} pasid {} {:#x} FR {:#04x} {} ({})",
                r.time_us as f64 / 1e6,
                crate::protocol::bdf(*sid),
                pasid.map_or("-".into(), |p| p.to_string()),
                address,
                reason_code,
                reason,
                disposition
            )),
            Event::InterruptFault {
                sid,
                index,
                reason_code,
                reason,
                disposition,
            } => Line::from(format!(
                "{:>9.3} IR  {} index {} FR {:#04x} {} ({})",
                r.time_us as f64 / 1e6,
                crate::protocol::bdf(*sid),
                index,
                reason_code,
                reason,
                disposition
            )),
            other => Line::from(other.type_name().to_string()),
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(format!(
            " Fault events (newest first, {} DMA faults since start) ",
            s.counters.dma_faults
        ))),
        events,
    );
}
