//! Charts as SVG, drawn on the server: a sparkline for the overview and a bar chart with axis
//! labels for the pipeline page. Each bar carries a `<title>`, so hovering shows its value
//! without any script.

use leptos::prelude::*;

use crate::Chart;
use crate::display::clock;

/// The time ranges a chart offers: the pipeline page the first three ([`ChartRange::ALL`]),
/// boards all of them ([`ChartRange::BOARD`], the same names as `dash_boards::RANGES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChartRange {
    FiveMinutes,
    #[default]
    Hour,
    Day,
    Week,
    Month,
    /// From and to, unix ms (a board's `?from=&to=`); see [`ChartRange::custom`].
    Custom {
        from_ms: i64,
        to_ms: i64,
    },
}

/// Bucket widths a custom range picks from: the narrowest that keeps it to
/// [`MAX_CUSTOM_BUCKETS`].
const CUSTOM_BUCKETS: [(i64, &str); 6] = [
    (60_000, "minute"),
    (300_000, "5 minutes"),
    (600_000, "10 minutes"),
    (3_600_000, "hour"),
    (6 * 3_600_000, "6 hours"),
    (86_400_000, "day"),
];
const MAX_CUSTOM_BUCKETS: i64 = 400;

impl ChartRange {
    pub const ALL: [ChartRange; 3] = [ChartRange::FiveMinutes, ChartRange::Hour, ChartRange::Day];
    pub const BOARD: [ChartRange; 5] =
        [ChartRange::FiveMinutes, ChartRange::Hour, ChartRange::Day, ChartRange::Week, ChartRange::Month];

    /// A range of the caller's: from before to, at most 400 days (a bar per day), within the
    /// years a timestamp can say. `None` otherwise.
    pub fn custom(from_ms: i64, to_ms: i64) -> Option<Self> {
        let span = to_ms.checked_sub(from_ms)?;
        let max_span = MAX_CUSTOM_BUCKETS * CUSTOM_BUCKETS[CUSTOM_BUCKETS.len() - 1].0;
        let in_years = |ms: i64| (0..=253_402_300_799_999).contains(&ms);
        (span > 0 && span <= max_span && in_years(from_ms) && in_years(to_ms))
            .then_some(Self::Custom { from_ms, to_ms })
    }

    /// A custom range from two instants as a link or a form gives them: unix ms, RFC 3339, or a
    /// browser's `datetime-local` value (`2026-12-01T09:30`, taken as UTC).
    pub fn parse_custom(from: &str, to: &str) -> Option<Self> {
        Self::custom(Self::parse_instant(from)?, Self::parse_instant(to)?)
    }

    /// One end of a custom range: unix ms, RFC 3339, or `2026-12-01T09:30` (UTC).
    pub fn parse_instant(text: &str) -> Option<i64> {
        let text = text.trim();
        dash_domain::parse_instant(text).or_else(|| {
            ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"].into_iter().find_map(|format| {
                chrono::NaiveDateTime::parse_from_str(text, format).ok().map(|t| t.and_utc().timestamp_millis())
            })
        })
    }

    /// A `datetime-local` value (UTC) for a form showing this instant.
    pub fn form_value(ms: i64) -> String {
        chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%dT%H:%M").to_string()).unwrap_or_default()
    }

    /// The query that asks for this range again: `range=1h`, or `from=…&to=…` (unix ms).
    pub fn query(self) -> String {
        match self {
            Self::Custom { from_ms, to_ms } => format!("from={from_ms}&to={to_ms}"),
            preset => format!("range={}", preset.as_str()),
        }
    }

    /// What the range covers, as a heading says it: `last 24 hours`, or
    /// `2026-12-01 00:00 to 2026-12-02 00:00 UTC`.
    pub fn span_text(self) -> String {
        match self {
            Self::Custom { from_ms, to_ms } => {
                let at = |ms: i64| {
                    chrono::DateTime::from_timestamp_millis(ms)
                        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                        .unwrap_or_default()
                };
                format!("{} to {} UTC", at(from_ms), at(to_ms))
            }
            preset => format!("last {}", preset.label()),
        }
    }

    /// `5m`, `1h`, `24h`, `7d` or `30d`; anything else is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::BOARD.into_iter().find(|r| r.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::FiveMinutes => "5m",
            Self::Hour => "1h",
            Self::Day => "24h",
            Self::Week => "7d",
            Self::Month => "30d",
            Self::Custom { .. } => "custom",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::FiveMinutes => "5 min",
            Self::Hour => "1 hour",
            Self::Day => "24 hours",
            Self::Week => "7 days",
            Self::Month => "30 days",
            Self::Custom { .. } => "custom range",
        }
    }

    /// Bucket width: per minute up to an hour, then 10 minutes over a day (144 bars, not 1440),
    /// an hour over a week (168), six hours over 30 days (120).
    pub fn bucket_ms(self) -> i64 {
        match self {
            Self::FiveMinutes | Self::Hour => 60_000,
            Self::Day => 600_000,
            Self::Week => 3_600_000,
            Self::Month => 6 * 3_600_000,
            Self::Custom { .. } => self.custom_bucket().0,
        }
    }

    fn custom_bucket(self) -> (i64, &'static str) {
        let Self::Custom { from_ms, to_ms } = self else { return CUSTOM_BUCKETS[0] };
        let span = to_ms - from_ms;
        CUSTOM_BUCKETS
            .into_iter()
            .find(|(bucket, _)| (span + bucket - 1) / bucket <= MAX_CUSTOM_BUCKETS)
            .unwrap_or(CUSTOM_BUCKETS[CUSTOM_BUCKETS.len() - 1])
    }

    /// One bucket, as a heading says it ("events per 10 minutes").
    pub fn bucket_label(self) -> &'static str {
        match self {
            Self::FiveMinutes | Self::Hour => "minute",
            Self::Day => "10 minutes",
            Self::Week => "hour",
            Self::Month => "6 hours",
            Self::Custom { .. } => self.custom_bucket().1,
        }
    }

    /// The buckets to show ending with the one that holds `now_ms`: (first bucket start, end).
    pub fn window(self, now_ms: i64) -> (i64, i64) {
        let bucket = self.bucket_ms();
        if let Self::Custom { from_ms, to_ms } = self {
            // Whole buckets around what was asked, whatever the time now.
            let from = from_ms - from_ms.rem_euclid(bucket);
            let to = to_ms + (bucket - to_ms.rem_euclid(bucket)) % bucket;
            return (from, to);
        }
        let buckets = match self {
            Self::FiveMinutes => 5,
            Self::Hour => 60,
            Self::Day => 144,
            Self::Week => 168,
            Self::Month => 120,
            Self::Custom { .. } => unreachable!("answered above"),
        };
        let current = now_ms - now_ms.rem_euclid(bucket);
        (current - (buckets - 1) * bucket, current + bucket)
    }
}

