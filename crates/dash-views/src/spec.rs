//! What a view is: an aggregate of one field of a pipeline's events, optionally per group and
//! filtered, kept per minute. Definitions come from the API, the config file and the CLI alike,
//! and are checked here once for all three.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Groups a view keeps unless it says otherwise.
pub const DEFAULT_MAX_GROUPS: u32 = 50;
/// Most groups a view may ask for: a view's size is bounded whatever senders send.
pub const MAX_GROUPS_LIMIT: u32 = 1000;
/// What a view names instead of a JSON pointer for the event's type: the provider's (a
/// GitHub pipeline's `X-GitHub-Event`, a Slack pipeline's `/event/type`), else the payload's
/// `/type`.
pub const EVENT_TYPE: &str = "$type";
/// Where an event without a type of its own keeps its type.
pub(crate) const BODY_TYPE: &str = "/type";
/// Longest JSON pointer a view may name.
pub(crate) const MAX_POINTER_LEN: usize = 256;
/// Most filter conditions.
pub const MAX_FILTERS: usize = 16;
/// Most views per pipeline.
pub const MAX_VIEWS_PER_PIPELINE: usize = 32;
/// Longest view name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest kept `keep`.
pub const MAX_KEEP: Duration = Duration::from_secs(10 * 366 * 86_400);
/// Shortest `keep`.
pub const MIN_KEEP: Duration = Duration::from_secs(60);

/// What a view computes over the events of each group and minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    /// Distinct values (HyperLogLog, see [`crate::DISTINCT_ERROR`]).
    Distinct,
    P50,
    P90,
    P95,
    P99,
}

impl Aggregate {
    pub const ALL: [Aggregate; 10] = [
        Self::Count,
        Self::Sum,
        Self::Avg,
        Self::Min,
        Self::Max,
        Self::Distinct,
        Self::P50,
        Self::P90,
        Self::P95,
        Self::P99,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Avg => "avg",
            Self::Min => "min",
            Self::Max => "max",
            Self::Distinct => "distinct",
            Self::P50 => "p50",
            Self::P90 => "p90",
            Self::P95 => "p95",
            Self::P99 => "p99",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }

    /// Whether the field must hold a number.
    pub fn numeric(self) -> bool {
        !matches!(self, Self::Count | Self::Distinct)
    }

    /// The quantile a percentile aggregate asks for.
    pub fn quantile(self) -> Option<f64> {
        match self {
            Self::P50 => Some(0.5),
            Self::P90 => Some(0.9),
            Self::P95 => Some(0.95),
            Self::P99 => Some(0.99),
            _ => None,
        }
    }

    /// Whether the groups of this aggregate add up to the total (a share of the total means
    /// something).
    pub fn additive(self) -> bool {
        matches!(self, Self::Count | Self::Sum)
    }
}

/// A view's definition, as the API, the config file and the CLI give it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewSpec {
    pub aggregate: Aggregate,
    /// JSON pointer of the value aggregated (or [`EVENT_TYPE`]); required except for `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// JSON pointer (or [`EVENT_TYPE`]) whose value names the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    #[serde(default = "default_max_groups")]
    pub max_groups: u32,
    /// Equality conditions (JSON pointer or [`EVENT_TYPE`] → value), all of which must hold.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filter: BTreeMap<String, serde_json::Value>,
    /// How long its per-minute results are kept; absent: as long as the pipeline's events.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "keep_text")]
    pub keep: Option<Duration>,
    /// Shown next to the pipeline on the overview.
    #[serde(default)]
    pub pinned: bool,
}

fn default_max_groups() -> u32 {
    DEFAULT_MAX_GROUPS
}

/// `keep` as people write it (`"365days"`).
mod keep_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(keep: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match keep {
            Some(d) => serializer.serialize_str(&humantime::format_duration(*d).to_string()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        text.map(|t| humantime::parse_duration(t.trim()).map_err(|e| serde::de::Error::custom(format!("`keep`: {e}"))))
            .transpose()
    }
}

/// A definition refused, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidView {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidView {
    InvalidView { field, message: message.into() }
}

/// A view's name: what URLs and the config file call it.
pub fn check_view_name(name: &str) -> Result<(), InvalidView> {
    if dash_domain::is_slug(name, MAX_NAME_LEN) {
        Ok(())
    } else {
        Err(invalid("name", format!("1 to {MAX_NAME_LEN} of a-z, 0-9, '-' and '_', starting with a letter or digit")))
    }
}

