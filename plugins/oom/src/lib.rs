//! `oom`: every OOM kill (`oom/mark_victim`) with the task whose allocation ran the OOM
//! killer (the trigger), the victim with its memory footprint, both tasks' memory cgroups
//! (read from cgroupfs while they still exist) and a snapshot of `/proc/meminfo`
//! (HUATUO's `oom` tracer). Metrics: every OOM kill counted in the kernel, including those
//! the rate limit kept out of the event stream.

use std::collections::BTreeMap;

use kpulse_sdk::bpf::{self, Attach, Global, Record};
use kpulse_sdk::prelude::*;
use kpulse_sdk::records::{
    self, KP_OOM_HAS_COMM, KP_OOM_HAS_MM, KP_OOM_HAS_PGTABLES, KP_OOM_HAS_SCORE_ADJ,
    KP_OOM_HAS_UID, KP_OOM_HAS_VICTIM_MEMCG, OomEvent,
};
use serde::{Deserialize, Serialize};

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../ebpf/build/oom.bpf.o"
));

/// Distinct victim comms tracked by the `victims` metric; later ones count as "other".
const MAX_VICTIM_COMMS: usize = 100;
/// Where cgroup v1 controllers and the cgroup v2 hierarchy are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// `[plugins.oom]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// OOM events per second kept by the in-kernel rate limit, 0 = no limit (HUATUO
    /// rate-limits in BPF as well: 100). Kills over the limit are still counted.
    max_events_per_second: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_events_per_second: 100,
        }
    }
}

struct Oom {
    settings: Settings,
    object: Option<bpf::Object>,
    events: u64,
    /// Saved OOM kills per victim comm.
    victims: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct Document {
    trigger: Trigger,
    victim: Victim,
    memory_snapshot: MemorySnapshot,
}

/// The task whose allocation ran the OOM killer.
#[derive(Serialize)]
struct Trigger {
    /// Process id (tgid).
    pid: u32,
    /// Thread id.
    tid: u32,
    comm: String,
    /// Kernfs id (directory inode) of its memory cgroup; 0 if unknown.
    memory_cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<Cgroup>,
    container_id: String,
}

/// The task the OOM killer chose.
#[derive(Serialize)]
struct Victim {
    /// Thread id the kernel reported (the thread-group leader it kills).
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_vm_kb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anon_rss_kb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_rss_kb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shmem_rss_kb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pgtables_kb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    oom_score_adj: Option<i16>,
    /// Known when the victim is the trigger; else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_cgroup_id: Option<u64>,
    /// Read from `/proc/<pid>/cgroup` if the victim has not exited yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<Cgroup>,
    container_id: String,
}

/// A task's memory cgroup at the time the event was processed.
#[derive(Serialize, Debug, PartialEq)]
struct Cgroup {
    /// Path in the memory hierarchy (cgroup v1 `memory` controller, else cgroup v2).
    path: String,
    /// Usage in bytes (`memory.usage_in_bytes` / `memory.current`).
    #[serde(skip_serializing_if = "Option::is_none")]
    current: Option<u64>,
    /// Limit in bytes (`memory.limit_in_bytes` / `memory.max`); absent when unlimited (v2).
    #[serde(skip_serializing_if = "Option::is_none")]
    max: Option<u64>,
}

#[derive(Serialize)]
struct MemorySnapshot {
    /// `/proc/meminfo` in bytes (`kB` values × 1024; page counts as they are).
    host_meminfo: BTreeMap<String, u64>,
}

kpulse_sdk::register!(Oom {
    name: "oom",
    version: "0.1.0",
    interval: 10,
    kinds: [tracing, metric],
    capabilities: [
        "bpf",
        "containers",
        "read:/proc/meminfo",
        "read:/proc",
        "read:/sys/fs/cgroup"
    ],
    summary: "OOM kills with trigger, victim, memory cgroups and meminfo (oom/mark_victim)",
});

impl Plugin for Oom {
    fn init(config: Config) -> Result<Self> {
        Ok(Oom {
            settings: config.parse()?,
            object: None,
            events: 0,
            victims: BTreeMap::new(),
        })
    }
}

impl Tracing for Oom {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(
            OBJECT,
            &[
                Global::u64("max_events_per_second", self.settings.max_events_per_second),
                Global::u32("ratelimit_nr_cpus", bpf::ratelimit_nr_cpus()),
            ],
        )?;
        object.attach("oom_mark_victim", Attach::tracepoint("oom", "mark_victim"))?;
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
            if record.header().kind != records::KP_EV_OOM {
                continue;
            }
            let mut document = decode(record);
            document.trigger.cgroup = task_cgroup(document.trigger.pid);
            document.victim.cgroup = task_cgroup(document.victim.pid);
            // The victim's memcg is recorded only when it is the trigger; else its pid
            // names it while it still exists.
            let victim_key = match document.victim.memory_cgroup_id {
                Some(id) => containers::Key::MemcgId(id),
                None => containers::Key::Pid(document.victim.pid),
            };
            let owners = containers::attribute(&[
                containers::Key::MemcgId(document.trigger.memory_cgroup_id),
                victim_key,
            ]);
            if let [trigger, victim] = owners.as_slice() {
                document.trigger.container_id.clone_from(trigger);
                document.victim.container_id.clone_from(victim);
            }
            document.memory_snapshot.host_meminfo = procfs::meminfo().unwrap_or_else(|err| {
                log::warn(&format!("no meminfo snapshot: {err}"));
                BTreeMap::new()
            });
            storage::save(
                "oom",
                &document.victim.container_id,
                storage::now(),
                &document,
            )?;
            self.events += 1;
            self.count_victim(&document.victim.comm);
        }
        Ok(())
    }
}

