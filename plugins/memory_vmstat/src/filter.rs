//! HUATUO's include/exclude filter (`internal/matcher`, `NewValueMatcher`), shared by the
//! `memory_vmstat`, `netdev` and `netstat` plugins (`#[path]`-included from here).
//!
//! Both rules are regular expressions searched anywhere in the name (anchor with `^`/`$`),
//! in the RE2 syntax HUATUO's Go `regexp` uses, ASCII only. An empty rule is no rule:
//! neither keeps everything, only `excluded` is a deny list, only `included` an allow list,
//! both keep what matches `included` and not `excluded`.

use kpulse_sdk::Error;
use regex_automata::meta::Regex;
use regex_automata::util::syntax;

#[derive(Debug)]
pub struct Filter {
    included: Option<Regex>,
    excluded: Option<Regex>,
}

impl Filter {
    /// Builds the filter; `included_key`/`excluded_key` name the config keys in errors.
    pub fn new(
        (included_key, included): (&str, &str),
        (excluded_key, excluded): (&str, &str),
    ) -> Result<Self, Error> {
        Ok(Filter {
            included: compile(included_key, included)?,
            excluded: compile(excluded_key, excluded)?,
        })
    }

    /// Whether `name` is kept.
    pub fn keeps(&self, name: &str) -> bool {
        self.included.as_ref().is_none_or(|re| re.is_match(name))
            && !self.excluded.as_ref().is_some_and(|re| re.is_match(name))
    }
}

fn compile(key: &str, pattern: &str) -> Result<Option<Regex>, Error> {
    if pattern.is_empty() {
        return Ok(None);
    }
    Regex::builder()
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .build(pattern)
        .map(Some)
        .map_err(|err| Error::InvalidConfig(format!("{key}: invalid regex {pattern:?}: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(included: &str, excluded: &str) -> Filter {
        Filter::new(("included", included), ("excluded", excluded)).expect("valid")
    }

    #[test]
    fn huatuo_semantics() {
        assert!(filter("", "").keeps("anything"));
        let deny = filter("", r"^(lo)|(docker\w*)|(veth\w*)$");
        assert!(!deny.keeps("lo") && !deny.keeps("docker0") && !deny.keeps("veth12ab"));
        assert!(deny.keeps("eth0"));
        let allow = filter("nr_free_pages|pgsteal", "");
        assert!(allow.keeps("pgsteal_kswapd") && allow.keeps("nr_free_pages"));
        assert!(!allow.keeps("nr_dirty"));
        let both = filter("pgscan", "total");
        assert!(both.keeps("pgscan_direct") && !both.keeps("pgscan_total"));
    }

    #[test]
    fn bad_regex_is_invalid_config() {
        let err = Filter::new(("included_on_host", "(unclosed"), ("x", "")).expect_err("bad");
        assert!(
            matches!(err, Error::InvalidConfig(ref m) if m.starts_with("included_on_host")),
            "{err}"
        );
    }
}
