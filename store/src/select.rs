//! Series selection: a metric and tag matchers, compiled once per query. Pure, no IO.

use proto::v1::tag_matcher::Op;
use proto::v1::{SeriesSelector, TagMatcher};
use regex::Regex;

use crate::error::{Error, Result};

#[derive(Debug)]
enum Matcher {
    Equal(String, String),
    NotEqual(String, String),
    Regex(String, Regex),
    NotRegex(String, Regex),
}

/// A compiled [`SeriesSelector`].
#[derive(Debug)]
pub struct Selector {
    /// Empty selects every metric.
    pub metric: String,
    matchers: Vec<Matcher>,
}

impl Selector {
    /// Compiles `selector`; errors name the field, e.g. `selector.matchers[1].value`.
    pub fn compile(selector: &SeriesSelector) -> Result<Self> {
        let matchers = selector
            .matchers
            .iter()
            .enumerate()
            .map(|(i, m)| compile_matcher(i, m))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { metric: selector.metric.clone(), matchers })
    }

    /// Whether a series with `metric` and `tags` is selected. A missing tag matches as "".
    pub fn matches(&self, metric: &str, tags: &std::collections::BTreeMap<String, String>) -> bool {
        if !self.metric.is_empty() && self.metric != metric {
            return false;
        }
        self.matchers.iter().all(|m| {
            let value = |name: &String| tags.get(name).map_or("", String::as_str);
            match m {
                Matcher::Equal(name, want) => value(name) == want,
                Matcher::NotEqual(name, want) => value(name) != want,
                Matcher::Regex(name, re) => re.is_match(value(name)),
                Matcher::NotRegex(name, re) => !re.is_match(value(name)),
            }
        })
    }
}

fn compile_matcher(index: usize, m: &TagMatcher) -> Result<Matcher> {
    if m.name.is_empty() {
        return Err(Error::invalid(format!("selector.matchers[{index}].name"), "must not be empty"));
    }
    let regex = || {
        // Anchored at both ends, as in PromQL: `web-.*` must match the whole value.
        Regex::new(&format!("^(?:{})$", m.value))
            .map_err(|err| Error::invalid(format!("selector.matchers[{index}].value"), format!("invalid regex: {err}")))
    };
    let op = Op::try_from(m.op)
        .map_err(|_| Error::invalid(format!("selector.matchers[{index}].op"), format!("unknown operator {}", m.op)))?;
    Ok(match op {
        Op::Equal => Matcher::Equal(m.name.clone(), m.value.clone()),
        Op::NotEqual => Matcher::NotEqual(m.name.clone(), m.value.clone()),
        Op::Regex => Matcher::Regex(m.name.clone(), regex()?),
        Op::NotRegex => Matcher::NotRegex(m.name.clone(), regex()?),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn matcher(name: &str, op: Op, value: &str) -> TagMatcher {
        TagMatcher { name: name.into(), op: op as i32, value: value.into() }
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn matchers_follow_promql_semantics() {
        let selector = SeriesSelector {
            metric: "cpu".into(),
            matchers: vec![matcher("host", Op::Regex, "web-.*"), matcher("zone", Op::NotEqual, "b")],
        };
        let s = Selector::compile(&selector).unwrap();
        assert!(s.matches("cpu", &tags(&[("host", "web-1"), ("zone", "a")])));
        assert!(s.matches("cpu", &tags(&[("host", "web-1")])), "a missing zone is \"\", not \"b\"");
        assert!(!s.matches("cpu", &tags(&[("host", "web-1"), ("zone", "b")])));
        assert!(!s.matches("cpu", &tags(&[("host", "xweb-1")])), "regexes are anchored");
        assert!(!s.matches("mem", &tags(&[("host", "web-1")])));
        let absent = Selector::compile(&SeriesSelector { metric: String::new(), matchers: vec![matcher("dc", Op::Equal, "")] }).unwrap();
        assert!(absent.matches("any", &tags(&[("host", "a")])));
        assert!(!absent.matches("any", &tags(&[("dc", "x")])));
    }

    #[test]
    fn bad_matchers_name_their_field() {
        let bad_regex = SeriesSelector { metric: "m".into(), matchers: vec![matcher("a", Op::Equal, "x"), matcher("b", Op::Regex, "(")] };
        let err = Selector::compile(&bad_regex).unwrap_err().to_string();
        assert!(err.starts_with("selector.matchers[1].value: invalid regex"), "{err}");
        let no_name = SeriesSelector { metric: "m".into(), matchers: vec![matcher("", Op::Equal, "x")] };
        assert_eq!(Selector::compile(&no_name).unwrap_err().to_string(), "selector.matchers[0].name: must not be empty");
        let bad_op = SeriesSelector { metric: "m".into(), matchers: vec![TagMatcher { name: "a".into(), op: 9, value: "x".into() }] };
        assert_eq!(Selector::compile(&bad_op).unwrap_err().to_string(), "selector.matchers[0].op: unknown operator 9");
    }
}
