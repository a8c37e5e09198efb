//! The container registry against real runtimes: a private containerd (ctr and CRI pods)
//! and dockerd from `scripts/containers.sh`, real cgroups, real BPF events. Each test makes
//! its own containers (ids carry the test's pid) and ignores everyone else's.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use kpulse_integration_tests::containers::Runtimes;
use kpulse_integration_tests::{Agent, guest_wasm, plugin_wasm, sample, wait_for};
use serde_json::Value;

const NS: &str = "kptest";

fn containers(agent: &Agent) -> Vec<Value> {
    agent.get("/containers").json()["data"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn find(agent: &Agent, id: &str) -> Option<Value> {
    containers(agent).into_iter().find(|c| c["id"] == id)
}

fn label(c: &Value, key: &str) -> Option<String> {
    c["labels"]
        .as_array()?
        .iter()
        .find_map(|pair| (pair[0] == key).then(|| pair[1].as_str().unwrap_or("").to_owned()))
}

fn inode(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("{path}: {err}"))
        .ino()
}

#[test]
fn a_ctr_container_is_found_at_once_with_its_ids_and_stays_resolvable_for_the_grace_period() {
    let runtimes = Runtimes::get();
    let agent = Agent::start(
        "containers-ctr",
        &[],
        &runtimes.agent_config("grace_period_secs = 3"),
    );
    // A short id that is not hex: what plain `ctr` users type.
    let id = format!("web.{}", std::process::id());
    let started = Instant::now();
    let container = runtimes.ctr_run(
        NS,
        &id,
        &[("app", "demo")],
        &[],
        "while :; do sleep 1; done",
    );
    wait_for(
        Duration::from_secs(10),
        "the container in /containers",
        || find(&agent, &id).filter(|c| c["state"] == "running"),
    );
    let latency = started.elapsed();
    println!("discovery latency including `ctr run`: {latency:?}");
    assert!(latency < Duration::from_secs(5), "{latency:?}");
    // Labels come from containerd's API, which may answer a pass after the bundle did.
    let c = wait_for(Duration::from_secs(10), "the container's labels", || {
        find(&agent, &id).filter(|c| label(c, "app").is_some())
    });

    let pid = container.pid();
    assert_eq!(c["runtime"], "containerd");
    assert_eq!(c["runtime_namespace"], NS);
    assert_eq!(c["name"], id.as_str());
    assert_eq!(c["init_pid"], pid);
    assert_eq!(label(&c, "app").as_deref(), Some("demo"));
    let path = format!("/{NS}/{id}");
    assert_eq!(c["cgroup_path"], path.as_str());
    // The ids BPF sees: cgroup v2 and memcg directory inodes, the netns inode.
    assert_eq!(
        c["cgroup_id"],
        inode(&format!("/sys/fs/cgroup/unified{path}"))
    );
    assert_eq!(
        c["memcg_id"],
        inode(&format!("/sys/fs/cgroup/memory{path}"))
    );
    assert_eq!(c["netns_inum"], inode(&format!("/proc/{pid}/ns/net")));
    assert_eq!(c["host_network"], false);
    assert!(c["started_at_ns"].as_u64().unwrap_or(0) > 0);
    let sources: Vec<&str> = c["sources"]
        .as_array()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        sources.contains(&"containerd") && sources.contains(&"bundle"),
        "{sources:?}"
    );

    // HUATUO's shape lists it too.
    let huatuo = agent
        .get(&format!("/containers/json?container_id={id}"))
        .json();
    let listed = huatuo["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1, "{huatuo}");
    assert_eq!(listed[0]["type"], "normal");
    assert_eq!(listed[0]["init_pid"], pid);
    assert_eq!(listed[0]["net_namespace_inum"], c["netns_inum"]);

    // Stopped: still there, marked so, for the grace period; then gone.
    // The grace period starts when the registry sees the stop, after this instant.
    let stopped_at = Instant::now();
    container.stop();
    wait_for(
        Duration::from_secs(5),
        "the container marked stopped",
        || find(&agent, &id).filter(|c| c["state"] == "stopped"),
    );
    println!("stop seen after {:?}", stopped_at.elapsed());
    wait_for(
        Duration::from_secs(40),
        "the container forgotten after the grace period",
        || find(&agent, &id).is_none().then_some(()),
    );
    assert!(stopped_at.elapsed() >= Duration::from_secs(3));
    let metrics = agent.metrics();
    assert!(sample(&metrics, "kpulse_container_discovery_passes_total").unwrap_or(0.0) >= 2.0);
    assert!(
        metrics.contains("kpulse_containers{runtime=\"containerd\"}"),
        "{metrics}"
    );
}

#[test]
fn a_docker_container_has_its_name_image_and_labels() {
    let runtimes = Runtimes::get();
    let agent = Agent::start("containers-docker", &[], &runtimes.agent_config(""));
    let name = format!("kp-docker-{}", std::process::id());
    let container = runtimes.docker_run(&name, &[("app", "shop")], "while :; do sleep 1; done");
    let c = wait_for(Duration::from_secs(10), "the Docker container", || {
        find(&agent, &container.id).filter(|c| c["name"] == name.as_str())
    });
    assert_eq!(c["runtime"], "docker");
    assert_eq!(c["runtime_namespace"], "moby");
    assert_eq!(
        c["image"],
        runtimes.var("KPULSE_TEST_DOCKER_IMAGE").as_str()
    );
    assert_eq!(label(&c, "app").as_deref(), Some("shop"));
    assert_eq!(
        c["cgroup_path"],
        format!("/docker/{}", container.id).as_str()
    );
    assert_eq!(c["hostname"], &container.id[..12]);
    let huatuo = agent.get("/containers/json").json();
    let ours: Vec<_> = huatuo["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["id"] == container.id.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "{huatuo}");
    assert_eq!(ours[0]["name"], name.as_str());
    assert_eq!(ours[0]["hostname"], &container.id[..12]);
}

#[test]
fn a_cri_pod_carries_pod_name_namespace_uid_labels_and_qos() {
    let runtimes = Runtimes::get();
    let agent = Agent::start(
        "containers-cri",
        &[plugin_wasm("oom"), guest_wasm("containers_probe")],
        &runtimes.agent_config(""),
    );
    agent.wait_state("oom", "running", Duration::from_secs(20));
    let pid = std::process::id();
    let uid = format!("0b8c6a5e-1f2d-4c3b-9a8e-{pid:012}");
    let pod_name = format!("kp-pod-{pid}");
    let pod = runtimes.cri_pod(&agent.dir, &pod_name, "shop", &uid);
    let app = wait_for(Duration::from_secs(60), "the pod's container", || {
        find(&agent, &pod.container).filter(|c| c["state"] == "running")
    });
    assert_eq!(app["runtime"], "containerd");
    assert_eq!(app["runtime_namespace"], "k8s.io");
    assert_eq!(app["name"], "app");
    assert_eq!(app["qos"], "burstable");
    assert_eq!(app["container_type"], "normal");
    assert_eq!(app["image"], runtimes.var("KPULSE_TEST_CRI_IMAGE").as_str());
    assert_eq!(app["pod"]["name"], pod_name.as_str());
    assert_eq!(app["pod"]["namespace"], "shop");
    assert_eq!(app["pod"]["uid"], uid.as_str());
    let pod_labels = app["pod"]["labels"].as_array().cloned().unwrap_or_default();
    assert!(
        pod_labels
            .iter()
            .any(|l| l[0] == "tier" && l[1] == "backend"),
        "{pod_labels:?}"
    );
    assert_eq!(label(&app, "role").as_deref(), Some("worker"));
    assert_eq!(
        app["cgroup_path"],
        format!("/kubepods/burstable/pod{uid}/{}", pod.container).as_str()
    );
    // Host network here: no netns of its own.
    assert_eq!(app["host_network"], true);
    let sandbox = find(&agent, &pod.sandbox).expect("the sandbox is a workload too");
    assert_eq!(sandbox["container_type"], "sandbox");

    let huatuo = agent.get("/containers/json").json();
    let listed = huatuo["data"].as_array().cloned().unwrap_or_default();
    assert!(
        listed.iter().all(|c| c["id"] != pod.sandbox.as_str()),
        "sandboxes are not listed"
    );
    let ours = listed
        .iter()
        .find(|c| c["id"] == pod.container.as_str())
        .unwrap_or_else(|| panic!("{huatuo}"));
    assert_eq!(ours["qos"], "burstable");
    assert_eq!(ours["labels"]["HostNamespace"], "shop");
    assert_eq!(
        ours["hostname"],
        pod_name.as_str(),
        "no OCI hostname: the pod's name"
    );
    assert_eq!(ours["type"], "normal");

    // Metrics: the pod's identity in HUATUO's container labels.
    let metrics = wait_for(
        Duration::from_secs(30),
        "the pod container's samples",
        || {
            let metrics = agent.metrics();
            metrics
                .lines()
                .find(|l| {
                    l.starts_with("kpulse_containers_probe_container_up{")
                        && l.contains(&format!("container_host=\"{pod_name}\""))
                        && l.contains("container_name=\"app\"")
                })
                .map(str::to_owned)
        },
    );
    assert!(metrics.contains("container_name=\"app\""), "{metrics}");
    assert!(
        metrics.contains("container_level=\"burstable\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("container_hostnamespace=\"shop\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("container_label_role=\"worker\""),
        "{metrics}"
    );

    // Documents: a container of the pod OOMs under its limit.
    let hog = pod.add_container(
        &agent.dir,
        "hog",
        // Time for its CRI metadata to reach the registry first (a document saved in a
        // container's first moments may carry only what its cgroup path tells).
        "sleep 5; a=x; while :; do a=\"$a$a\"; done",
        33_554_432,
    );
    wait_for(
        Duration::from_secs(5),
        "the hog named by its CRI metadata",
        || find(&agent, &hog).filter(|c| c["name"] == "hog"),
    );
    let doc = wait_for(
        Duration::from_secs(60),
        "the pod container's OOM document",
        || {
            let docs = agent.get("/events?tracer=oom&limit=100").json();
            docs.as_array()?
                .iter()
                .find(|d| d["container_id"] == hog.as_str())
                .cloned()
        },
    );
    assert_eq!(doc["container_name"], "hog");
    assert_eq!(doc["pod_name"], pod_name.as_str());
    assert_eq!(doc["container_host_namespace"], "shop");
    assert_eq!(doc["container_qos"], "burstable");
    assert_eq!(doc["container_hostname"], pod_name.as_str());
    assert_eq!(
        doc["container_image"],
        runtimes.var("KPULSE_TEST_CRI_IMAGE").as_str()
    );
}

#[test]
fn a_guest_follows_the_registry_resolves_keys_and_gets_container_labels_on_its_metrics() {
    let runtimes = Runtimes::get();
    let agent = Agent::start(
        "containers-guest",
        &[guest_wasm("containers_probe")],
        &runtimes.agent_config(""),
    );
    agent.wait_state("containers_probe", "running", Duration::from_secs(20));
    let id = format!("probe-{}", std::process::id());
    let _container = runtimes.ctr_run(
        NS,
        &id,
        &[("app", "probe")],
        &[],
        "while :; do sleep 1; done",
    );
    let series = format!("id=\"{id}\"");
    let resolved_keys = "kpulse_containers_probe_resolved_keys";
    let metrics = wait_for(
        Duration::from_secs(10),
        "the container in the guest's samples",
        || {
            let metrics = agent.metrics();
            kpulse_integration_tests::sample_with(&metrics, resolved_keys, &series)
                .is_some()
                .then_some(metrics)
        },
    );
    // cgroup id, memcg id, netns and pid all resolve back to it.
    let resolved = kpulse_integration_tests::sample_with(&metrics, resolved_keys, &series);
    assert_eq!(resolved, Some(4.0), "{metrics}");
    // HUATUO's container labels, in its order, plus the allow-listed label.
    let expected = format!(
        "kpulse_containers_probe_container_up{{region=\"test\",container_host=\"{id}\",container_name=\"{id}\",container_type=\"normal\",container_level=\"\",container_hostnamespace=\"\",host="
    );
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&expected))
        .unwrap_or_else(|| panic!("no {expected} in\n{metrics}"));
    assert!(line.contains("container_label_app=\"probe\""), "{line}");
    assert_eq!(
        sample(&metrics, "kpulse_containers_probe_denied"),
        Some(0.0)
    );
}

