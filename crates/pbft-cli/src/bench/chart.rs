//! The throughput-latency chart of a sweep, as SVG (plotters without font libraries: text is left to the
//! viewer's SVG renderer).

use std::path::Path;

use plotters::prelude::*;

use super::report::Report;

/// Draws committed requests per second (x) against p50 and p99 latency in milliseconds (y), one point per run.
pub fn draw(path: &Path, title: &str, reports: &[Report]) -> Result<(), String> {
    let points = |f: fn(&Report) -> f64| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = reports.iter().map(|r| (r.throughput_rps, f(r))).collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let p50 = points(|r| r.latency.p50_ms);
    let p99 = points(|r| r.latency.p99_ms);
    let x_max = p50.iter().map(|p| p.0).fold(0.0, f64::max).max(1.0) * 1.1;
    let y_max = p99.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
    let error = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());

    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_desc("committed requests per second")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| error(&e))?;
    for (name, data, color) in [("p50", &p50, BLUE), ("p99", &p99, RED)] {
        chart
            .draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))
            .map_err(|e| error(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(
                data.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(|e| error(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::report::{Latency, Report};
    use super::*;

    #[test]
    fn a_sweep_draws_an_svg_with_both_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.svg");
        let reports: Vec<Report> = [(100.0, 5.0, 9.0), (400.0, 8.0, 20.0), (700.0, 30.0, 90.0)]
            .iter()
            .map(|&(t, p50, p99)| Report {
                throughput_rps: t,
                latency: Latency {
                    p50_ms: p50,
                    p99_ms: p99,
                    ..Latency::default()
                },
                ..Report::default()
            })
            .collect();
        draw(&path, "test sweep", &reports).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("p99") && svg.contains("test sweep"));
        assert!(svg.matches("<circle").count() >= 6);
    }
}
