//! The delivery-health chart of the inbox page: per endpoint, attempts per hour over the last
//! 24 hours stacked by outcome, with the hour's latency p50 and p99 as lines, drawn as
//! server-side SVG (no script, no outside asset: the page's Content-Security-Policy allows
//! neither, and a chart needs neither).
//!
//! Pure: [`EndpointHealth::from_rows`] places the database's hour buckets and computes the
//! percentiles, [`svg`] draws. The chart carries its numbers as text for screen readers: a
//! `<title>` and a `<desc>` with the window's totals, and a `<title>` per hour.

use std::fmt::Write as _;

use crate::model::AttemptOutcome;

/// Hours the chart covers; the last is the current, unfinished hour.
pub(super) const HOURS: usize = 24;
pub(super) const HOUR_MS: i64 = 3_600_000;

/// What one hour of one endpoint came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Hour {
    /// The endpoint took the event: a 2xx, or the relay took a forward.
    pub(super) delivered: i64,
    pub(super) http_error: i64,
    pub(super) error: i64,
    pub(super) not_sent: i64,
    pub(super) p50_ms: Option<i64>,
    pub(super) p99_ms: Option<i64>,
}

impl Hour {
    fn attempts(&self) -> i64 {
        self.delivered + self.http_error + self.error + self.not_sent
    }

    fn add(&mut self, outcome: AttemptOutcome, attempts: i64) {
        let slot = match outcome {
            AttemptOutcome::Delivered | AttemptOutcome::Forwarded => &mut self.delivered,
            AttemptOutcome::HttpError => &mut self.http_error,
            AttemptOutcome::Error => &mut self.error,
            AttemptOutcome::NotSent => &mut self.not_sent,
        };
        *slot = slot.saturating_add(attempts);
    }
}

/// One endpoint's last 24 hours, oldest hour first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EndpointHealth {
    /// What the chart is of, e.g. `inbox (webhook)`.
    pub(super) label: String,
    /// When hour 0 starts, ms since the epoch.
    pub(super) start_ms: i64,
    pub(super) hours: [Hour; HOURS],
    /// Over the whole window.
    pub(super) total: Hour,
}

impl EndpointHealth {
    /// Places counts `(hour, outcome, attempts)` and latencies `(hour, ms)` into the window's
    /// hours; an hour outside the window (a clock step, a row written meanwhile) is left out
    /// rather than drawn off the chart.
    pub(super) fn from_rows(
        label: String,
        start_ms: i64,
        outcomes: impl IntoIterator<Item = (i64, AttemptOutcome, i64)>,
        latencies: impl IntoIterator<Item = (i64, i64)>,
    ) -> Self {
        let mut hours = [Hour::default(); HOURS];
        let mut total = Hour::default();
        for (hour, outcome, attempts) in outcomes {
            if let Some(slot) = slot(&mut hours, hour) {
                slot.add(outcome, attempts);
                total.add(outcome, attempts);
            }
        }
        let mut per_hour: [Vec<i64>; HOURS] = std::array::from_fn(|_| Vec::new());
        let mut all = Vec::new();
        for (hour, latency_ms) in latencies {
            if let Some(index) = index(hour) {
                per_hour[index].push(latency_ms);
                all.push(latency_ms);
            }
        }
        for (hour, mut latencies) in hours.iter_mut().zip(per_hour) {
            latencies.sort_unstable();
            hour.p50_ms = percentile(&latencies, 50);
            hour.p99_ms = percentile(&latencies, 99);
        }
        all.sort_unstable();
        total.p50_ms = percentile(&all, 50);
        total.p99_ms = percentile(&all, 99);
        Self {
            label,
            start_ms,
            hours,
            total,
        }
    }
}

fn index(hour: i64) -> Option<usize> {
    usize::try_from(hour).ok().filter(|index| *index < HOURS)
}

fn slot(hours: &mut [Hour; HOURS], hour: i64) -> Option<&mut Hour> {
    index(hour).map(|index| &mut hours[index])
}

