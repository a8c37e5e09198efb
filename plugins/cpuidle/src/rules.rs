//! HUATUO's `[AutoTracing.CPUIdle.Filter]`: which containers `cpuidle` watches.
//!
//! `included` and `excluded` are lists of `{field, pattern}` rules; `pattern` is a regular
//! expression (RE2 syntax, as HUATUO's Go `regexp`) searched anywhere in the container's
//! `field`: `container_host_namespace` (the pod's namespace), `container_hostname` or
//! `container_qos` (`guaranteed`, `burstable`, `besteffort`, empty outside Kubernetes). A
//! container is watched when no `included` rule is given or one of them matches, and no
//! `excluded` rule matches.
//!
//! ```toml
//! [[plugins.cpuidle.filter.excluded]]
//! field = "container_qos"
//! pattern = "^besteffort$"
//! ```

use kpulse_sdk::Error;
use kpulse_sdk::containers::{Container, Qos};
use regex_automata::meta::Regex;
use regex_automata::util::syntax;
use serde::Deserialize;

/// The rules as configured.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterSettings {
    pub included: Vec<RuleSettings>,
    pub excluded: Vec<RuleSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    pub field: String,
    pub pattern: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    HostNamespace,
    Hostname,
    Qos,
}

const FIELDS: [(&str, Field); 3] = [
    ("container_host_namespace", Field::HostNamespace),
    ("container_hostname", Field::Hostname),
    ("container_qos", Field::Qos),
];

#[derive(Debug)]
struct Rule {
    field: Field,
    regex: Regex,
}

/// The compiled rules.
#[derive(Debug, Default)]
pub struct Filter {
    included: Vec<Rule>,
    excluded: Vec<Rule>,
}

fn compile(list: &str, rules: &[RuleSettings]) -> Result<Vec<Rule>, Error> {
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let field = FIELDS
                .iter()
                .find(|(name, _)| *name == rule.field)
                .map(|(_, field)| *field)
                .ok_or_else(|| {
                    let names: Vec<&str> = FIELDS.iter().map(|(name, _)| *name).collect();
                    Error::InvalidConfig(format!(
                        "filter.{list}[{i}].field {:?}: one of {}",
                        rule.field,
                        names.join(", ")
                    ))
                })?;
            let regex = Regex::builder()
                .syntax(syntax::Config::new().unicode(false).utf8(false))
                .build(&rule.pattern)
                .map_err(|err| {
                    Error::InvalidConfig(format!(
                        "filter.{list}[{i}].pattern {:?}: {err}",
                        rule.pattern
                    ))
                })?;
            Ok(Rule { field, regex })
        })
        .collect()
}

fn value(container: &Container, field: Field) -> &str {
    match field {
        Field::HostNamespace => container.pod.as_ref().map_or("", |p| p.namespace.as_str()),
        Field::Hostname => &container.hostname,
        Field::Qos => match container.qos {
            Qos::None => "",
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        },
    }
}

impl Filter {
    pub fn new(settings: &FilterSettings) -> Result<Self, Error> {
        Ok(Filter {
            included: compile("included", &settings.included)?,
            excluded: compile("excluded", &settings.excluded)?,
        })
    }

    /// Whether `container` is watched.
    pub fn keeps(&self, container: &Container) -> bool {
        let matches = |rule: &Rule| rule.regex.is_match(value(container, rule.field));
        (self.included.is_empty() || self.included.iter().any(matches))
            && !self.excluded.iter().any(matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpulse_sdk::containers::Pod;

    fn rule(field: &str, pattern: &str) -> RuleSettings {
        RuleSettings {
            field: field.to_owned(),
            pattern: pattern.to_owned(),
        }
    }

    fn container(hostname: &str, namespace: Option<&str>, qos: Qos) -> Container {
        let mut c = crate::cgroup::tests::container("c", "/kptest/c", "normal");
        c.hostname = hostname.to_owned();
        c.qos = qos;
        c.pod = namespace.map(|ns| Pod {
            name: "p".to_owned(),
            namespace: ns.to_owned(),
            uid: String::new(),
            labels: Vec::new(),
        });
        c
    }

    #[test]
    fn included_and_excluded_rules() {
        let web = container("web-1", Some("shop"), Qos::Burstable);
        let batch = container("batch-1", Some("jobs"), Qos::BestEffort);
        let bare = container("", None, Qos::None);
        assert!(Filter::default().keeps(&web) && Filter::default().keeps(&bare));

        let f = Filter::new(&FilterSettings {
            included: vec![rule("container_host_namespace", "^(shop|jobs)$")],
            excluded: vec![rule("container_qos", "besteffort")],
        })
        .expect("valid");
        assert!(f.keeps(&web));
        assert!(!f.keeps(&batch), "excluded wins");
        assert!(!f.keeps(&bare), "no pod namespace: not included");

        let by_host = Filter::new(&FilterSettings {
            included: vec![
                rule("container_hostname", "^batch-"),
                rule("container_qos", "^$"),
            ],
            excluded: Vec::new(),
        })
        .expect("valid");
        assert!(by_host.keeps(&batch) && by_host.keeps(&bare) && !by_host.keeps(&web));
    }

    #[test]
    fn bad_rules_are_invalid_config() {
        let err = Filter::new(&FilterSettings {
            included: vec![rule("container_name", "x")],
            excluded: Vec::new(),
        })
        .expect_err("unknown field");
        assert!(
            err.to_string().contains("filter.included[0].field"),
            "{err}"
        );
        let err = Filter::new(&FilterSettings {
            included: Vec::new(),
            excluded: vec![rule("container_qos", "(")],
        })
        .expect_err("bad regex");
        assert!(
            err.to_string().contains("filter.excluded[0].pattern"),
            "{err}"
        );
    }
}
