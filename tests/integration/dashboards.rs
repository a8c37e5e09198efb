//! The shipped dashboards, against the real thing.
//!
//! - Grafana (`deploy/grafana/*.json`, written by `deploy/grafana/generate.py`): the files are
//!   what the generator writes; every panel and variable uses the `${DS_PROMETHEUS}` variable;
//!   and every PromQL expression of every panel target and query variable, with the template
//!   variables substituted by real values, returns at least one series from a real Prometheus
//!   scraping a real agent (every component of `target/plugins`, a `ctr` container with
//!   traffic, the OpenSearch sink on). The few expressions that can be empty here are in
//!   [`MAY_BE_EMPTY`] with the reason.
//! - OpenSearch Dashboards (`docs/opensearch-dashboards.ndjson`): every saved search and
//!   visualization, turned into the search OpenSearch Dashboards sends (its index pattern, its
//!   query and filters, its aggregations, a time range), finds the documents a real agent
//!   indexed into a real node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kpulse_integration_tests::containers::Runtimes;
use kpulse_integration_tests::{Agent, root, wait_for};
use serde_json::{Value, json};

use super::metrics_catalogue::{
    builtin_plugins, query as prometheus_query, start_container as start_catalogue_container,
    start_prometheus, wait_settled,
};
use super::opensearch::{
    FAST_EXAMPLE, agent_dir, cluster_request, install_example, node_lock, opensearch_script,
};

/// Expressions that can return nothing on this machine: `(metric name in the expression,
/// reason)`. A listed expression that has data is fine; one listed here but in no dashboard
/// fails the test (the list may not go stale).
const MAY_BE_EMPTY: &[(&str, &str)] = &[
    (
        "kpulse_memory_vmstat_container_limit_bytes",
        "no series for the test container, which runs without a memory limit",
    ),
    (
        "kpulse_iolatency_blkdisk_q2c",
        "only block requests of 20 ms or more are counted: a disk shows with its first slow request",
    ),
    (
        "kpulse_iolatency_blkdisk_d2c",
        "only block requests of 20 ms or more are counted: a disk shows with its first slow request",
    ),
    (
        "kpulse_iolatency_container_blkdisk_q2c",
        "only block requests of 20 ms or more are counted, per container: the test container does no disk I/O",
    ),
];

fn grafana_dir() -> PathBuf {
    root().join("deploy/grafana")
}

/// Every shipped dashboard: (file name, JSON).
fn grafana_dashboards() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(grafana_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in deploy/grafana");
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{}: not JSON: {err}", path.display()));
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                json,
            )
        })
        .collect()
}

/// One PromQL expression of a dashboard: where it is and what it says.
#[derive(Debug, Clone)]
struct Target {
    dashboard: String,
    panel: String,
    ref_id: String,
    expr: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dashboard {}, panel \"{}\", target {}: {}",
            self.dashboard, self.panel, self.ref_id, self.expr
        )
    }
}

/// The panels of a dashboard, also those inside collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

