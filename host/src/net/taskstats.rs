//! Generic netlink's `TASKSTATS` family: `CGROUPSTATS_CMD_GET`, the task counts of a cgroup
//! v1 directory by state (what cAdvisor's `cpuload/netlink` and HUATUO's `loadavg` and
//! `dload` read). Built by hand: no kept crate has the family.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use netlink_sys::protocols::NETLINK_GENERIC;

use super::netlink::{self, NLM_F_REQUEST};
use super::{CgroupStats, NetError};

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const TASKSTATS_GENL_NAME: &[u8] = b"TASKSTATS\0";
const TASKSTATS_GENL_VERSION: u8 = 1;
const CGROUPSTATS_CMD_GET: u8 = 4;
const CGROUPSTATS_CMD_ATTR_FD: u16 = 1;
const CGROUPSTATS_TYPE_CGROUP_STATS: u16 = 1;
/// `struct cgroupstats`: five u64.
const CGROUPSTATS_LEN: usize = 40;
/// `struct genlmsghdr`.
const GENL_HDRLEN: usize = 4;

/// A generic netlink payload: `genlmsghdr` then attributes.
fn genl(cmd: u8, version: u8, attrs: &[u8]) -> Vec<u8> {
    let mut out = vec![cmd, version, 0, 0];
    out.extend_from_slice(attrs);
    out
}

/// The family id of `TASKSTATS`, resolved once (ids do not change while the kernel runs).
fn family() -> Result<u16, NetError> {
    static FAMILY: OnceLock<u16> = OnceLock::new();
    if let Some(id) = FAMILY.get() {
        return Ok(*id);
    }
    let what = "generic netlink family TASKSTATS";
    let mut attrs = Vec::new();
    netlink::put_attr(&mut attrs, CTRL_ATTR_FAMILY_NAME, TASKSTATS_GENL_NAME);
    let request = netlink::request(
        GENL_ID_CTRL,
        NLM_F_REQUEST,
        &genl(CTRL_CMD_GETFAMILY, 1, &attrs),
    );
    let answer = netlink::exchange(NETLINK_GENERIC, what, &request, false).map_err(|err| {
        match err {
            // No such family: a kernel built without CONFIG_TASKSTATS.
            NetError::NotFound(message) => NetError::NotSupported(message),
            other => other,
        }
    })?;
    let id = answer
        .first()
        .and_then(|m| m.payload.get(GENL_HDRLEN..))
        .and_then(|attrs| netlink::attr(attrs, CTRL_ATTR_FAMILY_ID))
        .filter(|id| id.len() >= 2)
        .map(|id| u16::from_ne_bytes([id[0], id[1]]))
        .ok_or_else(|| NetError::Io(format!("{what}: answer without a family id")))?;
    Ok(*FAMILY.get_or_init(|| id))
}

/// Parses a `CGROUPSTATS_CMD_NEW` answer's payload.
fn parse(path: &str, payload: &[u8]) -> Result<CgroupStats, NetError> {
    let stats = payload
        .get(GENL_HDRLEN..)
        .and_then(|attrs| netlink::attr(attrs, CGROUPSTATS_TYPE_CGROUP_STATS))
        .filter(|s| s.len() >= CGROUPSTATS_LEN)
        .ok_or_else(|| {
            NetError::Io(format!(
                "cgroupstats of {path}: answer without a struct cgroupstats"
            ))
        })?;
    Ok(CgroupStats {
        nr_sleeping: netlink::u64_at(stats, 0),
        nr_running: netlink::u64_at(stats, 8),
        nr_stopped: netlink::u64_at(stats, 16),
        nr_uninterruptible: netlink::u64_at(stats, 24),
        nr_io_wait: netlink::u64_at(stats, 32),
    })
}