impl Oom {
    fn count_victim(&mut self, comm: &str) {
        let key = if self.victims.contains_key(comm) || self.victims.len() < MAX_VICTIM_COMMS {
            comm
        } else {
            "other"
        };
        *self.victims.entry(key.to_owned()).or_insert(0) += 1;
    }

    fn stat(&self, object: &bpf::Object, stat: bpf::Stat) -> Result<f64> {
        Ok(object.stat(stat)? as f64)
    }
}

fn decode(r: Record<'_>) -> Document {
    let e = OomEvent::parse_padded(r.0);
    let h = &e.hdr;
    let has = |bit: u32| e.valid & bit != 0;
    let mm = |kb: u64| has(KP_OOM_HAS_MM).then_some(kb);
    Document {
        trigger: Trigger {
            pid: h.tgid,
            tid: h.pid,
            comm: h.comm_str(),
            memory_cgroup_id: e.trigger_memcg_id,
            cgroup: None,
            container_id: String::new(),
        },
        victim: Victim {
            pid: e.victim_pid,
            uid: has(KP_OOM_HAS_UID).then_some(e.victim_uid),
            comm: if has(KP_OOM_HAS_COMM) {
                e.victim_comm_str()
            } else {
                String::new()
            },
            total_vm_kb: mm(e.victim_total_vm_kb),
            anon_rss_kb: mm(e.victim_anon_rss_kb),
            file_rss_kb: mm(e.victim_file_rss_kb),
            shmem_rss_kb: mm(e.victim_shmem_rss_kb),
            pgtables_kb: has(KP_OOM_HAS_PGTABLES).then_some(e.victim_pgtables_kb),
            oom_score_adj: has(KP_OOM_HAS_SCORE_ADJ).then_some(e.victim_oom_score_adj),
            memory_cgroup_id: has(KP_OOM_HAS_VICTIM_MEMCG).then_some(e.victim_memcg_id),
            cgroup: None,
            container_id: String::new(),
        },
        memory_snapshot: MemorySnapshot {
            host_meminfo: BTreeMap::new(),
        },
    }
}

