//! Test guest: tries every way out of its sandbox it can think of and reports, as metrics,
//! how many attempts were made and how many succeeded (`leaked` must stay 0).

use kpulse_sdk::prelude::*;

struct Escaper {
    attempts: u32,
    leaked: Vec<String>,
    /// Every attempt and whether it succeeded, in order (exported one series each).
    outcomes: Vec<(String, bool)>,
}

kpulse_sdk::register!(Escaper {
    name: "escaper",
    version: "0.1.0",
    interval: 1,
    kinds: [tracing, metric],
    capabilities: ["read:/proc", "read:/sys", "read:/etc", "read:/"],
    summary: "Test guest: attempts path escapes and ambient authority",
});

impl Plugin for Escaper {
    fn init(_config: Config) -> Result<Self> {
        Ok(Escaper {
            attempts: 0,
            leaked: Vec::new(),
            outcomes: Vec::new(),
        })
    }
}

impl Escaper {
    fn attempt(&mut self, what: &str, succeeded: bool) {
        self.attempts += 1;
        self.outcomes.push((what.to_owned(), succeeded));
        if succeeded {
            self.leaked.push(what.to_owned());
        }
    }
}

impl Tracing for Escaper {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        // Host file capability: traversal, magic links, secrets, outside the roots.
        for path in [
            "/proc/../etc/passwd",
            "/proc/self/root/etc/passwd",
            "/proc/1/root/etc/shadow",
            "/proc/self/cwd/Cargo.toml",
            "/proc/1/environ",
            "/proc/self/mem",
            "/proc/kcore",
            "/proc/kallsyms",
            "/etc/passwd",
            "/sys/../etc/passwd",
            "/sys/fs/cgroup/../../../etc/passwd",
            "/proc/self/fd/../../../../etc/passwd",
            "/proc/thread-self/root/etc/passwd",
            "/proc/self/status\0/../../../etc/passwd",
            "/proc//../etc/shadow",
            "relative/path",
        ] {
            let leaked = fs::read(path).is_ok();
            self.attempt(path, leaked);
        }
        let leaked = fs::read_link("/proc/self/exe").is_ok();
        self.attempt("readlink /proc/self/exe", leaked);
        let leaked = fs::read_link("/proc/self/fd/0").is_ok();
        self.attempt("readlink /proc/self/fd/0", leaked);
        // WASI ambient authority: files, environment, arguments, network.
        let leaked = std::fs::read("/etc/passwd").is_ok();
        self.attempt("wasi read /etc/passwd", leaked);
        let leaked = std::fs::read_dir("/").is_ok();
        self.attempt("wasi list /", leaked);
        let leaked = std::env::vars().next().is_some();
        self.attempt("wasi environment", leaked);
        let leaked = std::env::args().nth(1).is_some();
        self.attempt("wasi arguments", leaked);
        let leaked = std::net::TcpStream::connect("127.0.0.1:19704").is_ok();
        self.attempt("wasi tcp connect", leaked);
        let leaked = std::net::UdpSocket::bind("0.0.0.0:0").is_ok();
        self.attempt("wasi udp bind", leaked);
        let leaked = std::fs::File::create("/tmp/kpulse-escaper").is_ok();
        self.attempt("wasi create /tmp file", leaked);
        if !self.leaked.is_empty() {
            log::error(&format!("sandbox leaked: {:?}", self.leaked));
        }
        Ok(())
    }
}

impl Collector for Escaper {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let each = self.outcomes.iter().map(|(what, leaked)| {
            metric::gauge(
                "attempt",
                f64::from(u8::from(*leaked)),
                "One escape attempt: 1 if it succeeded.",
            )
            .label("what", what.replace('\0', "\\0"))
        });
        Ok(each
            .chain([
                metric::gauge(
                    "attempts",
                    f64::from(self.attempts),
                    "Escape attempts made.",
                ),
                metric::gauge(
                    "leaked",
                    self.leaked.len() as f64,
                    "Escape attempts that succeeded.",
                ),
            ])
            .collect())
    }
}