/// The task counts of the cgroup v1 directory `dir` (opened by the caller, which checked
/// the plugin may read `path`). The kernel takes the directory as a file descriptor.
pub fn cgroup_stats(dir: &File, path: &str) -> Result<CgroupStats, NetError> {
    let family = family()?;
    let what = format!("cgroupstats of {path}");
    let fd = u32::try_from(dir.as_raw_fd())
        .map_err(|_| NetError::Io(format!("{what}: bad file descriptor")))?;
    let mut attrs = Vec::new();
    netlink::put_attr(&mut attrs, CGROUPSTATS_CMD_ATTR_FD, &fd.to_ne_bytes());
    let request = netlink::request(
        family,
        NLM_F_REQUEST,
        &genl(CGROUPSTATS_CMD_GET, TASKSTATS_GENL_VERSION, &attrs),
    );
    let answer =
        netlink::exchange(NETLINK_GENERIC, &what, &request, false).map_err(|err| match err {
            // The kernel refuses anything but a directory of a v1 hierarchy (cgroupfs).
            NetError::Invalid(message) => NetError::NotSupported(format!(
                "{message} (taskstats answers only for cgroup v1 directories)"
            )),
            other => other,
        })?;
    let first = answer
        .first()
        .ok_or_else(|| NetError::Io(format!("{what}: empty answer")))?;
    parse(path, &first.payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup v1 directory of this machine's `cpu` hierarchy, if it has one.
    fn cpu_v1_root() -> Option<String> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        mounts.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup")
                && fields
                    .get(3)
                    .is_some_and(|o| o.split(',').any(|opt| opt == "cpu")))
            .then(|| fields[1].to_owned())
        })
    }

    /// A new cgroup with this test's busy thread in it: taskstats counts it running, and
    /// the counts add up to the tasks in its `tasks` file.
    #[test]
    fn cgroupstats_count_a_busy_task_in_a_new_v1_cgroup() {
        let Some(root) = cpu_v1_root() else {
            eprintln!("skipped: no cgroup v1 cpu hierarchy on this machine");
            return;
        };
        let dir = format!("{root}/kpulse-net-test-{}", std::process::id());
        std::fs::create_dir(&dir).expect("create a cgroup (needs root)");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let spinner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                #[allow(unsafe_code, reason = "gettid has no std wrapper")]
                let tid = unsafe { libc::syscall(libc::SYS_gettid) };
                let _ = tid_tx.send(tid);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let tid = tid_rx.recv().expect("spinner tid");
        std::fs::write(format!("{dir}/tasks"), tid.to_string()).expect("move the spinner");
        let file = File::open(&dir).expect("open the cgroup directory");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut last = None;
        while std::time::Instant::now() < deadline {
            let stats = cgroup_stats(&file, &dir).expect("cgroupstats");
            if stats.nr_running >= 1 {
                last = Some(stats);
                break;
            }
            last = Some(stats);
            std::thread::yield_now();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = spinner.join();
        // The spinner has exited: the cgroup is empty and can go.
        let _ = std::fs::remove_dir(&dir);
        let stats = last.expect("one reading");
        assert!(stats.nr_running >= 1, "{stats:?}");
        assert_eq!(
            stats.nr_running + stats.nr_sleeping + stats.nr_stopped + stats.nr_uninterruptible,
            1,
            "one task in the cgroup: {stats:?}"
        );
    }

    #[test]
    fn a_non_cgroup_directory_is_not_supported() {
        let file = File::open("/proc").expect("/proc");
        match cgroup_stats(&file, "/proc") {
            Err(NetError::NotSupported(message)) => assert!(message.contains("v1"), "{message}"),
            other => panic!("expected not-supported, got {other:?}"),
        }
    }

    #[test]
    fn answers_without_stats_are_errors() {
        assert!(parse("/x", &[4, 1, 0, 0]).is_err());
        let mut attrs = Vec::new();
        let mut raw = Vec::new();
        for v in [1u64, 2, 3, 4, 5] {
            raw.extend_from_slice(&v.to_ne_bytes());
        }
        netlink::put_attr(&mut attrs, CGROUPSTATS_TYPE_CGROUP_STATS, &raw);
        let stats = parse("/x", &genl(4, 1, &attrs)).expect("parsed");
        assert_eq!(stats.nr_running, 2);
        assert_eq!(stats.nr_io_wait, 5);
    }
}

#[cfg(test)]
mod fsaccess_tests {
    use super::*;

    /// The directory opened the way the `net` interface opens it (through the plugin's
    /// grant) answers like one opened directly, and quickly.
    #[test]
    fn a_directory_opened_through_fsaccess_answers() {
        let policy = crate::config::PolicyConfig::default();
        let fs = crate::fsaccess::FsAccess::open(&policy);
        let grant = fs.grant(&["/sys/fs/cgroup".to_owned()]);
        let Ok(dir) = fs.open_dir(&grant, "/sys/fs/cgroup/cpu") else {
            eprintln!("skipped: no /sys/fs/cgroup/cpu");
            return;
        };
        let started = std::time::Instant::now();
        let stats = cgroup_stats(&dir, "/sys/fs/cgroup/cpu");
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_millis(500),
            "{took:?} {stats:?}"
        );
        let stats = stats.expect("cgroupstats of the cpu root");
        assert!(stats.nr_running + stats.nr_sleeping > 0, "{stats:?}");
    }
}
