//! `hungtask`: tasks the kernel's hung-task detector (khungtaskd) reports as blocked in D
//! state for longer than `kernel.hung_task_timeout_secs` (`sched/sched_process_hang`),
//! with the hung task's kernel stack and the other D-state tasks and their stacks (HUATUO's
//! `hungtask` tracer, which gets them from sysrq `w`). The kernel re-reports a task on every
//! check, so each task is saved once per `dedupe_secs`; every report is counted.

use std::collections::BTreeMap;

use kpulse_sdk::bpf::{self, Attach, Record};
use kpulse_sdk::fs::EntryKind;
use kpulse_sdk::prelude::*;
use kpulse_sdk::records::{self, HungtaskEvent};
use serde::{Deserialize, Serialize};

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../ebpf/build/hungtask.bpf.o"
));
const TIMEOUT: &str = "/proc/sys/kernel/hung_task_timeout_secs";

/// `[plugins.hungtask]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Save a given hung task (pid and comm) at most once in this many seconds; repeats
    /// are still counted (HUATUO backs off storage starting at 10 minutes).
    dedupe_secs: u64,
    /// Other D-state tasks listed with their stacks in `blocked_processes_stack`.
    max_blocked_tasks: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            dedupe_secs: 600,
            max_blocked_tasks: 20,
        }
    }
}

struct Hungtask {
    settings: Settings,
    object: Option<bpf::Object>,
    /// (pid, comm) → monotonic ns of the report last saved.
    saved_at: BTreeMap<(u32, String), u64>,
    events: u64,
    deduplicated: u64,
}

#[derive(Serialize)]
struct Document {
    /// Process id (tgid) of the hung task.
    pid: u32,
    /// Thread id of the hung task (what the kernel reports).
    tid: u32,
    comm: String,
    /// `kernel.hung_task_timeout_secs` when the event was processed.
    #[serde(skip_serializing_if = "Option::is_none")]
    hung_task_timeout_secs: Option<u64>,
    /// Kernel stack of the hung task (`/proc/<tid>/stack`), innermost first.
    stack: Vec<String>,
    /// Other tasks in D state, with their kernel stacks.
    blocked_processes_stack: Vec<BlockedTask>,
    container_id: String,
}

#[derive(Serialize, Debug, PartialEq)]
struct BlockedTask {
    pid: u64,
    comm: String,
    stack: Vec<String>,
}

kpulse_sdk::register!(Hungtask {
    name: "hungtask",
    version: "0.1.0",
    interval: 10,
    kinds: [tracing, metric],
    capabilities: ["bpf", "containers", "read:/proc"],
    summary: "Hung (D-state) tasks with their kernel stacks (sched/sched_process_hang)",
});

impl Plugin for Hungtask {
    fn init(config: Config) -> Result<Self> {
        let settings = config.parse()?;
        // HUATUO registers the tracer only where the detector exists.
        if let Err(err) = fs::read_to_string(TIMEOUT) {
            return Err(Error::NotSupported(format!(
                "no hung task detector ({err})"
            )));
        }
        Ok(Hungtask {
            settings,
            object: None,
            saved_at: BTreeMap::new(),
            events: 0,
            deduplicated: 0,
        })
    }
}

impl Tracing for Hungtask {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(OBJECT, &[])?;
        object.attach(
            "process_hang",
            Attach::tracepoint("sched", "sched_process_hang"),
        )?;
        object.subscribe("events")?;
        self.object = Some(object);
        Ok(())
    }

    fn on_events(
        &mut self,
        _ctx: &mut Context,
        _subscription: u64,
        records: bpf::Records<'_>,
    ) -> Result<()> {
        for record in records {
            let h = record.header();
            if h.kind != records::KP_EV_HUNGTASK {
                continue;
            }
            let (tid, comm) = decode(record);
            if !self.admit(tid, &comm, h.ts_ns) {
                self.deduplicated += 1;
                continue;
            }
            let document = self.describe(tid, comm);
            // A hung task is alive by definition: its pid names its cgroup.
            let owner = containers::attribute(&[containers::Key::Pid(tid)]);
            let owner = owner.first().map_or("", String::as_str);
            storage::save("hungtask", owner, storage::now(), &document)?;
            self.events += 1;
        }
        Ok(())
    }
}

impl Hungtask {
    /// Whether a report of `(tid, comm)` at monotonic `ts_ns` should be saved; forgets
    /// tasks saved longer than `dedupe_secs` ago.
    fn admit(&mut self, tid: u32, comm: &str, ts_ns: u64) -> bool {
        let window = self.settings.dedupe_secs.saturating_mul(1_000_000_000);
        self.saved_at
            .retain(|_, saved| ts_ns.saturating_sub(*saved) < window);
        let key = (tid, comm.to_owned());
        if self.saved_at.contains_key(&key) {
            return false;
        }
        if window > 0 {
            self.saved_at.insert(key, ts_ns);
        }
        true
    }

