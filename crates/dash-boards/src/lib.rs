//! Boards: dashboards people compose across pipelines. A board is a name, a default time range
//! and an ordered grid of panels; a panel shows a pipeline's count chart, a view (as a chart, a
//! single figure or a table of its groups), or a note in Markdown.
//!
//! [`BoardSpec::from_json`] is the one check every way in goes through (the API, the pages'
//! forms, `[boards.NAME]` in the configuration, `dashd board`): a refusal names the field at
//! fault (`panels[2].width`). What a panel refers to (a pipeline, a view) is checked where the
//! store can be asked; here only its shape.
//!
//! **Architecture invariant:** no I/O; the store keeps a board as the JSON of [`BoardSpec`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest board name, in bytes.
pub const MAX_NAME_LEN: usize = 63;
/// Most panels on one board.
pub const MAX_PANELS: usize = 48;
/// Longest title (a board's or a panel's), in characters.
pub const MAX_TITLE_CHARS: usize = 120;
/// Longest note, in characters.
pub const MAX_NOTE_CHARS: usize = 10_000;
/// Widest panel, in grid columns.
pub const MAX_WIDTH: u8 = 4;
/// A panel's width when none is given.
pub const DEFAULT_WIDTH: u8 = 2;
/// The time ranges a board offers, shortest first; [`DEFAULT_RANGE`] when none is given.
pub const RANGES: [&str; 5] = ["5m", "1h", "24h", "7d", "30d"];
pub const DEFAULT_RANGE: &str = "24h";
/// Longest pipeline reference (an id or a name), in bytes.
const MAX_REFERENCE_LEN: usize = 256;

/// A board as stored and as the API shows it (with its name beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoardSpec {
    /// What the page's heading says; the name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The range the board opens with (one of [`RANGES`]).
    pub range: String,
    pub panels: Vec<Panel>,
}

/// One panel of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Panel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Grid columns, 1 to [`MAX_WIDTH`].
    pub width: u8,
    #[serde(flatten)]
    pub kind: PanelKind,
}

/// What a panel shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PanelKind {
    /// A pipeline's events per bucket, with its count and rate.
    Pipeline { pipeline: String },
    /// One view of a pipeline.
    View { pipeline: String, view: String, display: Display },
    /// Markdown, shown as it is (no HTML passes through).
    Note { text: String },
}

/// How a view panel shows its view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Display {
    /// Its figure over the range and a bar per bucket.
    #[default]
    Chart,
    /// Its figure over the range alone, large.
    Stat,
    /// Its groups ranked, with their figures and shares.
    Table,
}

impl Display {
    pub const ALL: [Display; 3] = [Display::Chart, Display::Stat, Display::Table];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chart => "chart",
            Self::Stat => "stat",
            Self::Table => "table",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == text)
    }
}

impl PanelKind {
    /// The pipeline it reads, if any.
    pub fn pipeline(&self) -> Option<&str> {
        match self {
            Self::Pipeline { pipeline } | Self::View { pipeline, .. } => Some(pipeline),
            Self::Note { .. } => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Pipeline { .. } => "pipeline",
            Self::View { .. } => "view",
            Self::Note { .. } => "note",
        }
    }
}

/// A board refused, naming the field at fault (`name`, `range`, `panels[2].width`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidBoard {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidBoard {
    InvalidBoard { field: field.into(), message: message.into() }
}

/// A board's name: what its URL and the configuration call it.
pub fn check_board_name(name: &str) -> Result<(), InvalidBoard> {
    if dash_domain::is_slug(name, MAX_NAME_LEN) {
        Ok(())
    } else {
        Err(invalid("name", format!("1 to {MAX_NAME_LEN} of a-z, 0-9, '-' and '_', starting with a letter or digit")))
    }
}

/// Whether `text` is a Unicode control character's home (none but newlines and tabs in a note).
fn has_control(text: &str, allow_newlines: bool) -> bool {
    text.chars().any(|c| c.is_control() && !(allow_newlines && matches!(c, '\n' | '\r' | '\t')))
}

fn title(field: &str, value: Option<Value>) -> Result<Option<String>, InvalidBoard> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            if text.chars().count() > MAX_TITLE_CHARS || has_control(&text, false) {
                return Err(invalid(field, format!("at most {MAX_TITLE_CHARS} characters, no control characters")));
            }
            let trimmed = text.trim();
            Ok((!trimmed.is_empty()).then(|| trimmed.to_owned()))
        }
        Some(_) => Err(invalid(field, "a string")),
    }
}

fn string(field: &str, value: Option<Value>) -> Result<String, InvalidBoard> {
    match value {
        Some(Value::String(text)) => Ok(text),
        None | Some(Value::Null) => Err(invalid(field, "required")),
        Some(_) => Err(invalid(field, "a string")),
    }
}

fn reference(field: &str, value: Option<Value>) -> Result<String, InvalidBoard> {
    let text = string(field, value)?;
    if text.is_empty() || text.len() > MAX_REFERENCE_LEN || has_control(&text, false) {
        return Err(invalid(field, "a pipeline's id or name"));
    }
    Ok(text)
}

