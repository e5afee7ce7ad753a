//! Label selectors in Kubernetes syntax, used by job constraints to pick executors.
//!
//! One selector string holds one or more comma-separated requirements:
//! `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (the label exists) and `!k`
//! (it does not). A job's constraints are all ANDed.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use crate::Error;

/// One requirement on a label set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// `k=v` / `k==v`.
    Equals(String, String),
    /// `k!=v` (also true when the label is absent, as in Kubernetes).
    NotEquals(String, String),
    /// `k in (a,b)`.
    In(String, BTreeSet<String>),
    /// `k notin (a,b)` (also true when the label is absent).
    NotIn(String, BTreeSet<String>),
    /// `k`.
    Exists(String),
    /// `!k`.
    DoesNotExist(String),
}

impl Requirement {
    /// Whether `labels` satisfy the requirement.
    pub fn matches(&self, labels: &HashMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
        match self {
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Requirement::In(k, vs) => write!(f, "{k} in ({})", list(vs)),
            Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", list(vs)),
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::DoesNotExist(k) => write!(f, "!{k}"),
        }
    }
}

/// All requirements of a set of constraint strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Parses constraint strings; `field` names them in errors (e.g. `constraints`).
    pub fn parse<S: AsRef<str>>(constraints: &[S], field: &str) -> Result<Self, Error> {
        let mut requirements = Vec::new();
        for (i, constraint) in constraints.iter().enumerate() {
            let constraint = constraint.as_ref();
            let field = format!("{field}[{i}]");
            for part in split_top_level(constraint) {
                requirements.push(parse_requirement(part.trim()).map_err(|message| {
                    Error::invalid_spec(field.clone(), format!("{constraint:?}: {message}"))
                })?);
            }
        }
        Ok(Selector(requirements))
    }

    /// The first requirement `labels` fail, or `None` if all hold.
    pub fn first_unmet(&self, labels: &HashMap<String, String>) -> Option<&Requirement> {
        self.0.iter().find(|r| !r.matches(labels))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &HashMap<String, String>) -> bool {
        self.first_unmet(labels).is_none()
    }

    /// Whether there are no requirements.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(text: &str) -> Result<Requirement, String> {
    if text.is_empty() {
        return Err("empty requirement".into());
    }
    if let Some(key) = text.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(label_key(key.trim())?));
    }
    if let Some((k, v)) = text.split_once("!=") {
        return Ok(Requirement::NotEquals(
            label_key(k.trim())?,
            label_value(v.trim())?,
        ));
    }
    if let Some((k, v)) = text.split_once("==").or_else(|| text.split_once('=')) {
        return Ok(Requirement::Equals(
            label_key(k.trim())?,
            label_value(v.trim())?,
        ));
    }
    let words: Vec<&str> = text.splitn(3, char::is_whitespace).collect();
    match words.as_slice() {
        [key] => Ok(Requirement::Exists(label_key(key)?)),
        [key, op, rest] if *op == "in" || *op == "notin" => {
            let values = value_set(rest.trim())?;
            let key = label_key(key)?;
            Ok(if *op == "in" {
                Requirement::In(key, values)
            } else {
                Requirement::NotIn(key, values)
            })
        }
        _ => Err("expected k=v, k!=v, k in (a,b), k notin (a,b), k or !k".into()),
    }
}

fn value_set(text: &str) -> Result<BTreeSet<String>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or("a value set must be written (a,b,...)")?;
    let values = inner
        .split(',')
        .map(|v| label_value(v.trim()))
        .collect::<Result<BTreeSet<_>, _>>()?;
    if values.is_empty() || values.iter().all(String::is_empty) {
        return Err("a value set needs at least one value".into());
    }
    Ok(values)
}

/// Validates a label key: 1-253 characters of `[A-Za-z0-9._/-]`, starting alphanumeric.
pub fn label_key(key: &str) -> Result<String, String> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
    if key.is_empty() || key.len() > 253 {
        return Err(format!("label key {key:?} must be 1-253 characters"));
    }
    if !key.starts_with(|c: char| c.is_ascii_alphanumeric()) || !key.chars().all(valid_char) {
        return Err(format!(
            "label key {key:?} may only hold letters, digits, '.', '_', '-' and '/', starting with a letter or digit"
        ));
    }
    Ok(key.to_owned())
}

/// Validates a label value: at most 253 characters of `[A-Za-z0-9._-]`.
pub fn label_value(value: &str) -> Result<String, String> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if value.len() > 253 || !value.chars().all(valid_char) {
        return Err(format!(
            "label value {value:?} may only hold up to 253 letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Every operator of the Kubernetes syntax parses and matches as Kubernetes defines it.
    #[test]
    fn all_operators_match() {
        let node = labels(&[("region", "eu"), ("arch", "x86_64"), ("gpu", "")]);
        let cases = [
            ("region=eu", true),
            ("region==us", false),
            ("arch!=arm64", true),
            ("missing!=x", true),
            ("region in (eu, us)", true),
            ("region in (us,ap)", false),
            ("region notin (us)", true),
            ("missing notin (us)", true),
            ("gpu", true),
            ("tpu", false),
            ("!tpu", true),
            ("!gpu", false),
            ("region=eu,arch in (x86_64)", true),
            ("region=eu, arch=arm64", false),
        ];
        for (text, expected) in cases {
            let selector = Selector::parse(&[text], "constraints").expect(text);
            assert_eq!(selector.matches(&node), expected, "{text}");
        }
    }

    /// The unmet requirement is reported so the user learns why a job waits.
    #[test]
    fn first_unmet_names_the_requirement() {
        let selector = Selector::parse(&["region=eu", "arch!=arm64"], "constraints").expect("ok");
        let node = labels(&[("region", "eu"), ("arch", "arm64")]);
        assert_eq!(
            selector.first_unmet(&node).map(ToString::to_string),
            Some("arch!=arm64".to_string())
        );
    }

    /// Malformed selectors are rejected with the field path and the offending text.
    #[test]
    fn malformed_selectors_are_rejected() {
        for bad in [
            "",
            "=eu",
            "region in eu",
            "region in ()",
            "a b c",
            "k=v v",
            "bad key=1",
        ] {
            let err = Selector::parse(&["ok", bad], "constraints").expect_err(bad);
            assert!(err.to_string().contains("constraints[1]"), "{bad}: {err}");
        }
    }
}