    fn describe(&self, tid: u32, comm: String) -> Document {
        Document {
            pid: tgid_of(tid).unwrap_or(tid),
            tid,
            comm,
            hung_task_timeout_secs: fs::read_to_string(TIMEOUT)
                .ok()
                .and_then(|t| t.trim().parse().ok()),
            stack: stack_of(u64::from(tid)),
            blocked_processes_stack: blocked_tasks(u64::from(tid), self.settings.max_blocked_tasks),
            container_id: String::new(),
        }
    }

    fn stat(&self, object: &bpf::Object, stat: bpf::Stat) -> Result<f64> {
        Ok(object.stat(stat)? as f64)
    }
}

/// The hung task's thread id and comm.
fn decode(r: Record<'_>) -> (u32, String) {
    let e = HungtaskEvent::parse_padded(r.0);
    (e.hung_pid, e.hung_comm_str())
}

fn tgid_of(tid: u32) -> Option<u32> {
    let status = fs::read_to_string(&format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `/proc/<pid>/stack` as `function+0xoff/0xlen` frames; empty if the task is gone.
fn stack_of(pid: u64) -> Vec<String> {
    fs::read_to_string(&format!("/proc/{pid}/stack"))
        .map(|text| parse_stack(&text))
        .unwrap_or_default()
}

fn parse_stack(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| match line.split_once("] ") {
            Some((prefix, frame)) if prefix.starts_with('[') => frame.trim().to_owned(),
            _ => line.trim().to_owned(),
        })
        .filter(|frame| !frame.is_empty())
        .collect()
}

/// Processes in D state other than `except`, at most `max`, with their stacks.
fn blocked_tasks(except: u64, max: usize) -> Vec<BlockedTask> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut blocked = Vec::new();
    for entry in entries {
        if blocked.len() >= max {
            break;
        }
        if entry.kind != EntryKind::Directory {
            continue;
        }
        let Ok(pid) = entry.name.parse::<u64>() else {
            continue;
        };
        if pid == except {
            continue;
        }
        let Ok(text) = fs::read_to_string(&format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Ok(stat) = procfs::parse_process_stat(&text) else {
            continue;
        };
        if stat.state == 'D' {
            blocked.push(BlockedTask {
                pid,
                comm: stat.comm,
                stack: stack_of(pid),
            });
        }
    }
    blocked
}

impl Collector for Hungtask {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut metrics = vec![
            metric::counter(
                "events",
                self.events as f64,
                "Hung task events saved (after deduplication).",
            ),
            metric::counter(
                "deduplicated",
                self.deduplicated as f64,
                "Repeated hung task reports not saved (dedupe_secs).",
            ),
        ];
        if let Some(object) = &self.object {
            metrics.push(metric::counter(
                "total",
                self.stat(object, bpf::Stat::Hits)?,
                "Hung task reports by the kernel (every sched_process_hang, repeats included).",
            ));
            metrics.push(metric::counter(
                "lost",
                self.stat(object, bpf::Stat::RingFull)?,
                "Hung task events lost in the kernel (ring buffer full).",
            ));
        }
        Ok(metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_record() {
        let mut e = HungtaskEvent {
            hung_pid: 4242,
            ..HungtaskEvent::default()
        };
        e.hung_comm[..5].copy_from_slice(b"touch");
        let b = e.to_bytes();
        assert_eq!(decode(Record(&b)), (4242, "touch".to_owned()));
        assert_eq!(decode(Record(&b[..50])), (0, String::new()));
    }

    #[test]
    fn stack_frames() {
        let s =
            parse_stack("[<0>] percpu_rwsem_wait+0x12b/0x150\n[<0>] mnt_want_write+0x8f/0xb0\n\n");
        assert_eq!(
            s,
            ["percpu_rwsem_wait+0x12b/0x150", "mnt_want_write+0x8f/0xb0"]
        );
    }

    #[test]
    fn dedupes_within_window() {
        let mut h = Hungtask {
            settings: Settings {
                dedupe_secs: 10,
                ..Settings::default()
            },
            object: None,
            saved_at: BTreeMap::new(),
            events: 0,
            deduplicated: 0,
        };
        let sec = 1_000_000_000;
        assert!(h.admit(7, "touch", 100 * sec));
        assert!(!h.admit(7, "touch", 105 * sec));
        assert!(h.admit(8, "touch", 105 * sec));
        assert!(h.admit(7, "other", 105 * sec));
        assert!(h.admit(7, "touch", 111 * sec));
    }
}
