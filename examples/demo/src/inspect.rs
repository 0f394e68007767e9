//! `--socket PATH`: the demo serves its unit to `vtd-inspect` like any VMM embedding the
//! inspector would. The server starts before the guest programs anything, so a client sees
//! the whole boot; the passthrough bindings come from the demo's binders, and hot-unplug and
//! replug are reported as binding changes. The backend column names the simulated host IOMMU
//! (`sim0`, `sim1`: one iommufd each).

use std::path::Path;
use std::sync::Arc;

use vtd_accel::{HostAttachment, NestedBinder};
use vtd_inspect::protocol::{BindingView, Event, Field, NestedHwptView};
use vtd_inspect::server::{BindingSource, InspectServer, ServerOptions};

use crate::machine::{Ram, Unit};

/// The binders, as the inspector's snapshot shows them.
pub struct Bindings {
    binders: Vec<Arc<NestedBinder<Ram>>>,
}

impl Bindings {
    /// Over the machine's binders (one per simulated host IOMMU).
    pub fn new(binders: Vec<Arc<NestedBinder<Ram>>>) -> Self {
        Self { binders }
    }
}

impl BindingSource for Bindings {
    fn bindings(&self) -> Vec<BindingView> {
        let mut views: Vec<BindingView> = Vec::new();
        for (i, binder) in self.binders.iter().enumerate() {
            let stats = binder.stats();
            for b in binder.bindings() {
                let bdf = b.bdf.to_string();
                let at = match views.iter().position(|v| v.bdf == bdf) {
                    Some(at) => at,
                    None => {
                        views.push(BindingView {
                            bdf,
                            backend: format!("sim{i}"),
                            parent_hwpt: Some(b.parent),
                            nested: Vec::new(),
                            state: "blocked".into(),
                            last_error: None,
                            counters: vec![
                                Field::new("hwpts_allocated", stats.hwpts_allocated),
                                Field::new("host_errors", stats.host_errors),
                            ],
                        });
                        views.len() - 1
                    }
                };
                let view = &mut views[at];
                // "bound" once any PASID is nested: a device using only PASID 5 leaves its
                // PASID 0 (requests without PASID) blocked, as the guest set it up.
                if let HostAttachment::Nested(hwpt) = b.host {
                    view.nested.push(NestedHwptView {
                        pasid: b.pasid,
                        hwpt,
                        fs_table: b.s1.map_or(0, |s| s.pgtbl_addr),
                    });
                    if view.state == "blocked" {
                        view.state = "bound".into();
                    }
                }
                if b.dirty {
                    view.state = "failed".into();
                }
            }
        }
        views
    }
}

/// Starts the inspector server on `path` for `unit`.
pub fn serve(unit: &Arc<Unit>, path: &Path, bindings: Bindings) -> Result<InspectServer, String> {
    let server = InspectServer::start(
        unit.clone(),
        path,
        ServerOptions {
            software: format!("vtd-demo {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        },
    )
    .map_err(|e| format!("--socket {}: {e}", path.display()))?;
    server.set_binding_source(Arc::new(bindings));
    Ok(server)
}

/// Reports a binding change (unplug, replug) to attached clients.
pub fn binding_changed(server: Option<&InspectServer>, bdf: String, pasid: u32, change: &str) {
    if let Some(s) = server {
        s.feed().report(Event::BindingChanged {
            bdf,
            pasid: Some(pasid),
            change: change.into(),
        });
    }
}
