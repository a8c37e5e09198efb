//! Facts about the machine, read once at start-up and shared with plugins and documents.

/// Host identity and shape, fixed for the life of the agent.
#[derive(Debug, Clone)]
pub struct HostInfo {
    pub hostname: String,
    pub region: String,
    pub kernel_release: String,
    pub cpu_count: u32,
    pub boot_time_secs: u64,
}

impl HostInfo {
    pub fn detect(region: &str) -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let hostname = {
            let name = read("/proc/sys/kernel/hostname");
            if name.is_empty() {
                "localhost".to_owned()
            } else {
                name
            }
        };
        let boot_time_secs = read("/proc/stat")
            .lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let cpu_count = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1);
        Self {
            hostname,
            region: region.to_owned(),
            kernel_release: read("/proc/sys/kernel/osrelease"),
            cpu_count,
            boot_time_secs,
        }
    }
}
