//! A panel's figures as a table, for its CSV and JSON downloads: exactly what the panel shows
//! over the board's range (a pipeline's count per bucket; a view's value per bucket and group,
//! its figure, or its groups). In CSV, text a spreadsheet would take for a formula is kept as
//! text (the JSON has it as sent).

use dash_boards::Display;
use serde_json::{Value, json};

use crate::boards::{BoardPanel, PanelBody};

/// A panel's figures: column names and one row of values per line.
#[derive(Debug, Clone, PartialEq)]
pub struct PanelTable {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

fn time(ms: i64) -> Value {
    json!(dash_domain::format_ms(ms))
}

/// What `panel` shows as a table; `None` for a panel without figures (a note, one whose
/// pipeline or view is gone, one not readable now).
pub fn panel_table(panel: &BoardPanel) -> Option<PanelTable> {
    match &panel.body {
        PanelBody::Pipeline { chart, .. } => Some(PanelTable {
            columns: vec!["bucket_start".into(), "events".into()],
            rows: chart
                .counts
                .iter()
                .enumerate()
                .map(|(i, count)| vec![time(chart.from_ms + i as i64 * chart.bucket_ms), json!(count)])
                .collect(),
        }),
        PanelBody::View { card, .. } if card.unavailable.is_some() => None,
        PanelBody::View { display: Display::Chart, card, .. } => {
            let mut rows = Vec::new();
            for (group, values) in &card.series {
                for (i, value) in values.iter().enumerate() {
                    rows.push(vec![time(card.from_ms + i as i64 * card.bucket_ms), json!(group), json!(value)]);
                }
            }
            Some(PanelTable { columns: vec!["bucket_start".into(), "group".into(), card.aggregate.clone()], rows })
        }
        PanelBody::View { display: Display::Stat, card, .. } => Some(PanelTable {
            columns: vec![card.aggregate.clone(), "events".into(), "skipped".into()],
            rows: vec![vec![json!(card.total), json!(card.n), json!(card.skipped)]],
        }),
        PanelBody::View { display: Display::Table, card, .. } => Some(PanelTable {
            columns: vec!["group".into(), card.aggregate.clone(), "events".into(), "share".into()],
            rows: card
                .groups
                .iter()
                .map(|g| vec![json!(g.group), json!(g.value), json!(g.n), json!(g.share)])
                .collect(),
        }),
        PanelBody::Note { .. } | PanelBody::Absent { .. } => None,
    }
}

impl PanelTable {
    /// RFC 4180 CSV with a header line; a missing value is an empty field.
    pub fn to_csv(&self) -> String {
        let mut writer = csv::Writer::from_writer(Vec::new());
        // Text from events (a group's value) that a spreadsheet would run as a formula is kept
        // as text: a leading apostrophe, as spreadsheets themselves write it. Numbers are numbers.
        let text = |value: &Value| match value {
            Value::Null => String::new(),
            Value::String(s) if s.starts_with(['=', '+', '-', '@', '\t', '\r']) => format!("'{s}"),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        // Writing to memory cannot fail.
        let _ = writer.write_record(&self.columns);
        for row in &self.rows {
            let _ = writer.write_record(row.iter().map(text));
        }
        String::from_utf8(writer.into_inner().unwrap_or_default()).unwrap_or_default()
    }

    /// `{"board", "panel", "title", "range", "from", "to", "rows": [{column: value}]}`, the
    /// range's window as of `now_ms`.
    pub fn to_json(&self, board: &str, panel: &BoardPanel, now_ms: i64) -> Value {
        let (from, to) = panel.range.window(now_ms);
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| Value::Object(self.columns.iter().cloned().zip(row.iter().cloned()).collect()))
            .collect();
        json!({
            "board": board,
            "panel": panel.index,
            "title": panel.title,
            "range": panel.range.as_str(),
            "from": dash_domain::format_ms(from),
            "to": dash_domain::format_ms(to),
            "rows": rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::{GroupLine, ViewCard};
    use crate::{Chart, ChartRange};

    fn panel(body: PanelBody) -> BoardPanel {
        BoardPanel {
            base: "/boards/ops".into(),
            links: true,
            index: 1,
            title: "T".into(),
            width: 2,
            range: ChartRange::Hour,
            body,
        }
    }

    fn card() -> ViewCard {
        ViewCard {
            pipeline: "orders".into(),
            name: "by-type".into(),
            describe: "sum of /amount by /type".into(),
            aggregate: "sum".into(),
            range: ChartRange::Hour,
            computing: None,
            total: Some(7.5),
            n: 3,
            skipped: 1,
            from_ms: 0,
            bucket_ms: 60_000,
            series: vec![("paid, \"eu\"".into(), vec![Some(7.5), None])],
            stacked: true,
            groups: vec![GroupLine { group: "paid, \"eu\"".into(), value: Some(7.5), n: 3, share: 1.0 }],
            can_edit: false,
            unavailable: None,
        }
    }

    #[test]
    fn each_panel_exports_what_it_shows() {
        let chart = Chart { range: ChartRange::Hour, from_ms: 0, bucket_ms: 60_000, counts: vec![2, 0] };
        let body =
            PanelBody::Pipeline { pipeline: "o".into(), seq: 1, count: 2, rate: 0.0, chart, fresh: Default::default() };
        let table = panel_table(&panel(body)).unwrap();
        assert_eq!(table.to_csv(), "bucket_start,events\n1970-01-01T00:00:00.000Z,2\n1970-01-01T00:01:00.000Z,0\n");

        let view = |display| panel(PanelBody::View { seq: 1, display, card: card(), fresh: Default::default() });
        let chart = panel_table(&view(Display::Chart)).unwrap();
        assert_eq!(
            chart.to_csv(),
            "bucket_start,group,sum\n1970-01-01T00:00:00.000Z,\"paid, \"\"eu\"\"\",7.5\n1970-01-01T00:01:00.000Z,\"paid, \"\"eu\"\"\",\n"
        );
        let mut formula = card();
        formula.groups[0].group = "=HYPERLINK(\"http://x\")".into();
        formula.total = Some(-2.5);
        let body = PanelBody::View { seq: 1, display: Display::Table, card: formula, fresh: Default::default() };
        let csv = panel_table(&panel(body)).unwrap().to_csv();
        assert!(csv.contains("\"'=HYPERLINK(\"\"http://x\"\")\",7.5,3,1"), "{csv}");
        let stat = panel_table(&view(Display::Stat)).unwrap();
        assert_eq!(stat.to_csv(), "sum,events,skipped\n7.5,3,1\n");
        let groups = panel_table(&view(Display::Table)).unwrap();
        assert_eq!(
            groups.to_json("ops", &view(Display::Table), 90_000),
            json!({"board": "ops", "panel": 1, "title": "T", "range": "1h",
                   "from": "1969-12-31T23:02:00.000Z", "to": "1970-01-01T00:02:00.000Z",
                   "rows": [{"group": "paid, \"eu\"", "sum": 7.5, "events": 3, "share": 1.0}]})
        );
        assert_eq!(panel_table(&panel(PanelBody::Note { html: String::new() })), None);
    }
}
