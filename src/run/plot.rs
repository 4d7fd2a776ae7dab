//! SVG charts for the run report, drawn with plotters' SVG backend (no fonts or system
//! libraries: the text is SVG `<text>` that the browser lays out).

use anyhow::{anyhow, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

pub const BLUE_: RGBColor = RGBColor(31, 119, 180);
pub const ORANGE: RGBColor = RGBColor(255, 127, 14);
pub const GREEN_: RGBColor = RGBColor(44, 160, 44);
pub const RED_: RGBColor = RGBColor(214, 39, 40);
pub const GREY: RGBColor = RGBColor(150, 150, 150);

/// One line of a line chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
    /// Marks each point with a dot (for sparse series such as evaluations).
    pub markers: bool,
    pub width: u32,
    /// Drawn lighter (a noisy per-step curve under its per-epoch mean).
    pub faint: bool,
}

/// A padded axis range over `values` (finite ones); a single value or none still gives a
/// usable range.
pub fn range(values: impl IntoIterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.into_iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1.0) {
        let d = (lo.abs() * 0.05).max(0.5);
        return (lo - d, hi + d);
    }
    (lo - span * pad, hi + span * pad)
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a chart: {e}")
}

/// Axes, labels and grid. `integer_x`: the x values are counts (epochs, steps), so its labels
/// are whole numbers and there are no more of them than integers in the range.
fn mesh<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    x_desc: &str,
    y_desc: &str,
    integer_x: Option<(f64, f64)>,
) -> Result<()> {
    let whole = |x: &f64| format!("{x:.0}");
    let mut m = chart.configure_mesh();
    m.x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(WHITE.mix(0.0));
    if let Some((x0, x1)) = integer_x {
        let count = (x1.floor() - x0.ceil() + 1.0).clamp(1.0, 10.0) as usize;
        m.x_labels(count).x_label_formatter(&whole);
    }
    m.draw().map_err(err)
}

/// A scatter plot: one circle per finite point.
pub fn scatter(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    points: &[(f64, f64)],
    size: (u32, u32),
) -> Result<String> {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let (x0, x1) = range(pts.iter().map(|p| p.0), 0.05);
    let (y0, y1) = range(pts.iter().map(|p| p.1), 0.05);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 21))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(58)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        mesh(&mut chart, x_desc, y_desc, None)?;
        chart
            .draw_series(
                pts.iter()
                    .map(|&p| Circle::new(p, 4, BLUE_.mix(0.7).filled())),
            )
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// A line chart with a legend; `y_range` fixes the y axis (correlations: -1..1); `integer_x`
/// labels the x axis with whole numbers (epochs, steps).
pub fn lines(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    y_range: Option<(f64, f64)>,
    integer_x: bool,
    size: (u32, u32),
) -> Result<String> {
    let all = || {
        series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let (x0, x1) = range(all().map(|p| p.0), 0.02);
    let (y0, y1) = y_range.unwrap_or_else(|| range(all().map(|p| p.1), 0.05));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 21))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(58)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        mesh(&mut chart, x_desc, y_desc, integer_x.then_some((x0, x1)))?;
        let mut labelled = false;
        for s in series {
            // Undefined values (a correlation of constant scores) break the line instead of
            // being drawn as a number.
            let mut segments: Vec<Vec<(f64, f64)>> = vec![vec![]];
            for &(x, y) in &s.points {
                if x.is_finite() && y.is_finite() {
                    if let Some(seg) = segments.last_mut() {
                        seg.push((x, y));
                    }
                } else if segments.last().is_some_and(|seg| !seg.is_empty()) {
                    segments.push(vec![]);
                }
            }
            let color = if s.faint {
                s.color.mix(0.35)
            } else {
                s.color.mix(1.0)
            };
            let style = color.stroke_width(s.width);
            for (i, seg) in segments.iter().filter(|seg| !seg.is_empty()).enumerate() {
                let line = LineSeries::new(seg.iter().copied(), style).point_size(if s.markers {
                    3
                } else {
                    0
                });
                let drawn = chart.draw_series(line).map_err(err)?;
                if i == 0 && !s.name.is_empty() {
                    let c = s.color;
                    drawn.label(s.name.as_str()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                    });
                    labelled = true;
                }
            }
        }
        if labelled {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(GREY)
                .label_font(("sans-serif", 16))
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_pad_and_survive_degenerate_input() {
        assert_eq!(range([0.0, 10.0], 0.1), (-1.0, 11.0));
        assert_eq!(range([2.0, 2.0], 0.1), (1.5, 2.5));
        assert_eq!(range([f64::NAN], 0.1), (0.0, 1.0));
        assert_eq!(range([], 0.1), (0.0, 1.0));
        assert_eq!(range([f64::INFINITY, 1.0, 3.0], 0.0), (1.0, 3.0));
    }

    #[test]
    fn scatter_draws_one_circle_per_finite_point() {
        let pts = [(1.0, 2.0), (2.0, 3.5), (f64::NAN, 1.0), (4.0, 0.5)];
        let svg = scatter("t & tau = 0.5", "x", "y", &pts, (400, 300)).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..50]);
        assert_eq!(svg.matches("<circle").count(), 3);
        // The title is escaped text, not markup.
        assert!(svg.contains("t &amp; tau = 0.5"));
    }

    #[test]
    fn lines_break_at_undefined_values() {
        let s = Series {
            name: "tau".into(),
            points: vec![(0.0, 0.1), (1.0, f64::NAN), (2.0, 0.3), (3.0, 0.4)],
            color: BLUE_,
            markers: true,
            width: 2,
            faint: false,
        };
        let svg = lines("c", "epoch", "r", &[s], Some((-1.0, 1.0)), true, (400, 300)).unwrap();
        // Two segments -> two polylines (one of a single point), plus the legend's line.
        assert_eq!(
            svg.matches("<polyline fill=\"none\" opacity=\"1\" stroke=\"#1F77B4\"")
                .count(),
            3
        );
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains(">\ntau\n</text>"));
    }
}
