//! `kpulse:plugin/host`: the host's identity, read once at start-up (`hostinfo`).

use crate::wit::host;

use super::HostState;

impl host::Host for HostState {
    fn info(&mut self) -> wasmtime::Result<host::HostInfo> {
        let info = &self.services.host;
        Ok(host::HostInfo {
            hostname: info.hostname.clone(),
            region: info.region.clone(),
            kernel_release: info.kernel_release.clone(),
            cpu_count: info.cpu_count,
            boot_time_secs: info.boot_time_secs,
        })
    }
}
