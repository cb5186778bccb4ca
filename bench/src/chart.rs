//! `easy-mqtt-bench chart results.csv out.svg`: grouped bar charts of the
//! comparison (throughput per scenario, memory per connection, connection
//! rate), written as SVG text by hand.
//!
//! The CSV is what scripts/compare.sh writes: a header line, then one row
//! per scenario and broker; the columns used are `scenario`, `broker`,
//! `rate`, `bytes_per_conn` and `conn_rate` (empty cells are skipped).
//! Scenarios named `conn*` feed the two connection panels; `latency*` rows
//! are left out (their rate is the offered load).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::error::{Context, Error, Result};

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 300.0;
const MARGIN_LEFT: f64 = 90.0;
const MARGIN_RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f",
];

/// One panel: values per category (scenario) and series (broker).
struct Panel {
    title: String,
    unit: String,
    categories: Vec<String>,
    values: BTreeMap<(String, String), f64>,
}

pub fn render_file(csv_path: &str, svg_path: &str) -> Result<()> {
    let csv = std::fs::read_to_string(csv_path).context(format!("cannot read {csv_path}"))?;
    let svg = render(&csv)?;
    std::fs::write(svg_path, svg).context(format!("cannot write {svg_path}"))
}

/// The brokers in order of first appearance.
fn series_of(rows: &[BTreeMap<String, String>]) -> Vec<String> {
    let mut series: Vec<String> = Vec::new();
    for row in rows {
        if let Some(broker) = row.get("broker")
            && !series.contains(broker)
        {
            series.push(broker.clone());
        }
    }
    series
}

pub fn render(csv: &str) -> Result<String> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .ok_or_else(|| Error::new("empty CSV"))?
        .split(',')
        .map(|h| h.trim().to_owned())
        .collect();
    let rows: Vec<BTreeMap<String, String>> = lines
        .map(|line| {
            header
                .iter()
                .cloned()
                .zip(line.split(',').map(|c| c.trim().to_owned()))
                .collect()
        })
        .collect();
    let series = series_of(&rows);
    let panel = |title: &str, unit: &str, column: &str, only_conn: bool| {
        let mut panel = Panel {
            title: title.to_owned(),
            unit: unit.to_owned(),
            categories: Vec::new(),
            values: BTreeMap::new(),
        };
        for row in &rows {
            let (Some(scenario), Some(broker)) = (row.get("scenario"), row.get("broker")) else {
                continue;
            };
            // Connection scenarios have their own panels; a latency run's
            // rate is its offered load, not a throughput.
            let is_conn = scenario.starts_with("conn");
            if is_conn != only_conn || scenario.starts_with("latency") {
                continue;
            }
            let Some(value) = row.get(column).and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            if !panel.categories.contains(scenario) {
                panel.categories.push(scenario.clone());
            }
            panel
                .values
                .insert((scenario.clone(), broker.clone()), value);
        }
        panel
    };
    let panels: Vec<Panel> = [
        panel(
            "Throughput (deliveries per second, higher is better)",
            "msg/s",
            "rate",
            false,
        ),
        panel(
            "Broker memory per idle connection (bytes, lower is better)",
            "B",
            "bytes_per_conn",
            true,
        ),
        panel(
            "Connection rate (CONNACKs per second, higher is better)",
            "conn/s",
            "conn_rate",
            true,
        ),
    ]
    .into_iter()
    .filter(|p| !p.values.is_empty())
    .collect();
    if panels.is_empty() {
        return Err(Error::new(
            "no values to chart (columns rate, bytes_per_conn, conn_rate)",
        ));
    }
    let height = panels.len() as f64 * PANEL_HEIGHT + 40.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
