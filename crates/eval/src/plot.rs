//! Small SVG charts for benchmark reports: line charts of a few named series on linear
//! or logarithmic axes, with ticks, grid and legend; optionally (for ROC curves) lines
//! without markers, a fixed x range and the `y = x` diagonal. Hand-written SVG (no
//! plotting dependency); the output is a standalone file any browser or README renders.

use std::fmt::Write;

/// One named line of points (drawn in the given order, with a marker per point).
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart: series over two labelled axes.
#[derive(Clone, Debug, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Logarithmic x axis (base 2 ticks); points with x <= 0 are skipped.
    pub x_log: bool,
    /// Fixed y range instead of one fitted to the data (e.g. accuracy in [0, 1]).
    pub y_range: Option<(f64, f64)>,
}

/// Colours of successive series (colour-blind-safe palette, Okabe–Ito).
const PALETTE: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
];

/// How every chart of a document is drawn (the defaults are [`svg_document`]'s).
#[derive(Clone, Debug, PartialEq)]
pub struct PlotOptions {
    /// A marker on every point. Off for dense curves (a ROC curve has a point per
    /// distinct score), whose lines then carry the data alone.
    pub markers: bool,
    /// A dashed `y = x` line over the part of the plot where both axes overlap (the
    /// ROC curve of a detector that guesses). Linear x axes only.
    pub diagonal: bool,
    /// Fixed x range (no padding), like `Chart::y_range`.
    pub x_range: Option<(f64, f64)>,
}

impl Default for PlotOptions {
    fn default() -> Self {
        PlotOptions {
            markers: true,
            diagonal: false,
            x_range: None,
        }
    }
}

/// Several charts side by side in one SVG document, each `width` × `height` pixels.
pub fn svg_document(charts: &[Chart], width: u32, height: u32) -> String {
    svg_document_with(charts, width, height, &PlotOptions::default())
}

/// [`svg_document`] with drawing options.
pub fn svg_document_with(charts: &[Chart], width: u32, height: u32, opts: &PlotOptions) -> String {
    let total = width * charts.len().max(1) as u32;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{height}" viewBox="0 0 {total} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{total}" height="{height}" fill="white"/>"#
    );
    for (i, c) in charts.iter().enumerate() {
        let _ = writeln!(s, r#"<g transform="translate({} 0)">"#, i as u32 * width);
        draw_chart(&mut s, c, width as f64, height as f64, opts);
        s.push_str("</g>\n");
    }
    s.push_str("</svg>\n");
    s
}

fn draw_chart(s: &mut String, c: &Chart, w: f64, h: f64, opts: &PlotOptions) {
    // Plot area: margins for the axis labels, the title and the legend (right).
    let (left, right, top, bottom) = (64.0, 150.0, 32.0, 48.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let tx = |x: f64| if c.x_log { x.log2() } else { x };
    let points = || {
        c.series
            .iter()
            .flat_map(|se| se.points.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite() && (!c.x_log || p.0 > 0.0))
    };
    let (mut x0, mut x1) = match opts.x_range {
        Some((lo, hi)) => (tx(lo), tx(hi)),
        None => min_max(points().map(|p| tx(p.0))),
    };
    let (mut y0, mut y1) = c.y_range.unwrap_or_else(|| min_max(points().map(|p| p.1)));
    if x1 - x0 < 1e-12 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    if y1 - y0 < 1e-12 {
        (y0, y1) = (y0 - 1.0, y1 + 1.0);
    }
    if c.y_range.is_none() {
        let pad = (y1 - y0) * 0.05;
        (y0, y1) = (y0 - pad, y1 + pad);
    }
    // Markers on the first and last x stay inside the frame.
    if opts.x_range.is_none() {
        let pad = (x1 - x0) * 0.04;
        (x0, x1) = (x0 - pad, x1 + pad);
    }
    let px = |x: f64| left + (tx(x) - x0) / (x1 - x0) * pw;
    let py = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * ph;

    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        left + pw / 2.0,
        escape(&c.title)
    );
    // Grid and ticks.
    let x_ticks: Vec<f64> = if c.x_log {
        (x0.floor() as i32..=x1.ceil() as i32)
            .map(|e| 2f64.powi(e))
            .filter(|&v| tx(v) >= x0 - 1e-9 && tx(v) <= x1 + 1e-9)
            .collect()
    } else {
        nice_ticks(x0, x1)
    };
    for v in x_ticks {
        let x = px(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#e4e4e4"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 16.0,
            fmt_tick(v)
        );
    }
    for v in nice_ticks(y0, y1) {
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0,
            fmt_tick(v)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="#888"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 10.0,
        escape(&c.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        top + ph / 2.0,
        escape(&c.y_label)
    );
    if opts.diagonal && !c.x_log {
        // x0, x1 are in data units on a linear axis.
        let (lo, hi) = (x0.max(y0), x1.min(y1));
        if hi > lo {
            let _ = writeln!(
                s,
                r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="4 4"/>"##,
                px(lo),
                py(lo),
                px(hi),
                py(hi)
            );
        }
    }
    // Series and legend.
    for (i, se) in c.series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = se
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite() && (!c.x_log || p.0 > 0.0))
            .map(|&(x, y)| (px(x), py(y)))
            .collect();
        if pts.len() > 1 {
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                path.join(" ")
            );
        }
        if opts.markers {
            for (x, y) in &pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{colour}"/>"#
                );
            }
        }
        let ly = top + 8.0 + 18.0 * i as f64;
        let lx = left + pw + 12.0;
        let marker = if opts.markers {
            format!(
                r#"<circle cx="{:.1}" cy="{ly:.1}" r="3.5" fill="{colour}"/>"#,
                lx + 10.0
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"/>{marker}<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(&se.name)
        );
    }
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