/// Events per second over the minute before `now_ms`, from per-minute counts whose last bucket
/// is the current (partial) minute: the current bucket plus the unexpired share of the previous.
pub fn rate_per_second(per_minute: &[i64], now_ms: i64) -> f64 {
    let elapsed = now_ms.rem_euclid(60_000) as f64 / 60_000.0;
    let current = per_minute.last().copied().unwrap_or(0) as f64;
    let previous = per_minute.len().checked_sub(2).map_or(0, |i| per_minute[i]) as f64;
    (current + previous * (1.0 - elapsed)) / 60.0
}

const SPARK_W: f64 = 120.0;
const SPARK_H: f64 = 28.0;

/// A filled line of per-minute counts, scaled to its own maximum.
#[component]
pub fn Sparkline(counts: Vec<i64>) -> impl IntoView {
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = if counts.len() > 1 { SPARK_W / (counts.len() - 1) as f64 } else { SPARK_W };
    let mut line = String::new();
    for (i, count) in counts.iter().enumerate() {
        let x = i as f64 * step;
        let y = SPARK_H - 1.0 - (*count as f64 / max) * (SPARK_H - 2.0);
        line.push_str(&format!("{}{x:.1},{y:.1} ", if i == 0 { "M" } else { "L" }));
    }
    let area = format!("{line}L{SPARK_W:.1},{SPARK_H:.1} L0,{SPARK_H:.1} Z");
    let total: i64 = counts.iter().sum();
    view! {
        <svg class="sparkline" viewBox=format!("0 0 {SPARK_W} {SPARK_H}") width="120" height="28"
            preserveAspectRatio="none" role="img" aria-label=format!("{total} events in the last hour")>
            <path class="area" d=area></path>
            <path class="line" d=line.trim_end().to_string()></path>
        </svg>
    }
}

const CHART_W: f64 = 720.0;
const CHART_H: f64 = 200.0;
const AXIS: f64 = 20.0;