#[test]
fn the_policy_can_refuse_the_registry_to_a_plugin() {
    let runtimes = Runtimes::get();
    let agent = Agent::start(
        "containers-denied",
        &[guest_wasm("containers_probe")],
        &format!(
            "[policy]\ncontainers_allow = [\"someone_else\"]\n{}",
            runtimes.agent_config("")
        ),
    );
    agent.wait_state("containers_probe", "running", Duration::from_secs(20));
    let metrics = agent.metrics();
    assert_eq!(
        sample(&metrics, "kpulse_containers_probe_denied"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        !metrics.contains("kpulse_containers_probe_container_up"),
        "{metrics}"
    );
}

#[test]
fn an_oom_kill_in_a_container_names_the_container() {
    let runtimes = Runtimes::get();
    let agent = Agent::start(
        "containers-oom",
        &[plugin_wasm("oom")],
        &runtimes.agent_config(""),
    );
    agent.wait_state("oom", "running", Duration::from_secs(20));
    let id = format!("hog-{}", std::process::id());
    let _hog = runtimes.ctr_run(
        NS,
        &id,
        &[("app", "hog")],
        &["--memory-limit", "33554432"],
        "sleep 1; a=x; while :; do a=\"$a$a\"; done",
    );
    let doc = wait_for(
        Duration::from_secs(30),
        "an oom document naming the container",
        || {
            let docs = agent.get("/events?tracer=oom&limit=100").json();
            docs.as_array()?
                .iter()
                .find(|d| d["container_id"] == id.as_str())
                .cloned()
        },
    );
    assert_eq!(doc["container_name"], id.as_str());
    assert_eq!(doc["container_type"], "normal");
    assert_eq!(doc["cgroup_path"], format!("/{NS}/{id}").as_str());
    assert_eq!(doc["tracer_data"]["victim"]["container_id"], id.as_str());
    assert_eq!(doc["tracer_data"]["trigger"]["container_id"], id.as_str());
}

#[test]
fn drops_and_slow_packets_in_a_container_netns_name_the_container() {
    let _serial = kpulse_integration_tests::kfree_skb_lock();
    let runtimes = Runtimes::get();
    // The host netns is excluded by default: only containers' packets are reported.
    let config = runtimes.agent_config("")
        + "[plugins.net_rx_latency]\ntcp_threshold_ns = 1\nusercopy_threshold_ns = 1\n";
    let agent = Agent::start(
        "containers-net",
        &[plugin_wasm("dropwatch"), plugin_wasm("net_rx_latency")],
        &config,
    );
    agent.wait_state("dropwatch", "running", Duration::from_secs(20));
    agent.wait_state("net_rx_latency", "running", Duration::from_secs(20));
    let id = format!("net-{}", std::process::id());
    let container = runtimes.ctr_run(
        NS,
        &id,
        &[],
        &[],
        // A TCP server on the container's loopback that reads late.
        "while :; do nc -l -p 7000 -e sh -c 'sleep 0.1; cat >/dev/null'; done",
    );
    wait_for(Duration::from_secs(10), "the container", || {
        find(&agent, &id)
    });
    let mut round = 0;
    let owned = |tracer: &str| {
        let docs = agent
            .get(&format!("/events?tracer={tracer}&limit=1000"))
            .json();
        docs.as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d["container_id"] == id.as_str())
            .collect::<Vec<_>>()
    };
    let (drops, slow) = wait_for(
        Duration::from_secs(40),
        "drop and latency documents",
        || {
            round += 1;
            // A refused connection (a drop, NO_SOCKET) and a delayed read (TCP latency).
            let _ = container.exec(&format!("x{round}"), "nc -w 1 127.0.0.1 9 </dev/null; dd if=/dev/zero bs=16k count=1 2>/dev/null | nc -w 2 127.0.0.1 7000");
            let drops = owned("dropwatch");
            let slow = owned("net_rx_latency");
            (!drops.is_empty() && !slow.is_empty()).then_some((drops, slow))
        },
    );
    assert_eq!(drops[0]["container_name"], id.as_str());
    assert_eq!(slow[0]["container_name"], id.as_str());
    let netns = find(&agent, &id).map(|c| c["netns_inum"].clone());
    assert_eq!(
        Some(drops[0]["tracer_data"]["net_namespace_inum"].clone()),
        netns
    );
}