/// Refuses any key of `object` not in `known`, naming it under `prefix`.
fn only_known(prefix: &str, object: &Map<String, Value>, known: &[&str]) -> Result<(), InvalidBoard> {
    match object.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => {
            Err(invalid(format!("{prefix}{key}"), format!("unknown field (expected one of: {})", known.join(", "))))
        }
        None => Ok(()),
    }
}

impl BoardSpec {
    /// The fields a board object may have besides `name` (which the caller takes out).
    pub const FIELDS: [&'static str; 3] = ["title", "range", "panels"];

    /// An empty board opening on [`DEFAULT_RANGE`].
    pub fn empty() -> Self {
        Self { title: None, range: DEFAULT_RANGE.to_owned(), panels: Vec::new() }
    }

    /// Checks a board object (`{"title", "range", "panels": [...]}`, no `name`).
    pub fn from_json(value: Value) -> Result<Self, InvalidBoard> {
        let Value::Object(mut object) = value else {
            return Err(invalid(
                "board",
                "a JSON object such as {\"panels\": [{\"type\": \"pipeline\", \"pipeline\": \"orders\"}]}",
            ));
        };
        only_known("", &object, &Self::FIELDS)?;
        let title = title("title", object.remove("title"))?;
        let range = match object.remove("range") {
            None | Some(Value::Null) => DEFAULT_RANGE.to_owned(),
            Some(Value::String(range)) if RANGES.contains(&range.as_str()) => range,
            Some(_) => return Err(invalid("range", format!("one of {}", RANGES.join(", ")))),
        };
        let panels = match object.remove("panels") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(panels)) => {
                if panels.len() > MAX_PANELS {
                    return Err(invalid("panels", format!("at most {MAX_PANELS} panels")));
                }
                panels.into_iter().enumerate().map(|(i, panel)| Panel::from_json(i, panel)).collect::<Result<_, _>>()?
            }
            Some(_) => return Err(invalid("panels", "an array of panels")),
        };
        Ok(Self { title, range, panels })
    }

    /// The pipelines its panels read, each once, in panel order.
    pub fn pipelines(&self) -> Vec<&str> {
        let mut seen: Vec<&str> = Vec::new();
        for pipeline in self.panels.iter().filter_map(|p| p.kind.pipeline()) {
            if !seen.contains(&pipeline) {
                seen.push(pipeline);
            }
        }
        seen
    }
}

