//! `--retention`: how much stored history each subject keeps.
//!
//! Owns the rules ([`Retention`], one [`Rule`] per subject pattern) and their flag syntax
//! (`PATTERN=count:N,age:DUR`). Parsed once at start-up on the main thread; afterwards only the
//! storage thread (`ringcast-store`) asks it for a subject's rule: count retention on every
//! append, age retention once a tick.

use std::time::Duration;

/// Default stored messages per subject when no `--retention` rule matches.
pub const DEFAULT_RETAIN_COUNT: u64 = 10_000;

/// Retention of one subject's stored messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Keep at most this many of the newest messages.
    pub count: u64,
    /// Drop messages older than this (`None`: no age limit).
    pub age: Option<Duration>,
}

/// Retention rules by subject pattern (`--retention PATTERN=count:N,age:DUR`); the first
/// matching pattern wins, else the default.
#[derive(Debug, Clone)]
pub struct Retention {
    rules: Vec<(Box<str>, Rule)>,
    default: Rule,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            rules: Vec::new(),
            default: Rule {
                count: DEFAULT_RETAIN_COUNT,
                age: None,
            },
        }
    }
}

/// `DUR` of a rule (and `ringcast token --ttl`): a whole number with a unit of `ms`, `s` (also
/// no unit), `m`, `h` or `d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h, d)")),
    };
    Ok(Duration::from_secs(secs))
}

/// The `count:N,age:DUR` half of one spec; a part left out does not limit.
fn parse_rule(spec: &str, rule: &str) -> Result<Rule, String> {
    let mut parsed = Rule {
        count: u64::MAX,
        age: None,
    };
    for part in rule.split(',') {
        match part.split_once(':') {
            Some(("count", n)) => {
                parsed.count = n
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--retention {spec:?}: bad count"))?
            }
            Some(("age", d)) => {
                parsed.age =
                    Some(parse_duration(d).map_err(|e| format!("--retention {spec:?}: {e}"))?)
            }
            _ => return Err(format!("--retention {spec:?}: unknown part {part:?}")),
        }
    }
    Ok(parsed)
}

impl Retention {
    /// Parses `PATTERN=count:N,age:DUR` specs (either part may be omitted; a pattern of `>`
    /// replaces the default).
    pub fn parse(specs: &[String]) -> Result<Retention, String> {
        let mut r = Retention::default();
        for spec in specs {
            let (pattern, rule) = spec
                .split_once('=')
                .ok_or_else(|| format!("--retention {spec:?}: expected PATTERN=count:N,age:DUR"))?;
            crate::subject::validate_pattern(pattern)
                .map_err(|e| format!("--retention {spec:?}: {e}"))?;
            let parsed = parse_rule(spec, rule)?;
            if pattern == ">" {
                r.default = parsed;
            } else {
                r.rules.push((pattern.into(), parsed));
            }
        }
        Ok(r)
    }

    /// The rule for `subject`.
    pub fn rule(&self, subject: &str) -> Rule {
        self.rules
            .iter()
            .find(|(p, _)| crate::subject::matches(p, subject))
            .map_or(self.default, |(_, r)| *r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(specs: &[&str]) -> Result<Retention, String> {
        Retention::parse(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_first_matching_pattern_wins() {
        let r = parse(&["prices.>=count:100,age:1h", "prices.EURUSD=count:1"]).unwrap();
        assert_eq!(
            r.rule("prices.EURUSD"),
            Rule {
                count: 100,
                age: Some(Duration::from_secs(3600))
            }
        );
    }

    #[test]
    fn a_part_left_out_does_not_limit() {
        let r = parse(&["news.*=age:30m", "quotes.*=count:7"]).unwrap();
        assert_eq!(r.rule("news.x").age, Some(Duration::from_secs(1800)));
        assert_eq!(r.rule("news.x").count, u64::MAX);
        assert_eq!(r.rule("quotes.x").age, None);
    }

    #[test]
    fn a_subject_no_pattern_matches_gets_the_default() {
        let r = parse(&["news.*=age:30m"]).unwrap();
        assert_eq!(
            r.rule("other"),
            Rule {
                count: DEFAULT_RETAIN_COUNT,
                age: None
            }
        );
    }

    #[test]
    fn the_pattern_gt_replaces_the_default() {
        let r = parse(&["news.*=age:30m", ">=count:5"]).unwrap();
        assert_eq!(
            r.rule("other"),
            Rule {
                count: 5,
                age: None
            }
        );
        assert_eq!(r.rule("news.x").count, u64::MAX);
    }

    #[test]
    fn a_spec_without_a_rule_is_refused() {
        assert!(parse(&["prices.>"]).is_err());
    }

    #[test]
    fn a_count_of_zero_is_refused() {
        assert!(parse(&["a=count:0"]).is_err());
    }

    #[test]
    fn an_unknown_part_is_refused() {
        assert!(parse(&["a=size:10"]).is_err());
    }

    #[test]
    fn an_invalid_pattern_is_refused() {
        assert!(parse(&["a..b=count:1"]).is_err());
    }

    #[test]
    fn durations_take_ms_s_m_h_d_and_no_unit_as_seconds() {
        let d = |s| parse_duration(s).unwrap();
        assert_eq!(d("250ms"), Duration::from_millis(250));
        assert_eq!(d("5"), Duration::from_secs(5));
        assert_eq!(d("5s"), Duration::from_secs(5));
        assert_eq!(d("2m"), Duration::from_secs(120));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert_eq!(d("7d"), Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn a_duration_with_an_unknown_unit_or_no_number_is_refused() {
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse(&["a=age:3w"]).is_err());
    }
}