#[test]
fn absent_and_hanging_runtime_sockets_are_skipped_and_counted() {
    let runtimes = Runtimes::get();
    let dir = kpulse_integration_tests::scratch_dir("containers-hang-sock");
    // A socket that accepts and never answers.
    let hang = dir.join("hang.sock");
    let listener = std::os::unix::net::UnixListener::bind(&hang).expect("bind");
    let accepted = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(8).flatten() {
            held.push(stream);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    let config = format!(
        "[containers]\ncontainerd_sockets = [\"/nonexistent/containerd.sock\", {hang:?}]\n\
         containerd_state_dirs = [{:?}]\ndocker_socket = \"/nonexistent/docker.sock\"\n\
         api_timeout_ms = 300\n",
        runtimes.var("KPULSE_TEST_CONTAINERD_STATE")
    );
    let started = Instant::now();
    let agent = Agent::start("containers-hang", &[], &config);
    println!("agent up after {:?}", started.elapsed());
    // The bundles still tell about ctr containers without any API.
    let id = format!("bundle-{}", std::process::id());
    let _container = runtimes.ctr_run(NS, &id, &[], &[], "while :; do sleep 1; done");
    let c = wait_for(
        Duration::from_secs(10),
        "the container from its bundle",
        || find(&agent, &id),
    );
    assert_eq!(c["sources"], serde_json::json!(["bundle"]));
    // Answers never wait on the hanging socket.
    let asked = Instant::now();
    let _ = agent.get("/containers");
    assert!(
        asked.elapsed() < Duration::from_millis(250),
        "{:?}",
        asked.elapsed()
    );
    let metrics = agent.metrics();
    assert!(
        kpulse_integration_tests::sample_with(
            &metrics,
            "kpulse_container_discovery_errors_total",
            "source=\"containerd\""
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{metrics}"
    );
    assert!(
        kpulse_integration_tests::sample_with(
            &metrics,
            "kpulse_container_discovery_errors_total",
            "source=\"docker\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    // One line per failing source, not one per pass.
    let log = agent.log();
    let lines = log.matches("container runtime unavailable").count();
    assert!((1..=3).contains(&lines), "{lines} lines:\n{log}");
    drop(accepted);
}

#[test]
fn churn_of_containers_with_odd_ids_leaves_the_registry_consistent() {
    let runtimes = Runtimes::get();
    let agent = Agent::start(
        "containers-churn",
        &[],
        &runtimes.agent_config("grace_period_secs = 1"),
    );
    let pid = std::process::id();
    let ids: Vec<String> = (0..12)
        .map(|i| match i % 3 {
            0 => format!("c{i}-{pid}"),
            1 => format!("a.b_c-{i}.{pid}"),
            _ => format!("{i}{pid}"),
        })
        .collect();
    let started = Instant::now();
    for round in 0..2 {
        let batch: Vec<_> = ids
            .iter()
            .map(|id| runtimes.ctr_run(NS, &format!("{id}r{round}"), &[], &[], "sleep 1000"))
            .collect();
        wait_for(
            Duration::from_secs(20),
            "every container of the batch",
            || {
                let all = containers(&agent);
                batch
                    .iter()
                    .all(|c| {
                        all.iter()
                            .any(|k| k["id"] == c.id.as_str() && k["state"] == "running")
                    })
                    .then_some(())
            },
        );
        drop(batch);
    }
    println!(
        "24 containers started and stopped in {:?}",
        started.elapsed()
    );
    wait_for(
        Duration::from_secs(30),
        "every churned container forgotten",
        || {
            let all = containers(&agent);
            all.iter()
                .all(|c| !c["id"].as_str().unwrap_or("").contains(&pid.to_string()))
                .then_some(())
        },
    );
    assert_eq!(agent.get("/healthz").status, 204);
}
