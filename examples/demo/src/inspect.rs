//! `--socket PATH`: the demo serves its unit to `vtd-inspect` like any VMM embedding the
//! inspector would. The server starts before the guest programs anything, so a client sees
//! the whole boot; the passthrough bindings and their changes (hot-unplug, replug) come from
//! the unit's nested binder through vtd-inspect's binder view.

use std::path::Path;
use std::sync::Arc;

use vtd_accel::NestedBinder;
use vtd_inspect::server::{InspectServer, ServerOptions};

use crate::machine::{Ram, Unit};

/// Starts the inspector server on `path` for `unit` and its `binder`.
pub fn serve(
    unit: &Arc<Unit>,
    binder: &Arc<NestedBinder<Ram>>,
    path: &Path,
) -> Result<InspectServer, String> {
    let server = InspectServer::start(
        unit.clone(),
        path,
        ServerOptions {
            software: format!("vtd-demo {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        },
    )
    .map_err(|e| format!("--socket {}: {e}", path.display()))?;
    vtd_inspect::accel::attach_binder(&server, binder);
    Ok(server)
}