fn check_pointer(field: &'static str, pointer: &str) -> Result<(), InvalidView> {
    if pointer == EVENT_TYPE {
        return Ok(());
    }
    if pointer.len() > MAX_POINTER_LEN {
        return Err(invalid(field, format!("a JSON pointer of at most {MAX_POINTER_LEN} bytes")));
    }
    if !pointer.starts_with('/') {
        return Err(invalid(
            field,
            "a JSON pointer starts with '/' (such as /amount or /customer/id), or is $type (the event's type)",
        ));
    }
    if pointer.chars().any(char::is_control) {
        return Err(invalid(field, "a JSON pointer holds no control characters"));
    }
    // `~` must be followed by 0 or 1 (RFC 6901).
    let mut chars = pointer.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(invalid(field, "'~' in a JSON pointer is written ~0, and '/' inside a key ~1"));
        }
    }
    Ok(())
}

impl ViewSpec {
    /// The fields a definition has, as JSON names them.
    pub const FIELDS: [&'static str; 7] = ["aggregate", "field", "group_by", "max_groups", "filter", "keep", "pinned"];

    /// A count of every event.
    pub fn count() -> Self {
        Self {
            aggregate: Aggregate::Count,
            field: None,
            group_by: None,
            max_groups: DEFAULT_MAX_GROUPS,
            filter: BTreeMap::new(),
            keep: None,
            pinned: false,
        }
    }

    /// Checks every part; the error names the first field at fault.
    pub fn check(&self) -> Result<(), InvalidView> {
        match (&self.field, self.aggregate) {
            (None, Aggregate::Count) => {}
            (None, aggregate) => {
                return Err(invalid("field", format!("{} needs a field (a JSON pointer)", aggregate.as_str())));
            }
            (Some(pointer), _) => check_pointer("field", pointer)?,
        }
        if let Some(pointer) = &self.group_by {
            check_pointer("group_by", pointer)?;
        }
        if self.max_groups == 0 || self.max_groups > MAX_GROUPS_LIMIT {
            return Err(invalid("max_groups", format!("from 1 to {MAX_GROUPS_LIMIT}")));
        }
        if self.filter.len() > MAX_FILTERS {
            return Err(invalid("filter", format!("at most {MAX_FILTERS} conditions")));
        }
        for (pointer, value) in &self.filter {
            check_pointer("filter", pointer)?;
            if value.is_object() || value.is_array() {
                return Err(invalid("filter", "a condition compares with a string, number, boolean or null"));
            }
            if value.as_str().is_some_and(|s| s.len() > MAX_POINTER_LEN) {
                return Err(invalid("filter", format!("a value of at most {MAX_POINTER_LEN} bytes")));
            }
        }
        if let Some(keep) = self.keep
            && !(MIN_KEEP..=MAX_KEEP).contains(&keep)
        {
            return Err(invalid("keep", "from 1 minute to 10 years"));
        }
        Ok(())
    }

    /// Parses and checks a definition given as JSON (the API's body, the CLI's flags).
    pub fn from_json(value: serde_json::Value) -> Result<Self, InvalidView> {
        let spec: Self = serde_json::from_value(value).map_err(|e| invalid(field_of(&e.to_string()), e.to_string()))?;
        spec.check()?;
        Ok(spec)
    }

    /// A definition from text fields, as a form or the CLI gives them: empty ones are left out,
    /// `filters` are `POINTER=VALUE` (VALUE as JSON, or else as text).
    pub fn from_parts(
        aggregate: &str,
        field: Option<&str>,
        group_by: Option<&str>,
        max_groups: Option<u32>,
        filters: &[&str],
        keep: Option<&str>,
        pinned: bool,
    ) -> Result<Self, InvalidView> {
        let mut filter = serde_json::Map::new();
        for condition in filters.iter().map(|c| c.trim()).filter(|c| !c.is_empty()) {
            let Some((pointer, value)) = condition.split_once('=') else {
                return Err(invalid("filter", format!("{condition:?}: expected POINTER=VALUE")));
            };
            let value = serde_json::from_str(value.trim())
                .unwrap_or_else(|_| serde_json::Value::String(value.trim().to_owned()));
            filter.insert(pointer.trim().to_owned(), value);
        }
        let mut object = serde_json::json!({ "aggregate": aggregate.trim(), "pinned": pinned, "filter": filter });
        for (key, value) in [("field", field), ("group_by", group_by), ("keep", keep)] {
            if let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) {
                object[key] = serde_json::json!(value);
            }
        }
        if let Some(max_groups) = max_groups {
            object["max_groups"] = serde_json::json!(max_groups);
        }
        Self::from_json(object)
    }