impl Panel {
    /// The fields a panel object may have.
    pub const FIELDS: [&'static str; 7] = ["type", "title", "width", "pipeline", "view", "display", "text"];

    /// Checks panel number `index` of a board.
    pub fn from_json(index: usize, value: Value) -> Result<Self, InvalidBoard> {
        let at = |field: &str| format!("panels[{index}].{field}");
        let Value::Object(mut object) = value else {
            return Err(invalid(format!("panels[{index}]"), "a panel object"));
        };
        only_known(&format!("panels[{index}]."), &object, &Self::FIELDS)?;
        let title = title(&at("title"), object.remove("title"))?;
        let width = match object.remove("width") {
            None | Some(Value::Null) => DEFAULT_WIDTH,
            // 2.0 is an integer too, to JSON Schema and to most senders.
            Some(Value::Number(n)) => match n.as_f64() {
                Some(w) if w.fract() == 0.0 && (1.0..=f64::from(MAX_WIDTH)).contains(&w) => w as u8,
                _ => return Err(invalid(at("width"), format!("1 to {MAX_WIDTH} columns"))),
            },
            Some(_) => return Err(invalid(at("width"), format!("1 to {MAX_WIDTH} columns"))),
        };
        let kind_name = string(&at("type"), object.remove("type"))?;
        let not_for = |field: &str, object: &Map<String, Value>| match object.contains_key(field) {
            true => Err(invalid(at(field), format!("not a field of a {kind_name} panel"))),
            false => Ok(()),
        };
        let kind = match kind_name.as_str() {
            "pipeline" => {
                for field in ["view", "display", "text"] {
                    not_for(field, &object)?;
                }
                PanelKind::Pipeline { pipeline: reference(&at("pipeline"), object.remove("pipeline"))? }
            }
            "view" => {
                not_for("text", &object)?;
                let pipeline = reference(&at("pipeline"), object.remove("pipeline"))?;
                let view = string(&at("view"), object.remove("view"))?;
                if dash_views::check_view_name(&view).is_err() {
                    return Err(invalid(at("view"), "a view's name"));
                }
                let display = match object.remove("display") {
                    None | Some(Value::Null) => Display::default(),
                    Some(Value::String(text)) => {
                        Display::parse(&text).ok_or_else(|| invalid(at("display"), "one of chart, stat, table"))?
                    }
                    Some(_) => return Err(invalid(at("display"), "one of chart, stat, table")),
                };
                PanelKind::View { pipeline, view, display }
            }
            "note" => {
                for field in ["pipeline", "view", "display"] {
                    not_for(field, &object)?;
                }
                let text = string(&at("text"), object.remove("text"))?;
                if text.chars().count() > MAX_NOTE_CHARS || has_control(&text, true) {
                    return Err(invalid(
                        at("text"),
                        format!("at most {MAX_NOTE_CHARS} characters, no control characters but line breaks and tabs"),
                    ));
                }
                PanelKind::Note { text }
            }
            _ => return Err(invalid(at("type"), "one of pipeline, view, note")),
        };
        Ok(Self { title, width, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_board_reads_and_keeps_its_order_and_defaults() {
        let spec = BoardSpec::from_json(json!({
            "title": " Operations ",
            "range": "7d",
            "panels": [
                {"type": "view", "pipeline": "orders", "view": "revenue", "display": "stat", "width": 1},
                {"type": "pipeline", "pipeline": "deploys", "title": "Deploys", "width": 2.0},
                {"type": "note", "text": "# Runbook\n\n* call *ops*", "width": 4},
                {"type": "view", "pipeline": "orders", "view": "by-type"},
            ]
        }))
        .unwrap();
        assert_eq!(spec.title.as_deref(), Some("Operations"));
        assert_eq!(spec.range, "7d");
        assert_eq!(spec.panels.len(), 4);
        assert_eq!(spec.panels[1].width, DEFAULT_WIDTH);
        assert_eq!(
            spec.panels[3].kind,
            PanelKind::View { pipeline: "orders".into(), view: "by-type".into(), display: Display::Chart }
        );
        assert_eq!(spec.pipelines(), ["orders", "deploys"]);
        // What the store keeps reads back the same.
        let stored = serde_json::to_value(&spec).unwrap();
        assert_eq!(stored["panels"][0]["type"], "view");
        assert_eq!(BoardSpec::from_json(stored).unwrap(), spec);
        assert_eq!(BoardSpec::from_json(json!({})).unwrap(), BoardSpec::empty());
    }

    #[test]
    fn every_refusal_names_its_field() {
        let refused = |value: Value| BoardSpec::from_json(value).unwrap_err().field;
        assert_eq!(refused(json!([])), "board");
        assert_eq!(refused(json!({"range": "2h"})), "range");
        assert_eq!(refused(json!({"colour": "red"})), "colour");
        assert_eq!(refused(json!({"title": 3})), "title");
        assert_eq!(refused(json!({"title": "a\u{0}b"})), "title");
        assert_eq!(refused(json!({"title": "x".repeat(MAX_TITLE_CHARS + 1)})), "title");
        assert_eq!(refused(json!({"panels": {}})), "panels");
        assert_eq!(refused(json!({"panels": vec![json!({"type": "note", "text": ""}); MAX_PANELS + 1]})), "panels");
        assert_eq!(refused(json!({"panels": [1]})), "panels[0]");
        let panel = |p: Value| refused(json!({"panels": [{"type": "note", "text": "ok"}, p]}));
        assert_eq!(panel(json!({"pipeline": "orders"})), "panels[1].type");
        assert_eq!(panel(json!({"type": "graph", "pipeline": "orders"})), "panels[1].type");
        assert_eq!(panel(json!({"type": "pipeline"})), "panels[1].pipeline");
        assert_eq!(panel(json!({"type": "pipeline", "pipeline": ""})), "panels[1].pipeline");
        assert_eq!(panel(json!({"type": "pipeline", "pipeline": "o", "width": 5})), "panels[1].width");
        assert_eq!(panel(json!({"type": "pipeline", "pipeline": "o", "width": 0})), "panels[1].width");
        assert_eq!(panel(json!({"type": "pipeline", "pipeline": "o", "width": 1.5})), "panels[1].width");
        assert_eq!(panel(json!({"type": "pipeline", "pipeline": "o", "view": "v"})), "panels[1].view");
        assert_eq!(panel(json!({"type": "view", "pipeline": "o"})), "panels[1].view");
        assert_eq!(panel(json!({"type": "view", "pipeline": "o", "view": "Bad name"})), "panels[1].view");
        assert_eq!(panel(json!({"type": "view", "pipeline": "o", "view": "v", "display": "pie"})), "panels[1].display");
        assert_eq!(panel(json!({"type": "note"})), "panels[1].text");
        assert_eq!(panel(json!({"type": "note", "text": "a", "pipeline": "o"})), "panels[1].pipeline");
        assert_eq!(panel(json!({"type": "note", "text": "a", "view": null})), "panels[1].view");
        assert_eq!(panel(json!({"type": "note", "text": "a\u{7}"})), "panels[1].text");
        assert_eq!(panel(json!({"type": "note", "text": "a", "height": 2})), "panels[1].height");
    }

    #[test]
    fn names_are_slugs() {
        assert!(check_board_name("ops").is_ok());
        assert!(check_board_name("ops-2026_q4").is_ok());
        for bad in ["", "-ops", "Ops", "ops board", &"o".repeat(MAX_NAME_LEN + 1), "é"] {
            assert_eq!(check_board_name(bad).unwrap_err().field, "name", "{bad:?}");
        }
    }
}