/// About five round tick values (1, 2 or 5 times a power of ten apart) inside [lo, hi].
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&st| st >= raw)
        .unwrap_or(10.0 * mag);
    // Multiples of the step, computed from an integer index (no drift from summing).
    let first = (lo / step - 1e-9).ceil() as i64;
    (first..first + 20)
        .map(|k| k as f64 * step)
        .take_while(|&v| v <= hi + step * 1e-9)
        .collect()
}

fn fmt_tick(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e6 {
        format!("{v:.0}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{v:.3}")
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(x_log: bool) -> Chart {
        Chart {
            title: "ppl <vs> bytes".into(),
            x_label: "KV MiB".into(),
            y_label: "perplexity".into(),
            series: vec![
                Series {
                    name: "tova".into(),
                    points: vec![(1.0, 8.0), (2.0, 7.8), (4.0, 7.7)],
                },
                Series {
                    name: "full".into(),
                    points: vec![(8.0, 7.6)],
                },
            ],
            x_log,
            y_range: None,
        }
    }

    #[test]
    fn svg_has_every_series_and_point_and_escapes_text() {
        for log in [false, true] {
            let svg = svg_document(&[chart(log), chart(!log)], 500, 300);
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert_eq!(
                svg.matches("<polyline").count(),
                2,
                "one line per multi-point series"
            );
            // 4 points + 2 legend markers per chart.
            assert_eq!(svg.matches("<circle").count(), 12);
            assert!(svg.contains("ppl &lt;vs&gt; bytes") && !svg.contains("<vs>"));
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
    }

    #[test]
    fn degenerate_data_still_draws() {
        let empty = Chart::default();
        let svg = svg_document(&[empty], 400, 300);
        assert!(!svg.contains("NaN"));
        let mut one = chart(true);
        one.series = vec![Series {
            name: "x".into(),
            points: vec![(0.0, f64::NAN), (3.0, 1.0)],
        }];
        let svg = svg_document(&[one], 400, 300);
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn roc_style_draws_lines_without_markers_and_the_diagonal() {
        let roc = Chart {
            title: "ROC".into(),
            series: vec![Series {
                name: "detector".into(),
                points: vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)],
            }],
            y_range: Some((0.0, 1.0)),
            ..Chart::default()
        };
        let opts = PlotOptions {
            markers: false,
            diagonal: true,
            x_range: Some((0.0, 1.0)),
        };
        let svg = svg_document_with(std::slice::from_ref(&roc), 400, 300, &opts);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 0);
        assert_eq!(svg.matches("stroke-dasharray").count(), 1);
        // Fixed ranges, no padding: the diagonal runs corner to corner of the plot
        // area (left 64, top 32, 400 - 64 - 150 wide, 300 - 32 - 48 high).
        assert!(
            svg.contains(r##"x1="64.0" y1="252.0" x2="250.0" y2="32.0" stroke="#999""##),
            "{svg}"
        );
        // The curve starts in the bottom-left corner too.
        assert!(svg.contains(r#"points="64.0,252.0 "#), "{svg}");
        // The defaults are unchanged: markers, no diagonal.
        let plain = svg_document(&[roc], 400, 300);
        assert_eq!(plain.matches("<circle").count(), 5);
        assert!(!plain.contains("stroke-dasharray"));
    }

    #[test]
    fn ticks_are_round_and_inside() {
        let labels: Vec<String> = nice_ticks(0.0, 1.0).into_iter().map(fmt_tick).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        let t = nice_ticks(7.31, 8.02);
        assert!(
            t.iter().all(|&v| (7.31..=8.02).contains(&v)) && t.len() >= 3,
            "{t:?}"
        );
    }
}