fn targets(file: &str, dashboard: &Value) -> Vec<Target> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(Target {
                dashboard: file.to_owned(),
                panel: panel["title"].as_str().unwrap_or_default().to_owned(),
                ref_id: target["refId"].as_str().unwrap_or_default().to_owned(),
                expr: target["expr"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    out
}

fn query_variables(dashboard: &Value) -> Vec<&Value> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .collect()
}

/// The query of a variable: a string, or the newer `{"query": ...}` object.
fn variable_query(variable: &Value) -> &str {
    variable["query"]
        .as_str()
        .or_else(|| variable["query"]["query"].as_str())
        .unwrap_or_default()
}

#[test]
fn grafana_dashboards_are_generated_and_importable() {
    let output = Command::new("python3")
        .arg(grafana_dir().join("generate.py"))
        .arg("--check")
        .output()
        .expect("python3 must be installed");
    assert!(
        output.status.success(),
        "deploy/grafana is not what generate.py writes: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ds = json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    let mut problems = Vec::new();
    for (file, dashboard) in grafana_dashboards() {
        let uid = dashboard["uid"].as_str().unwrap_or_default();
        if uid.is_empty() || dashboard["title"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{file}: no uid or title"));
        }
        if dashboard["schemaVersion"].as_u64().is_none() || !dashboard["panels"].is_array() {
            problems.push(format!("{file}: not a dashboard (schemaVersion, panels)"));
        }
        let variables = dashboard["templating"]["list"].as_array().cloned();
        let variables = variables.unwrap_or_default();
        if !variables.iter().any(|v| {
            v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource" && v["query"] == "prometheus"
        }) {
            problems.push(format!("{file}: no datasource variable DS_PROMETHEUS"));
        }
        // `host` selects what plugins report; the agent's own families have no `host` label
        // and are selected by Prometheus' `instance`.
        if !variables
            .iter()
            .any(|v| v["name"] == "host" || v["name"] == "instance")
        {
            problems.push(format!("{file}: no host or instance variable"));
        }
        for variable in query_variables(&dashboard) {
            if variable["datasource"] != ds {
                problems.push(format!(
                    "{file}: variable {} not on ${{DS_PROMETHEUS}}",
                    variable["name"]
                ));
            }
        }
        let mut ids = BTreeSet::new();
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or_default();
            if !ids.insert(panel["id"].as_u64()) {
                problems.push(format!(
                    "{file}: panel \"{title}\" repeats id {}",
                    panel["id"]
                ));
            }
            if panel["type"] == "row" {
                continue;
            }
            if panel["datasource"] != ds {
                problems.push(format!(
                    "{file}: panel \"{title}\" not on ${{DS_PROMETHEUS}}"
                ));
            }
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{file}: panel \"{title}\" has no target"));
            }
            for target in targets {
                if target["expr"].as_str().is_none_or(|e| e.trim().is_empty())
                    || target["datasource"] != ds
                {
                    problems.push(format!("{file}: panel \"{title}\" target {target}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Grafana's replacement for a multi-value variable inside a regex matcher: `(a|b)`.
fn regex_of(values: &[String]) -> String {
    let escaped: Vec<String> = values
        .iter()
        .map(|v| {
            v.chars()
                .flat_map(|c| {
                    let special = "\\.+*?()|[]{}^$".contains(c);
                    // `\\.` in the PromQL string is the regex `\.`, as Grafana writes it.
                    special
                        .then_some(['\\', '\\'])
                        .into_iter()
                        .flatten()
                        .chain([c])
                })
                .collect()
        })
        .collect();
    if escaped.len() == 1 {
        escaped[0].clone()
    } else {
        format!("({})", escaped.join("|"))
    }
}

/// `expr` with Grafana's built-in variables (a 1 s scrape interval) and `variables` replaced.
fn substitute(expr: &str, variables: &BTreeMap<String, String>) -> String {
    let mut out = expr.to_owned();
    for (name, value) in [
        ("__rate_interval", "5s"),
        ("__interval", "2s"),
        ("__range", "1m"),
    ] {
        out = out.replace(&format!("${{{name}}}"), value);
        out = out.replace(&format!("${name}"), value);
    }
    // Longest names first, so that `$host` does not eat the start of `$hostname`.
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        out = out.replace(&format!("${{{name}}}"), &variables[name]);
        out = out.replace(&format!("${name}"), &variables[name]);
    }
    out
}

/// The values of a `label_values(<selector>, <label>)` variable query, through the
/// equivalent `count by (<label>) (<selector>)`.
fn label_values(prometheus: SocketAddr, query: &str) -> Result<Vec<String>, String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .ok_or_else(|| format!("not a label_values() query: {query}"))?;
    let (selector, label) = inner
        .rsplit_once(',')
        .ok_or_else(|| format!("label_values() without a metric: {query}"))?;
    let label = label.trim();
    let promql = format!("count by ({label}) ({selector})");
    let result =
        prometheus_query(prometheus, &promql).ok_or_else(|| format!("{promql}: failed"))?;
    let mut values: Vec<String> = result
        .iter()
        .filter_map(|series| series["metric"][label].as_str().map(str::to_owned))
        .collect();
    values.sort();
    values.dedup();
    Ok(values)
}

fn opensearch_url() -> String {
    std::env::var("OPENSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".to_owned())
}

fn opensearch_addr() -> SocketAddr {
    let url = opensearch_url();
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    host.to_socket_addrs().unwrap().next().unwrap()
}

#[test]
fn grafana_dashboards_every_query_returns_series_from_a_real_agent() {
    let dashboards = grafana_dashboards();
    let all_targets: Vec<Target> = dashboards
        .iter()
        .flat_map(|(file, d)| targets(file, d))
        .collect();
    // The list of expected gaps names expressions that exist.
    for (metric, _) in MAY_BE_EMPTY {
        assert!(
            all_targets.iter().any(|t| t.expr.contains(metric)),
            "MAY_BE_EMPTY lists {metric}, which no dashboard queries"
        );
    }

    let runtimes = Runtimes::get();
    let id = format!("dashboards-{}", std::process::id());
    let _container = start_catalogue_container(&runtimes, &id);
    // The OpenSearch sink is on so that its families exist; whether the node is up or down
    // meanwhile (another test restarts it), they are exposed.
    let config = format!(
        "[metrics]\nprefix = \"kpulse\"\n[plugins.cpuidle]\ninterval = 2\n\
         [storage.opensearch]\naddresses = [\"{}\"]\nindex = \"kpulse-it-grafana-{}\"\nflush_interval_ms = 200\n{}",
        opensearch_url(),
        std::process::id(),
        runtimes.agent_config("")
    );
    let agent = Agent::start("dashboards", &builtin_plugins(), &config);
    wait_settled(&agent, "kpulse");
    let (mut prometheus, server, dir) = start_prometheus(agent.addr);
    let result = std::panic::catch_unwind(|| {
        wait_for(Duration::from_secs(60), "a successful scrape", || {
            let up = prometheus_query(server, "up{job=\"kpulse\"}")?;
            (up.first()?["value"][1] == "1").then_some(())
        });

        // The variables, in the order Grafana resolves them (later ones use earlier ones).
        let mut problems = Vec::new();
        let mut per_dashboard: Vec<(String, BTreeMap<String, String>)> = Vec::new();
        for (file, dashboard) in &dashboards {
            let mut values = BTreeMap::new();
            for variable in query_variables(dashboard) {
                let name = variable["name"].as_str().unwrap_or_default().to_owned();
                let query = substitute(variable_query(variable), &values);
                let found = wait_for(Duration::from_secs(30), &format!("variable {name}"), || {
                    match label_values(server, &query) {
                        Ok(v) if v.is_empty() => None,
                        other => Some(other),
                    }
                });
                let chosen = match found {
                    Err(err) => {
                        problems.push(format!("dashboard {file}, variable {name}: {err}"));
                        continue;
                    }
                    // The test's own container (its name is its ctr id), so that the panels
                    // are asked about a container known to have every family.
                    Ok(found) if name == "container" => {
                        match found.iter().find(|v| v.contains(&id)) {
                            Some(ours) => vec![ours.clone()],
                            None => {
                                problems.push(format!(
                                "dashboard {file}, variable container ({query}): the test container {id} is not among {found:?}"
                            ));
                                continue;
                            }
                        }
                    }
                    Ok(found) => found,
                };
                println!("{file}: ${name} = {chosen:?}");
                values.insert(name, regex_of(&chosen));
            }
            per_dashboard.push((file.clone(), values));
        }

        // Every target, asked until it has a series (rates need two scrapes in their window;
        // a plugin may miss a scrape on this loaded machine), for at most a minute in all.
        let mut pending: Vec<(Target, String)> = Vec::new();
        for (file, values) in &per_dashboard {
            for target in all_targets.iter().filter(|t| &t.dashboard == file) {
                let promql = substitute(&target.expr, values);
                if promql.contains('$') {
                    problems.push(format!(
                        "{target}: a variable is left after substitution: {promql}"
                    ));
                    continue;
                }
                pending.push((target.clone(), promql));
            }
        }
        let total = pending.len();
        let mut errors = BTreeMap::new();
        let started = Instant::now();
        while !pending.is_empty() && started.elapsed() < Duration::from_secs(60) {
            pending.retain(|(target, promql)| match prometheus_query(server, promql) {
                Some(result) if !result.is_empty() => false,
                Some(_) => true,
                None => {
                    errors.insert(target.to_string(), promql.clone());
                    true
                }
            });
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_secs(2));
            }
        }
        let mut explained = Vec::new();
        for (target, promql) in pending {
            match MAY_BE_EMPTY
                .iter()
                .find(|(metric, _)| target.expr.contains(metric))
            {
                Some((_, reason)) => explained.push(format!("{target}: {reason}")),
                None => problems.push(match errors.get(&target.to_string()) {
                    Some(_) => format!("{target}\n    Prometheus rejected it: {promql}"),
                    None => format!("{target}\n    no series for: {promql}"),
                }),
            }
        }
        println!(
            "{total} dashboard expressions asked; empty here, with the reason ({}):",
            explained.len()
        );
        for line in &explained {
            println!("  {line}");
        }
        problems
    });
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let _ = cluster_request(
        opensearch_addr(),
        "DELETE",
        &format!("/kpulse-it-grafana-{}-*", std::process::id()),
        None,
    );
    let problems = result.unwrap_or_else(|_| {
        panic!(
            "{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        )
    });
    assert!(
        problems.is_empty(),
        "dashboard queries without a series:\n{}\n(plugins: {})",
        problems.join("\n"),
        agent
            .plugins()
            .iter()
            .filter(|p| p["state"] != "running")
            .map(|p| format!("{} {}: {}", p["name"], p["state"], p["last_error"]))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

// ---------------------------------------------------------------------------------------
// OpenSearch Dashboards saved objects

fn saved_objects() -> Vec<Value> {
    let path = root().join("docs/opensearch-dashboards.ndjson");
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|err| panic!("{}: {err}: {l}", path.display()))
        })
        .collect()
}

/// A JSON string attribute that holds JSON (`visState`, `searchSourceJSON`, `panelsJSON`).
fn nested_json(object: &Value, pointer: &str) -> Value {
    match object.pointer(pointer).and_then(Value::as_str) {
        Some(text) => serde_json::from_str(text)
            .unwrap_or_else(|err| panic!("{} {pointer}: {err}", object["id"])),
        None => Value::Null,
    }
}

/// The OpenSearch query of a search source: its query (Lucene, or KQL in the subset that
/// Lucene shares: `field:value`, `and`/`or`/`not`, wildcards) and its enabled filters, within
/// `[since, now]` on the index pattern's time field.
fn search_query(source: &Value, time_field: &str, since_ms: u128) -> Value {
    let mut must =
        vec![json!({"range": {time_field: {"gte": since_ms as u64, "format": "epoch_millis"}}})];
    let mut must_not = Vec::new();
    let text = source["query"]["query"].as_str().unwrap_or_default().trim();
    if !text.is_empty() {
        let language = source["query"]["language"].as_str().unwrap_or("kuery");
        assert!(
            ["kuery", "lucene"].contains(&language),
            "query language {language} is not supported by this test"
        );
        must.push(json!({"query_string": {"query": text, "default_operator": "AND"}}));
    }
    for filter in source["filter"].as_array().into_iter().flatten() {
        if filter["meta"]["disabled"] == true {
            continue;
        }
        // OpenSearch Dashboards stores the query DSL under `query`, older ones at the top.
        let mut clause = filter.get("query").cloned().unwrap_or_else(|| {
            let mut legacy = filter.clone();
            if let Some(map) = legacy.as_object_mut() {
                map.remove("meta");
                map.remove("$state");
            }
            legacy
        });
        if clause.as_object().is_some_and(|m| m.is_empty()) {
            clause = json!({"match_all": {}});
        }
        if filter["meta"]["negate"] == true {
            must_not.push(clause);
        } else {
            must.push(clause);
        }
    }
    json!({"bool": {"filter": must, "must_not": must_not}})
}

/// The aggregations of a visualization's `visState`, nested in their order (buckets) with
/// their metrics inside the innermost, as OpenSearch Dashboards sends them.
fn aggregations(vis: &Value) -> (Value, Vec<String>) {
    let aggs = vis["aggs"].as_array().cloned().unwrap_or_default();
    let mut metrics = serde_json::Map::new();
    let mut buckets: Vec<(String, Value)> = Vec::new();
    for agg in aggs.iter().filter(|a| a["enabled"] != false) {
        let id = agg["id"].as_str().unwrap_or_default().to_owned();
        let params = &agg["params"];
        let body = match agg["type"].as_str().unwrap_or_default() {
            "count" => continue,
            "date_histogram" => {
                let interval = match params["interval"].as_str() {
                    Some("auto") | None => "1m",
                    Some(other) => other,
                };
                json!({"date_histogram": {
                    "field": params["field"],
                    "fixed_interval": interval,
                    "min_doc_count": params["min_doc_count"].as_u64().unwrap_or(1),
                }})
            }
            "terms" => {
                let order = if params["orderBy"] == "1" || params["orderBy"].is_null() {
                    json!({"_count": params["order"].as_str().unwrap_or("desc")})
                } else {
                    json!({ params["orderBy"].as_str().unwrap(): params["order"] })
                };
                json!({"terms": {"field": params["field"], "size": params["size"], "order": order}})
            }
            kind @ ("sum" | "avg" | "min" | "max" | "cardinality") => {
                metrics.insert(id, json!({ kind: {"field": params["field"]} }));
                continue;
            }
            other => panic!(
                "{}: aggregation {other} is not supported by this test",
                vis["title"]
            ),
        };
        buckets.push((id, body));
    }
    let ids = buckets.iter().map(|(id, _)| id.clone()).collect();
    let mut inner = Value::Object(metrics);
    for (id, mut body) in buckets.into_iter().rev() {
        if inner.as_object().is_some_and(|m| !m.is_empty()) {
            body["aggs"] = inner;
        }
        inner = json!({ id: body });
    }
    (inner, ids)
}

/// The keys of every bucket of the aggregation `ids[0]`, `ids[1]` inside it, and so on.
fn bucket_keys(result: &Value, ids: &[String], out: &mut BTreeMap<String, BTreeSet<String>>) {
    let Some((id, rest)) = ids.split_first() else {
        return;
    };
    for bucket in result[id]["buckets"].as_array().into_iter().flatten() {
        let key = match &bucket["key"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.entry(id.clone()).or_default().insert(key);
        bucket_keys(bucket, rest, out);
    }
}

fn epoch_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[test]
fn opensearch_saved_objects_find_a_real_agents_documents() {
    let objects = saved_objects();
    let by_id: BTreeMap<(String, String), &Value> = objects
        .iter()
        .map(|o| {
            (
                (
                    o["type"].as_str().unwrap().to_owned(),
                    o["id"].as_str().unwrap().to_owned(),
                ),
                o,
            )
        })
        .collect();
    // Every reference resolves inside the file (an import would otherwise warn).
    for object in &objects {
        for reference in object["references"].as_array().into_iter().flatten() {
            let key = (
                reference["type"].as_str().unwrap().to_owned(),
                reference["id"].as_str().unwrap().to_owned(),
            );
            assert!(
                by_id.contains_key(&key),
                "{} refers to missing {key:?}",
                object["id"]
            );
        }
    }
    let queried: Vec<&Value> = objects
        .iter()
        .filter(|o| o["type"] == "visualization" || o["type"] == "search")
        .collect();
    assert!(!queried.is_empty(), "no saved search or visualization");

    let _node = node_lock();
    if cluster_request(opensearch_addr(), "GET", "/_cluster/health", None).is_err() {
        opensearch_script("start");
    }
    // An index the saved index pattern `kpulse-events-*` matches (the default index is
    // `kpulse-events`), unique to this run.
    let index = format!("kpulse-events-it-dashboards-{}", std::process::id());
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let since = epoch_ms();
    let dir = agent_dir("os-dashboards");
    install_example(&dir);
    let agent = Agent::start_in(
        dir,
        &format!(
            "{FAST_EXAMPLE}\n[storage.opensearch]\naddresses = [\"{}\"]\nindex = \"{index}\"\nflush_interval_ms = 200\n",
            opensearch_url()
        ),
    );
    let search = |pattern: &str, body: &Value| -> Value {
        let _ = cluster_request(
            opensearch_addr(),
            "POST",
            &format!("/{pattern}/_refresh"),
            None,
        );
        let (status, _, value) = cluster_request(
            opensearch_addr(),
            "POST",
            &format!("/{pattern}/_search"),
            Some(&body.to_string()),
        )
        .unwrap();
        assert_eq!(status, 200, "{pattern} {body}: {value}");
        value
    };
    wait_for(
        Duration::from_secs(60),
        "the agent's documents in OpenSearch",
        || {
            // A fresh index answers 503 until its shard is allocated: asked again.
            let pattern = format!("{index}-*");
            let _ = cluster_request(
                opensearch_addr(),
                "POST",
                &format!("/{pattern}/_refresh"),
                None,
            );
            let body = json!({"size": 0, "track_total_hits": true}).to_string();
            let (status, _, found) = cluster_request(
                opensearch_addr(),
                "POST",
                &format!("/{pattern}/_search"),
                Some(&body),
            )
            .ok()?;
            (status == 200 && found["hits"]["total"]["value"].as_u64()? >= 5).then_some(())
        },
    );

    for object in queried {
        let title = object["attributes"]["title"].as_str().unwrap_or_default();
        let source = nested_json(object, "/attributes/kibanaSavedObjectMeta/searchSourceJSON");
        let reference_name = source["indexRefName"].as_str().unwrap_or_default();
        let pattern_id = object["references"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == reference_name && r["type"] == "index-pattern")
            .and_then(|r| r["id"].as_str())
            .unwrap_or_else(|| panic!("{title}: no index-pattern reference {reference_name}"));
        let pattern = by_id[&("index-pattern".to_owned(), pattern_id.to_owned())];
        let pattern_title = pattern["attributes"]["title"].as_str().unwrap();
        let time_field = pattern["attributes"]["timeFieldName"]
            .as_str()
            .unwrap_or("@timestamp");
        let query = search_query(&source, time_field, since);
        let mut body = json!({"size": 10, "track_total_hits": true, "query": query,
            "sort": [{time_field: "desc"}]});
        let mut ids = Vec::new();
        if object["type"] == "visualization" {
            let vis = nested_json(object, "/attributes/visState");
            let (aggs, bucket_ids) = aggregations(&vis);
            body["aggs"] = aggs;
            ids = bucket_ids;
        }
        let result = search(pattern_title, &body);
        let hits = result["hits"]["total"]["value"].as_u64().unwrap_or(0);
        assert!(
            hits > 0,
            "{title}: no document from the agent: {body} -> {result}"
        );
        // A saved search shows its columns: every one is a field of the documents.
        for column in object["attributes"]["columns"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let column = column.as_str().unwrap();
            let present = result["hits"]["hits"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|hit| {
                    hit["_source"]
                        .pointer(&format!("/{}", column.replace('.', "/")))
                        .is_some()
                });
            assert!(present, "{title}: column {column} is in none of {result}");
        }
        let mut keys = BTreeMap::new();
        bucket_keys(&result["aggregations"], &ids, &mut keys);
        for id in &ids {
            assert!(
                keys.get(id).is_some_and(|k| !k.is_empty()),
                "{title}: aggregation {id} has no bucket: {result}"
            );
        }
        // The terms on names and hosts show this agent's.
        let vis = nested_json(object, "/attributes/visState");
        for agg in vis["aggs"].as_array().into_iter().flatten() {
            let id = agg["id"].as_str().unwrap_or_default();
            let expected = match agg["params"]["field"].as_str() {
                Some("tracer_name") => "example",
                Some("hostname") => hostname.as_str(),
                _ => continue,
            };
            assert!(
                keys.get(id).is_some_and(|k| k.contains(expected)),
                "{title}: no bucket {expected} in aggregation {id}: {:?}",
                keys.get(id)
            );
        }
        println!("{title}: {hits} documents, buckets {keys:?}");
    }
    drop(agent);
    let _ = cluster_request(opensearch_addr(), "DELETE", &format!("/{index}-*"), None);
}