/// Bars per bucket with the peak on the y axis and clock times under the first, middle and last.
#[component]
pub fn BarChart(chart: Chart) -> impl IntoView {
    let max = chart.counts.iter().copied().max().unwrap_or(0);
    let scale = (CHART_H - AXIS - 4.0) / max.max(1) as f64;
    let slot = CHART_W / chart.counts.len().max(1) as f64;
    let gap = if slot > 4.0 { 1.0 } else { 0.0 };
    let bars = chart
        .counts
        .iter()
        .enumerate()
        .map(|(i, count)| {
            let start = chart.from_ms + i as i64 * chart.bucket_ms;
            let height = (*count as f64 * scale).max(if *count > 0 { 1.0 } else { 0.0 });
            let title = format!("{} · {count} events", clock(start, chart.bucket_ms));
            view! {
                <rect x=format!("{:.1}", i as f64 * slot) y=format!("{:.1}", CHART_H - AXIS - height)
                    width=format!("{:.1}", (slot - gap).max(0.5)) height=format!("{height:.1}")>
                    <title>{title}</title>
                </rect>
            }
        })
        .collect_view();
    let last = chart.counts.len().saturating_sub(1);
    let ticks = [0, last / 2, last]
        .into_iter()
        .map(|i| {
            let x = i as f64 * slot + slot / 2.0;
            let anchor = if i == 0 {
                "start"
            } else if i == last {
                "end"
            } else {
                "middle"
            };
            let label = clock(chart.from_ms + i as i64 * chart.bucket_ms, chart.bucket_ms);
            view! { <text class="tick" x=format!("{x:.1}") y=format!("{:.1}", CHART_H - 5.0) text-anchor=anchor>{label}</text> }
        })
        .collect_view();
    let total: i64 = chart.counts.iter().sum();
    view! {
        <svg class="chart" viewBox=format!("0 0 {CHART_W} {CHART_H}") role="img"
            aria-label=format!("{total} events over the {}", chart.range.span_text())>
            <line class="baseline" x1="0" x2=CHART_W.to_string() y1=(CHART_H - AXIS).to_string() y2=(CHART_H - AXIS).to_string()></line>
            <text class="peak" x="4" y="14">{format!("peak {max}/bucket")}</text>
            {bars}
            {ticks}
        </svg>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_end_with_the_current_bucket() {
        for range in ChartRange::ALL {
            assert_eq!(ChartRange::parse(range.as_str()), Some(range));
        }
        for range in ChartRange::BOARD {
            assert_eq!(ChartRange::parse(range.as_str()), Some(range));
        }
        assert_eq!(ChartRange::parse("2h"), None);
        assert_eq!(ChartRange::parse("custom"), None);
        // A custom range: whole buckets around it, at most 400 of them.
        let day = 86_400_000;
        let range = ChartRange::custom(day + 90_000, 2 * day + 30_000).unwrap();
        assert_eq!((range.bucket_ms(), range.bucket_label()), (300_000, "5 minutes"));
        assert_eq!(range.window(0), (day, 2 * day + 300_000));
        assert_eq!(range.query(), format!("from={}&to={}", day + 90_000, 2 * day + 30_000));
        assert_eq!(range.span_text(), "1970-01-02 00:01 to 1970-01-03 00:00 UTC");
        assert_eq!(ChartRange::custom(0, 400 * day).unwrap().bucket_ms(), day);
        assert_eq!(ChartRange::custom(0, 401 * day), None);
        assert_eq!(ChartRange::custom(5, 5), None);
        assert_eq!(ChartRange::custom(i64::MIN, 0), None);
        assert_eq!(ChartRange::Hour.span_text(), "last 1 hour");
        assert_eq!(
            ChartRange::parse_custom("1970-01-02T00:00", "1970-01-02T01:00:00Z"),
            ChartRange::custom(day, day + 3_600_000)
        );
        assert_eq!(ChartRange::parse_custom("86400000", "90000000"), ChartRange::custom(day, 90_000_000));
        assert_eq!(ChartRange::parse_custom("yesterday", "now"), None);
        assert_eq!(ChartRange::form_value(day + 90_000), "1970-01-02T00:01");
        let (from, to) = ChartRange::Month.window(1_700_000_123_456);
        assert_eq!((to - from) / ChartRange::Month.bucket_ms(), 120);
        let now = 1_700_000_123_456;
        let (from, to) = ChartRange::Hour.window(now);
        assert_eq!((to - from) / 60_000, 60);
        assert!(from < now && now < to);
        assert_eq!(from % 60_000, 0);
        let (from, to) = ChartRange::Day.window(now);
        assert_eq!((to - from) / 600_000, 144);
    }

    #[test]
    fn rate_counts_the_current_minute_and_the_unexpired_part_of_the_previous() {
        // 15 s into the minute: all of the current bucket, 3/4 of the previous one.
        let now = 60_000 * 1000 + 15_000;
        let rate = rate_per_second(&[0, 120, 60], now);
        assert!((rate - (60.0 + 90.0) / 60.0).abs() < 1e-9, "{rate}");
        assert_eq!(rate_per_second(&[], now), 0.0);
    }

    #[test]
    fn bar_chart_draws_one_titled_bar_per_bucket() {
        let chart =
            Chart { range: ChartRange::FiveMinutes, from_ms: 0, bucket_ms: 60_000, counts: vec![0, 5, 10, 0, 1] };
        let svg = BarChart(BarChartProps { chart }).to_html();
        assert_eq!(svg.matches("<rect").count(), 5, "{svg}");
        assert!(svg.contains("<title>00:02 · 10 events</title>"), "{svg}");
        assert!(svg.contains("peak 10/bucket"), "{svg}");
        assert!(svg.contains("16 events over the last 5 min"), "{svg}");
    }

    #[test]
    fn sparkline_of_nothing_is_a_flat_line() {
        let svg = Sparkline(SparklineProps { counts: vec![0; 60] }).to_html();
        assert!(svg.contains("0 events in the last hour"), "{svg}");
        assert!(svg.contains("M0.0,27.0"), "{svg}");
    }
}