    /// Whether changing from `self` to `other` changes what the view holds (then it is computed
    /// again from the events); `pinned` and `keep` do not.
    pub fn same_results(&self, other: &Self) -> bool {
        self.aggregate == other.aggregate
            && self.field == other.field
            && self.group_by == other.group_by
            && self.max_groups == other.max_groups
            && self.filter == other.filter
    }

    /// A line people read: `p95 of /latency_ms by /region where /status = "ok"`.
    pub fn describe(&self) -> String {
        let mut text = match &self.field {
            Some(field) => format!("{} of {field}", self.aggregate.as_str()),
            None => "count of events".to_owned(),
        };
        if let Some(group) = &self.group_by {
            text.push_str(&format!(" by {group}"));
        }
        for (i, (pointer, value)) in self.filter.iter().enumerate() {
            text.push_str(if i == 0 { " where " } else { " and " });
            text.push_str(&format!("{pointer} = {value}"));
        }
        text
    }
}

/// Which field a serde error is about, best effort (serde names it in backquotes).
fn field_of(message: &str) -> &'static str {
    if message.starts_with("unknown field") {
        return "view";
    }
    ViewSpec::FIELDS
        .into_iter()
        .find(|f| message.contains(&format!("`{f}`")))
        .or_else(|| message.contains("unknown variant").then_some("aggregate"))
        .unwrap_or("view")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_list_is_the_definitions_own() {
        let full = spec(serde_json::json!({
            "aggregate": "sum", "field": "/a", "group_by": "/g", "max_groups": 3,
            "filter": {"/t": "x"}, "keep": "30days", "pinned": true
        }))
        .unwrap();
        let serde_json::Value::Object(fields) = serde_json::to_value(&full).unwrap() else { panic!() };
        let mut named: Vec<&str> = fields.keys().map(String::as_str).collect();
        let mut listed = ViewSpec::FIELDS.to_vec();
        named.sort_unstable();
        listed.sort_unstable();
        assert_eq!(named, listed);
    }

    fn spec(json: serde_json::Value) -> Result<ViewSpec, InvalidView> {
        ViewSpec::from_json(json)
    }

    #[test]
    fn definitions_are_checked_field_by_field() {
        assert!(spec(serde_json::json!({"aggregate": "count"})).is_ok());
        assert_eq!(spec(serde_json::json!({"aggregate": "sum"})).unwrap_err().field, "field");
        assert_eq!(spec(serde_json::json!({"aggregate": "median"})).unwrap_err().field, "aggregate");
        assert_eq!(spec(serde_json::json!({"aggregate": "sum", "field": "amount"})).unwrap_err().field, "field");
        assert_eq!(spec(serde_json::json!({"aggregate": "count", "group_by": "/a~2"})).unwrap_err().field, "group_by");
        assert_eq!(spec(serde_json::json!({"aggregate": "count", "max_groups": 0})).unwrap_err().field, "max_groups");
        assert_eq!(spec(serde_json::json!({"aggregate": "count", "filter": {"/a": [1]}})).unwrap_err().field, "filter");
        assert_eq!(spec(serde_json::json!({"aggregate": "count", "keep": "1s"})).unwrap_err().field, "keep");
        assert_eq!(spec(serde_json::json!({"aggregate": "count", "keep": "soon"})).unwrap_err().field, "keep");
        assert_eq!(spec(serde_json::json!({"aggregate": "count", "colour": 1})).unwrap_err().field, "view");
        let full = spec(serde_json::json!({
            "aggregate": "p95", "field": "/latency_ms", "group_by": "/region",
            "filter": {"/status": "ok"}, "keep": "365days", "max_groups": 10
        }))
        .unwrap();
        assert_eq!(full.keep, Some(Duration::from_secs(365 * 86_400)));
        assert_eq!(full.describe(), "p95 of /latency_ms by /region where /status = \"ok\"");
        let back = serde_json::to_value(&full).unwrap();
        assert_eq!(ViewSpec::from_json(back).unwrap(), full);
    }

    #[test]
    fn view_names() {
        assert!(check_view_name("revenue_by-currency2").is_ok());
        for bad in ["", "Revenue", "-a", "a b", "é", &"a".repeat(65)] {
            assert!(check_view_name(bad).is_err(), "{bad:?}");
        }
    }
}