/// The nearest-rank percentile of ascending values: the smallest value that at least `p` percent
/// of them do not exceed. `None` for no values.
pub(super) fn percentile(sorted: &[i64], p: usize) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p.min(100) * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

// Geometry of the drawing, in viewBox units.
const WIDTH: i64 = 720;
const HEIGHT: i64 = 240;
const LEFT: i64 = 44;
const RIGHT: i64 = 56;
const TOP: i64 = 36;
const BOTTOM: i64 = 34;
const PLOT_W: i64 = WIDTH - LEFT - RIGHT;
const PLOT_H: i64 = HEIGHT - TOP - BOTTOM;
/// One hour's width: the plot divided into [`HOURS`] slots.
const SLOT_W: i64 = PLOT_W / 24;

/// The outcome colours, from the dashboard's palette; each has a legend entry.
const SERIES: [(&str, &str); 4] = [
    ("delivered", "#1c7c3c"),
    ("http_error", "#d97706"),
    ("error", "#b42318"),
    ("not_sent", "#8a94a3"),
];
const P50_COLOUR: &str = "#1f5fbf";
const P99_COLOUR: &str = "#6d28d9";

fn counts(hour: &Hour) -> [i64; 4] {
    [hour.delivered, hour.http_error, hour.error, hour.not_sent]
}

/// `12 delivered, 1 http_error, 0 error, 0 not_sent; latency p50 40 ms, p99 90 ms`.
fn in_words(hour: &Hour) -> String {
    let mut text = SERIES
        .iter()
        .zip(counts(hour))
        .map(|((name, _), count)| format!("{count} {name}"))
        .collect::<Vec<_>>()
        .join(", ");
    match (hour.p50_ms, hour.p99_ms) {
        (Some(p50), Some(p99)) => {
            let _ = write!(text, "; latency p50 {p50} ms, p99 {p99} ms");
        }
        _ => text.push_str("; no latency"),
    }
    text
}

fn hour_label(start_ms: i64, index: usize) -> String {
    let offset = i64::try_from(index).unwrap_or(0).saturating_mul(HOUR_MS);
    chrono::DateTime::from_timestamp_millis(start_ms.saturating_add(offset))
        .map(|time| time.format("%H:00").to_string())
        .unwrap_or_default()
}

