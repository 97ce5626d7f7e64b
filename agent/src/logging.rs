//! The log filter: one variable, `BERTH_LOG`, in tracing's `EnvFilter` syntax, with one rule of
//! berth's own: a bare level (`BERTH_LOG=debug`, what a user sets to debug a boot) raises
//! berth's logs only. Other crates stay at `warn` or below unless named
//! (`BERTH_LOG=debug,bollard=debug`), because their debug output carries what berth keeps out
//! of logs: bollard's logs a container's create body, environment values included.

use log::LevelFilter;

/// The crates whose logs a bare level applies to.
const OWN: [&str; 2] = ["berth", "berth_proxy"];

/// The most other crates log at, unless named.
const OTHERS_AT_MOST: LevelFilter = LevelFilter::Warn;

/// `BERTH_LOG` read: a level for berth's crates, one for the others, and the crates named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    own: LevelFilter,
    others: LevelFilter,
    /// `target=level` directives as written, most specific (longest) first.
    named: Vec<(String, LevelFilter)>,
    /// Directives only tracing's filter understands (spans, fields), passed on as they are.
    rest: Vec<String>,
}

impl Filter {
    /// `spec` (BERTH_LOG), or `default` for berth's crates when it is unset or empty.
    pub fn parse(spec: Option<&str>, default: LevelFilter) -> Filter {
        let mut filter = Filter {
            own: default,
            others: default.min(OTHERS_AT_MOST),
            named: Vec::new(),
            rest: Vec::new(),
        };
        for directive in spec.unwrap_or("").split(',').map(str::trim) {
            if directive.is_empty() {
                continue;
            }
            if directive.contains(['[', '{']) {
                filter.rest.push(directive.to_string());
                continue;
            }
            match directive.split_once('=') {
                Some((target, level)) => {
                    if let Ok(level) = level.trim().parse::<LevelFilter>() {
                        filter.named.push((target.trim().to_string(), level));
                    }
                }
                None => {
                    if let Ok(level) = directive.parse::<LevelFilter>() {
                        filter.own = level;
                        filter.others = level.min(OTHERS_AT_MOST);
                    }
                }
            }
        }
        filter
            .named
            .sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        filter
    }

    /// The level a record from `target` (a module path) is kept at.
    pub fn level_for(&self, target: &str) -> LevelFilter {
        let within = |prefix: &str| {
            target == prefix
                || target
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with("::"))
        };
        if let Some((_, level)) = self.named.iter().find(|(t, _)| within(t)) {
            return *level;
        }
        if OWN.iter().any(|own| within(own)) {
            self.own
        } else {
            self.others
        }
    }

    /// The most verbose level any target gets (for `log::set_max_level`).
    pub fn max(&self) -> LevelFilter {
        self.named
            .iter()
            .map(|(_, l)| *l)
            .fold(self.own.max(self.others), Ord::max)
    }

    /// The same filter in tracing's `EnvFilter` syntax.
    pub fn directives(&self) -> String {
        let level = |l: LevelFilter| l.to_string().to_ascii_lowercase();
        let mut out = vec![level(self.others)];
        out.extend(OWN.iter().map(|own| format!("{own}={}", level(self.own))));
        out.extend(self.named.iter().map(|(t, l)| format!("{t}={}", level(*l))));
        out.extend(self.rest.iter().cloned());
        out.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_raises_berths_logs_only() {
        let f = Filter::parse(Some("debug"), LevelFilter::Info);
        assert_eq!(f.level_for("berth::engine::converge"), LevelFilter::Debug);
        assert_eq!(f.level_for("berth_proxy::forward"), LevelFilter::Debug);
        assert_eq!(f.level_for("aws_smithy_runtime::client"), LevelFilter::Warn);
        assert_eq!(
            f.level_for("berthold"),
            LevelFilter::Warn,
            "a prefix is not a crate"
        );
        assert_eq!(f.max(), LevelFilter::Debug);
        assert_eq!(f.directives(), "warn,berth=debug,berth_proxy=debug");
    }

    #[test]
    fn a_crate_named_gets_what_it_is_given() {
        let f = Filter::parse(
            Some("debug, aws_smithy_runtime=trace, hyper::proto=error, berth::agent=warn, [span]=info"),
            LevelFilter::Info,
        );
        assert_eq!(
            f.level_for("aws_smithy_runtime::client"),
            LevelFilter::Trace
        );
        assert_eq!(f.level_for("hyper::proto::h1"), LevelFilter::Error);
        assert_eq!(f.level_for("hyper::client"), LevelFilter::Warn);
        assert_eq!(f.level_for("berth::agent::boot"), LevelFilter::Warn);
        assert_eq!(f.level_for("berth::upgrade"), LevelFilter::Debug);
        assert_eq!(f.max(), LevelFilter::Trace);
        assert!(
            f.directives().ends_with(",[span]=info"),
            "{}",
            f.directives()
        );
    }

    #[test]
    fn unset_or_quiet_keeps_everyone_at_the_default_or_below() {
        let f = Filter::parse(None, LevelFilter::Info);
        assert_eq!(f.level_for("berth::agent"), LevelFilter::Info);
        assert_eq!(f.level_for("aws_config"), LevelFilter::Warn);
        let f = Filter::parse(Some("error"), LevelFilter::Info);
        assert_eq!(f.level_for("bollard"), LevelFilter::Error);
        assert_eq!(f.level_for("berth"), LevelFilter::Error);
        let f = Filter::parse(Some("nonsense,=,x=loud"), LevelFilter::Warn);
        assert_eq!(f, Filter::parse(None, LevelFilter::Warn));
    }
}
