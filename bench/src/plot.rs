//! The SVG plot: latency distribution (percentile on a "nines" axis) above per-second
//! throughput (offered and delivered packets per second).
//!
//! Owns: chart layout. Uses plotters with only its SVG backend and line series (text is
//! emitted as SVG `<text>`, no font rasterizer is compiled in).

use std::path::Path;

use plotters::prelude::*;

use crate::report::RunResult;

/// Why the plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("plot: {0}")]
pub struct PlotError(String);

fn err(e: impl std::fmt::Display) -> PlotError {
    PlotError(e.to_string())
}

/// x position of a percentile: the number of nines, −log10(1 − p/100), capped.
fn nines(percentile: f64) -> f64 {
    let q = (1.0 - percentile / 100.0).max(1e-6);
    -q.log10()
}

fn nines_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    if p < 99.0 {
        format!("{p:.0}%")
    } else {
        // Enough digits to show the nines.
        let digits = (x - 2.0).ceil().max(0.0) as usize;
        format!("{p:.digits$}%")
    }
}

/// Draw `r` as an SVG document.
pub fn svg(r: &RunResult, title: &str) -> Result<String, PlotError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (960, 760)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (top, bottom) = root.split_vertically(380);

        let pts: Vec<(f64, f64)> = r
            .latency_curve
            .iter()
            .map(|c| (nines(c.percentile), c.latency_us))
            .collect();
        let xmax = pts.iter().map(|p| p.0).fold(2.0f64, f64::max).ceil();
        let ymax = pts.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.1;
        let mut c = ChartBuilder::on(&top)
            .caption(format!("{title}: latency distribution"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(err)?;
        c.configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (µs)")
            .x_labels(xmax as usize + 1)
            .x_label_formatter(&|x| nines_label(*x))
            .draw()
            .map_err(err)?;
        c.draw_series(LineSeries::new(pts, &BLUE))
            .map_err(err)?
            .label("latency")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        c.configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(err)?;

        let secs = &r.per_second;
        let tmax = secs.iter().map(|s| s.t).fold(1.0f64, f64::max);
        let pmax = secs
            .iter()
            .map(|s| s.offered_pps.max(s.delivered_pps))
            .fold(1.0f64, f64::max)
            * 1.1;
        let mut c = ChartBuilder::on(&bottom)
            .caption("throughput per second", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..tmax, 0f64..pmax)
            .map_err(err)?;
        c.configure_mesh()
            .x_desc("time (s)")
            .y_desc("packets/s")
            .draw()
            .map_err(err)?;
        c.draw_series(LineSeries::new(
            secs.iter().map(|s| (s.t, s.offered_pps)),
            &RED,
        ))
        .map_err(err)?
        .label("offered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        c.draw_series(LineSeries::new(
            secs.iter().map(|s| (s.t, s.delivered_pps)),
            &GREEN,
        ))
        .map_err(err)?
        .label("delivered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
        c.configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

/// Draw `r` into `path`.
pub fn write_svg(r: &RunResult, title: &str, path: &Path) -> Result<(), PlotError> {
    let s = svg(r, title)?;
    std::fs::write(path, s).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), 6.0);
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(2.0), "99%");
        assert_eq!(nines_label(3.0), "99.9%");
        assert_eq!(nines_label(4.0), "99.99%");
    }
}