/// The SVG of one endpoint's chart; `id` makes its element ids unique on the page.
pub(super) fn svg(health: &EndpointHealth, id: &str) -> String {
    let id = escape(id);
    let label = escape(&health.label);
    let max_count = health
        .hours
        .iter()
        .map(Hour::attempts)
        .max()
        .unwrap_or(0)
        .max(1);
    let max_latency = health
        .hours
        .iter()
        .filter_map(|hour| hour.p99_ms)
        .max()
        .unwrap_or(0)
        .max(1);
    let summary = if health.total.attempts() == 0 {
        "No attempts in the last 24 h.".to_owned()
    } else {
        format!("Last 24 h: {}.", in_words(&health.total))
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"chart\" data-endpoint=\"{label}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         role=\"img\" aria-labelledby=\"{id}-title {id}-desc\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"{id}-title\">Attempts per hour and latency, {label}, last 24 h (UTC)</title>\
         <desc id=\"{id}-desc\">{summary}</desc>"
    );
    // Legend along the top.
    let mut x = LEFT;
    let legend = SERIES
        .iter()
        .map(|(name, colour)| (*name, *colour, false))
        .chain([("p50", P50_COLOUR, true), ("p99", P99_COLOUR, true)]);
    for (name, colour, line) in legend {
        if line {
            let _ = write!(
                out,
                "<line x1=\"{x}\" y1=\"14\" x2=\"{}\" y2=\"14\" stroke=\"{colour}\" stroke-width=\"2\"/>",
                x + 12
            );
        } else {
            let _ = write!(
                out,
                "<rect x=\"{x}\" y=\"8\" width=\"12\" height=\"12\" fill=\"{colour}\"/>"
            );
        }
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"18\" font-size=\"12\" fill=\"#1d232b\">{name}</text>",
            x + 16
        );
        x += 32 + 8 * i64::try_from(name.len()).unwrap_or(8);
    }
    // Axes: counts on the left, latency on the right.
    let bottom = TOP + PLOT_H;
    let right = LEFT + PLOT_W;
    let _ = write!(
        out,
        "<g aria-hidden=\"true\" font-size=\"11\" fill=\"#5b6573\">\
         <line x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"#aeb6c2\"/>\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{right}\" y2=\"{TOP}\" stroke=\"#e4e7eb\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max_count}</text>\
         <text x=\"{}\" y=\"{bottom}\" text-anchor=\"end\">0</text>\
         <text x=\"{}\" y=\"{}\">{max_latency} ms</text>\
         <text x=\"{}\" y=\"{bottom}\">0 ms</text>",
        LEFT - 6,
        TOP + 4,
        LEFT - 6,
        right + 6,
        TOP + 4,
        right + 6,
    );
    // Every third hour, counted back from the current one, so that hour is always labelled.
    for index in (0..HOURS).rev().step_by(3) {
        let x = LEFT + slot_x(index) + SLOT_W / 2;
        let _ = write!(
            out,
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            bottom + 16,
            hour_label(health.start_ms, index)
        );
    }
    out.push_str("</g>");
    if health.total.attempts() == 0 {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"13\" fill=\"#5b6573\">\
             No attempts in the last 24 h</text>",
            LEFT + PLOT_W / 2,
            TOP + PLOT_H / 2
        );
    }
    // One group per hour: its stacked bar, and its numbers as a title.
    for (index, hour) in health.hours.iter().enumerate() {
        let x = LEFT + slot_x(index) + 2;
        let _ = write!(
            out,
            "<g class=\"hour\"><title>{} UTC: {}</title>\
             <rect x=\"{}\" y=\"{TOP}\" width=\"{SLOT_W}\" height=\"{PLOT_H}\" fill=\"transparent\"/>",
            hour_label(health.start_ms, index),
            in_words(hour),
            x - 2
        );
        let mut y = bottom;
        for ((name, colour), count) in SERIES.iter().zip(counts(hour)) {
            if count == 0 {
                continue;
            }
            let height = (count * PLOT_H / max_count).max(1);
            y -= height;
            let _ = write!(
                out,
                "<rect class=\"{name}\" x=\"{x}\" y=\"{y}\" width=\"{}\" height=\"{height}\" \
                 fill=\"{colour}\"/>",
                SLOT_W - 4
            );
        }
        out.push_str("</g>");
    }
    for (p50, colour, dash) in [
        (true, P50_COLOUR, ""),
        (false, P99_COLOUR, " stroke-dasharray=\"4 3\""),
    ] {
        let points: Vec<(i64, i64)> = health
            .hours
            .iter()
            .enumerate()
            .filter_map(|(index, hour)| {
                let ms = if p50 { hour.p50_ms } else { hour.p99_ms };
                ms.map(|ms| {
                    let x = LEFT + slot_x(index) + SLOT_W / 2;
                    (x, bottom - ms.min(max_latency) * PLOT_H / max_latency)
                })
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        let line: Vec<String> = points.iter().map(|(x, y)| format!("{x},{y}")).collect();
        let _ = write!(
            out,
            "<polyline aria-hidden=\"true\" points=\"{}\" fill=\"none\" stroke=\"{colour}\" \
             stroke-width=\"2\"{dash}/>",
            line.join(" ")
        );
        for (x, y) in points {
            let _ = write!(
                out,
                "<circle aria-hidden=\"true\" cx=\"{x}\" cy=\"{y}\" r=\"2.5\" fill=\"{colour}\"/>"
            );
        }
    }
    out.push_str("</svg>");
    out
}

fn slot_x(index: usize) -> i64 {
    i64::try_from(index).unwrap_or(0) * SLOT_W
}

/// Text for an SVG element or attribute.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    fn health(
        outcomes: Vec<(i64, AttemptOutcome, i64)>,
        latencies: Vec<(i64, i64)>,
    ) -> EndpointHealth {
        EndpointHealth::from_rows("inbox (webhook)".to_owned(), START, outcomes, latencies)
    }

    #[test]
    fn counts_go_to_their_hour_and_outside_hours_are_left_out() {
        let chart = health(
            vec![
                (0, AttemptOutcome::Delivered, 2),
                (0, AttemptOutcome::Forwarded, 1),
                (5, AttemptOutcome::HttpError, 3),
                (23, AttemptOutcome::Error, 1),
                (23, AttemptOutcome::NotSent, 4),
                (24, AttemptOutcome::Delivered, 100),
                (-1, AttemptOutcome::Delivered, 100),
            ],
            vec![(5, 30), (24, 9_999), (-3, 9_999)],
        );
        assert_eq!(chart.hours[0].delivered, 3);
        assert_eq!(chart.hours[5].http_error, 3);
        assert_eq!(chart.hours[5].p50_ms, Some(30));
        assert_eq!(chart.hours[23].error, 1);
        assert_eq!(chart.hours[23].not_sent, 4);
        assert_eq!(chart.hours[1], Hour::default());
        assert_eq!(chart.total.attempts(), 11);
        assert_eq!(chart.total.p99_ms, Some(30));
        let drawn = svg(&chart, "c0");
        assert!(drawn.contains("<title>05:00 UTC: 0 delivered, 3 http_error, 0 error, 0 not_sent; latency p50 30 ms, p99 30 ms</title>"), "{drawn}");
        assert!(drawn.contains("Last 24 h: 3 delivered, 3 http_error, 1 error, 4 not_sent"));
        // The tallest hour (23: five attempts) fills the plot; hour 0 (three) is 3/5 of it.
        assert!(drawn.contains(&format!("height=\"{}\" fill=\"#b42318\"", PLOT_H / 5)));
        assert!(drawn.contains(&format!(
            "<rect class=\"delivered\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"",
            LEFT + 2,
            TOP + PLOT_H - 3 * PLOT_H / 5,
            SLOT_W - 4,
            3 * PLOT_H / 5
        )));
    }

    #[test]
    fn no_data_draws_an_empty_chart_that_says_so() {
        let chart = health(Vec::new(), Vec::new());
        assert_eq!(chart.total, Hour::default());
        let drawn = svg(&chart, "c1");
        assert!(drawn.starts_with("<svg") && drawn.ends_with("</svg>"));
        assert!(drawn.contains("<desc id=\"c1-desc\">No attempts in the last 24 h.</desc>"));
        assert!(!drawn.contains("<polyline"));
        assert!(!drawn.contains("class=\"delivered\""));
        assert_eq!(drawn.matches("<g class=\"hour\">").count(), HOURS);
    }

    #[test]
    fn p99_and_p50_are_nearest_rank() {
        let values: Vec<i64> = (1..=200).map(|n| n * 10).collect();
        assert_eq!(percentile(&values, 99), Some(1980));
        assert_eq!(percentile(&values, 50), Some(1000));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[], 50), None);
        // Ninety fast answers and ten slow ones: p50 is fast, p99 is slow.
        let mut mixed = vec![20; 90];
        mixed.extend([5_000; 10]);
        assert_eq!(percentile(&mixed, 50), Some(20));
        assert_eq!(percentile(&mixed, 99), Some(5_000));
        let chart = health(
            vec![(3, AttemptOutcome::Delivered, 100)],
            mixed.iter().map(|ms| (3, *ms)).collect(),
        );
        assert_eq!(chart.hours[3].p99_ms, Some(5_000));
        assert_eq!(chart.total.p50_ms, Some(20));
    }

    #[test]
    fn labels_are_escaped() {
        let chart =
            EndpointHealth::from_rows("rule:<b>\"x\"&".to_owned(), START, Vec::new(), Vec::new());
        let drawn = svg(&chart, "c2");
        assert!(drawn.contains("rule:&lt;b&gt;&quot;x&quot;&amp;"));
        assert!(!drawn.contains("<b>"));
    }
}