"#
    );
    // Legend.
    for (i, name) in series.iter().enumerate() {
        let x = MARGIN_LEFT + i as f64 * 160.0;
        let color = COLORS.get(i % COLORS.len()).copied().unwrap_or("#000");
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="12" width="14" height="14" fill="{color}"/><text x="{}" y="24">{}</text>"#,
            x + 20.0,
            escape(name)
        );
    }
    for (index, panel) in panels.iter().enumerate() {
        draw_panel(&mut svg, panel, &series, 40.0 + index as f64 * PANEL_HEIGHT);
    }
    svg.push_str("</svg>\n");
    Ok(svg)
}

fn draw_panel(svg: &mut String, panel: &Panel, series: &[String], top: f64) {
    let plot_top = top + TOP;
    let plot_height = PANEL_HEIGHT - TOP - BOTTOM;
    let plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let max = panel.values.values().copied().fold(0.0f64, f64::max);
    let (step, ticks) = nice_axis(max);
    let scale_max = step * ticks as f64;
    let y_of = |v: f64| plot_top + plot_height - v / scale_max * plot_height;
    let _ = writeln!(
        svg,
        r#"<text x="{MARGIN_LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top + 28.0,
        escape(&panel.title)
    );
    for tick in 0..=ticks {
        let value = step * tick as f64;
        let y = y_of(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{MARGIN_LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - MARGIN_RIGHT,
            MARGIN_LEFT - 6.0,
            y + 4.0,
            human(value)
        );
    }
    let groups = panel.categories.len().max(1) as f64;
    let group_width = plot_width / groups;
    let bar_width = (group_width * 0.8 / series.len().max(1) as f64).min(70.0);
    for (g, category) in panel.categories.iter().enumerate() {
        let group_x = MARGIN_LEFT + g as f64 * group_width;
        let bars_width = bar_width * series.len() as f64;
        let first_x = group_x + (group_width - bars_width) / 2.0;
        for (s, name) in series.iter().enumerate() {
            let Some(&value) = panel.values.get(&(category.clone(), name.clone())) else {
                continue;
            };
            let x = first_x + s as f64 * bar_width;
            let y = y_of(value);
            let color = COLORS.get(s % COLORS.len()).copied().unwrap_or("#000");
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} {}: {} {}</title></rect><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                bar_width - 2.0,
                (plot_top + plot_height - y).max(0.0),
                escape(name),
                escape(category),
                human(value),
                escape(&panel.unit),
                x + bar_width / 2.0 - 1.0,
                y - 3.0,
                human(value)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            group_x + group_width / 2.0,
            plot_top + plot_height + 18.0,
            escape(category)
        );
    }
    let _ = writeln!(
        svg,
        r#"<line x1="{MARGIN_LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="black"/>"#,
        plot_top + plot_height,
        WIDTH - MARGIN_RIGHT
    );
}

/// A round tick step and the number of steps covering `max`.
fn nice_axis(max: f64) -> (f64, usize) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 1);
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    (step, (max / step).ceil().max(1.0) as usize)
}

fn human(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if abs >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else if abs >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_three_panels() {
        let csv = "scenario,broker,rate,p99_us,bytes_per_conn,conn_rate\n\
                   fanout-q1,easy-mqtt,800000,900,,\n\
                   fanout-q1,mosquitto,400000,2000,,\n\
                   fanout-q1,rumqttd,600000,1500,,\n\
                   conn,easy-mqtt,,,5000,20000\n\
                   conn,mosquitto,,,3000,15000\n";
        let svg = render(csv).unwrap_or_default();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("Throughput"));
        assert!(svg.contains("memory per idle connection"));
        assert!(svg.contains("Connection rate"));
        assert_eq!(svg.matches("<rect x=").count(), 3 + 3 + 2 + 2);
        assert!(render("scenario,broker\n").is_err());
    }

    #[test]
    fn axis_is_round() {
        assert_eq!(nice_axis(870_000.0), (200_000.0, 5));
        assert_eq!(nice_axis(0.0), (1.0, 1));
        assert_eq!(human(1_234_567.0), "1.23M");
        assert_eq!(human(45_000.0), "45k");
    }
}