/// A task's memory cgroup with usage and limit, if the task still exists.
fn task_cgroup(pid: u32) -> Option<Cgroup> {
    if pid == 0 {
        return None;
    }
    let text = fs::read_to_string(&format!("/proc/{pid}/cgroup")).ok()?;
    // An exiting task has left its cgroups (it shows the root): only trust the file if the
    // task had not started exiting after it was read.
    let stat = fs::read_to_string(&format!("/proc/{pid}/stat")).ok()?;
    if exiting(&stat)? {
        return None;
    }
    let (v1, path) = memory_cgroup_path(&text)?;
    let read = |dir: &str, file: &str| {
        fs::read_to_string(&format!("{dir}/{file}"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let rel = path.trim_start_matches('/');
    let cgroup = if v1 {
        let dir = format!("{CGROUP_ROOT}/memory/{rel}");
        Cgroup {
            current: read(&dir, "memory.usage_in_bytes"),
            max: read(&dir, "memory.limit_in_bytes"),
            path,
        }
    } else {
        let dir = format!("{CGROUP_ROOT}/{rel}");
        Cgroup {
            current: read(&dir, "memory.current"),
            max: read(&dir, "memory.max"),
            path,
        }
    };
    Some(cgroup)
}

/// Whether a `/proc/<pid>/stat` line shows the task exiting (`PF_EXITING` in its flags, or
/// a zombie); `None` if malformed.
fn exiting(stat: &str) -> Option<bool> {
    const PF_EXITING: u64 = 0x4;
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let flags: u64 = fields.nth(5)?.parse().ok()?;
    Some(flags & PF_EXITING != 0 || state == "Z" || state == "X")
}

/// The memory cgroup of a `/proc/<pid>/cgroup` file: the v1 `memory` controller line if
/// any (`true`), else the v2 `0::` line (`false`).
fn memory_cgroup_path(text: &str) -> Option<(bool, String)> {
    let mut unified = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            return Some((true, path.to_owned()));
        }
        if id == "0" && controllers.is_empty() {
            unified = Some((false, path.to_owned()));
        }
    }
    unified
}

impl Collector for Oom {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut metrics = vec![metric::counter(
            "events",
            self.events as f64,
            "OOM kill events saved (after the rate limit).",
        )];
        for (comm, count) in &self.victims {
            metrics.push(
                metric::counter(
                    "victims",
                    *count as f64,
                    "Saved OOM kill events by victim comm.",
                )
                .label("comm", comm.clone()),
            );
        }
        if let Some(object) = &self.object {
            metrics.push(metric::counter(
                "host",
                self.stat(object, bpf::Stat::Hits)?,
                "OOM kills on the host (every oom/mark_victim, counted in the kernel).",
            ));
            metrics.push(metric::counter(
                "ratelimited",
                self.stat(object, bpf::Stat::RateLimited)?,
                "OOM kills not reported as events because of max_events_per_second.",
            ));
            metrics.push(metric::counter(
                "lost",
                self.stat(object, bpf::Stat::RingFull)?,
                "OOM kill events lost in the kernel (ring buffer full).",
            ));
        }
        Ok(metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_record_with_valid_bits() {
        let mut e = OomEvent {
            trigger_memcg_id: 777,
            victim_pid: 41,
            victim_anon_rss_kb: 65000,
            victim_oom_score_adj: -17,
            valid: KP_OOM_HAS_COMM | KP_OOM_HAS_MM | KP_OOM_HAS_SCORE_ADJ | KP_OOM_HAS_VICTIM_MEMCG,
            victim_memcg_id: 777,
            ..OomEvent::default()
        };
        (e.hdr.kind, e.hdr.pid, e.hdr.tgid) = (records::KP_EV_OOM, 41, 40);
        e.hdr.comm[..4].copy_from_slice(b"tail");
        e.victim_comm[..4].copy_from_slice(b"tail");
        let b = e.to_bytes();
        let d = decode(Record(&b));
        assert_eq!((d.trigger.pid, d.trigger.tid), (40, 41));
        assert_eq!(d.trigger.memory_cgroup_id, 777);
        assert_eq!((d.victim.pid, d.victim.comm.as_str()), (41, "tail"));
        assert_eq!(d.victim.anon_rss_kb, Some(65000));
        assert_eq!(d.victim.oom_score_adj, Some(-17));
        assert_eq!(d.victim.uid, None);
        assert_eq!(d.victim.pgtables_kb, None);
        assert_eq!(d.victim.memory_cgroup_id, Some(777));
    }

    #[test]
    fn exiting_tasks() {
        let alive = "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 7 3";
        let leaving = "42 (tail) R 1 42 42 0 -1 4194372 100 0 0 0 7 3";
        let zombie = "42 (tail) Z 1 42 42 0 -1 4194560 100 0 0 0 7 3";
        assert_eq!(exiting(alive), Some(false));
        assert_eq!(exiting(leaving), Some(true));
        assert_eq!(exiting(zombie), Some(true));
        assert_eq!(exiting("garbage"), None);
    }

    #[test]
    fn memory_cgroup_from_proc_cgroup() {
        let hybrid = "12:pids:/user.slice\n5:memory:/kpulse-oom\n0::/user.slice\n";
        assert_eq!(
            memory_cgroup_path(hybrid),
            Some((true, "/kpulse-oom".to_owned()))
        );
        assert_eq!(
            memory_cgroup_path("0::/system.slice/x.service\n"),
            Some((false, "/system.slice/x.service".to_owned()))
        );
        assert_eq!(memory_cgroup_path(""), None);
    }
}
