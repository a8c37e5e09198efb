//! Task states and the stack text of a document, without host calls (unit-tested natively).

/// A cgroup's tasks by state, as the kernel's CGROUPSTATS (`cgroupstats_build`) counts
/// them: `R` running, `S` sleeping, `D` uninterruptible, `T` stopped. Other states (idle
/// kernel threads `I`, traced `t`, zombies) are not counted, as there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub running: u64,
    pub sleeping: u64,
    pub uninterruptible: u64,
    pub stopped: u64,
}

impl Counts {
    /// Counts one task in `state` (the third field of `/proc/<pid>/task/<tid>/stat`).
    pub fn add(&mut self, state: char) {
        match state {
            'R' => self.running += 1,
            'S' => self.sleeping += 1,
            'D' => self.uninterruptible += 1,
            'T' => self.stopped += 1,
            _ => {}
        }
    }
}

/// A task whose stack goes into the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub pid: u64,
    pub tid: u64,
    pub comm: String,
}

/// HUATUO's stack text: a title line, then per task `Comm: <comm>\tPid: <pid>` (here with
/// `\tTid: <tid>`) and the raw `/proc/<pid>/task/<tid>/stack`, each followed by an empty
/// line; `""` when no task has a stack (HUATUO's section is then left out).
pub fn stack_section(title: &str, tasks: &[(Task, String)]) -> String {
    let mut out = String::new();
    for (task, stack) in tasks {
        if stack.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "Comm: {}\tPid: {}\tTid: {}\n{}",
            task.comm, task.pid, task.tid, stack
        ));
        if !stack.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
    }
    if out.is_empty() {
        return out;
    }
    format!("\n{title}\n{out}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_counted_like_cgroupstats() {
        let mut counts = Counts::default();
        for state in "RRSDDDTIZtX".chars() {
            counts.add(state);
        }
        assert_eq!(
            counts,
            Counts {
                running: 2,
                sleeping: 1,
                uninterruptible: 3,
                stopped: 1,
            }
        );
    }

    #[test]
    fn stack_text_is_huatuos_with_the_tid() {
        let task = |pid, tid| Task {
            pid,
            tid,
            comm: "touch".to_owned(),
        };
        let stack = "[<0>] percpu_rwsem_wait+0x15f/0x1d0\n[<0>] mnt_want_write+0x96/0xc0\n";
        let text = stack_section(
            "stacktrace of D task in cgroup:",
            &[
                (task(10, 10), stack.to_owned()),
                (task(10, 11), String::new()),
                (task(12, 13), "[<0>] x+0x1/0x2".to_owned()),
            ],
        );
        assert_eq!(
            text,
            "\nstacktrace of D task in cgroup:\n\
             Comm: touch\tPid: 10\tTid: 10\n\
             [<0>] percpu_rwsem_wait+0x15f/0x1d0\n[<0>] mnt_want_write+0x96/0xc0\n\n\
             Comm: touch\tPid: 12\tTid: 13\n[<0>] x+0x1/0x2\n\n"
        );
        assert_eq!(stack_section("t", &[(task(1, 1), String::new())]), "");
        assert_eq!(stack_section("t", &[]), "");
    }
}
