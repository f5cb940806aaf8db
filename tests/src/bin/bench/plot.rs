//! The plot the README shows: throughput of every call in every cell as
//! horizontal bars on a logarithmic axis (the calls span four orders of
//! magnitude), one group per connections × in-flight cell. Plain SVG text,
//! no plotting library.

use std::fmt::Write;

/// One bar: its group ("4 conns, 64 in flight"), call name and calls/s.
#[derive(Debug)]
pub struct Bar {
    pub group: String,
    pub call: &'static str,
    pub calls_per_second: f64,
}

const COLORS: [(&str, &str); 5] = [
    ("ping", "#7f7f7f"),
    ("get_one", "#1f77b4"),
    ("get_random", "#2ca02c"),
    ("put", "#d62728"),
    ("rotate", "#9467bd"),
];

const LEFT: f64 = 190.0;
const WIDTH: f64 = 560.0;
const BAR: f64 = 14.0;
const GAP: f64 = 14.0;
const DECADES: [f64; 6] = [1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0];

fn x(calls_per_second: f64) -> f64 {
    let (low, high) = (DECADES[0].log10(), DECADES[DECADES.len() - 1].log10());
    let value = calls_per_second.max(DECADES[0]).log10();
    LEFT + (value - low) / (high - low) * WIDTH
}

/// The SVG document of `bars`, under `title`.
pub fn svg(title: &str, bars: &[Bar]) -> String {
    let mut groups: Vec<&str> = Vec::new();
    for bar in bars {
        if !groups.contains(&bar.group.as_str()) {
            groups.push(&bar.group);
        }
    }
    let top = 50.0;
    let mut body = String::new();
    let mut y = top;
    for group in &groups {
        let members: Vec<&Bar> = bars.iter().filter(|bar| bar.group == *group).collect();
        let height = members.len() as f64 * BAR;
        let _ = writeln!(
            body,
            r#"<text x="{:.0}" y="{:.0}" text-anchor="end" font-size="12">{group}</text>"#,
            LEFT - 8.0,
            y + height / 2.0 + 4.0
        );
        for bar in members {
            let color = COLORS
                .iter()
                .find(|(call, _)| *call == bar.call)
                .map_or("#000000", |(_, color)| color);
            let end = x(bar.calls_per_second);
            let _ = writeln!(
                body,
                r#"<rect x="{LEFT}" y="{y:.0}" width="{:.1}" height="{:.0}" fill="{color}"/><text x="{:.1}" y="{:.0}" font-size="10">{:.0}</text>"#,
                end - LEFT,
                BAR - 2.0,
                end + 4.0,
                y + BAR - 4.0,
                bar.calls_per_second
            );
            y += BAR;
        }
        y += GAP;
    }
    let bottom = y;
    let mut axis = String::new();
    for decade in DECADES {
        let at = x(decade);
        let _ = writeln!(
            axis,
            r##"<line x1="{at:.1}" y1="{top}" x2="{at:.1}" y2="{bottom:.0}" stroke="#dddddd"/><text x="{at:.1}" y="{:.0}" text-anchor="middle" font-size="11">{decade:.0}</text>"##,
            bottom + 14.0
        );
    }
    let mut legend = String::new();
    for (index, (call, color)) in COLORS.iter().enumerate() {
        let at = LEFT + index as f64 * 110.0;
        let _ = writeln!(
            legend,
            r#"<rect x="{at}" y="28" width="10" height="10" fill="{color}"/><text x="{:.0}" y="37" font-size="11">{call}</text>"#,
            at + 14.0
        );
    }
    let height = bottom + 40.0;
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{:.0}" height="{height:.0}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="18" font-size="14" font-weight="bold">{title}</text>
{legend}{axis}{body}<text x="{:.0}" y="{:.0}" text-anchor="middle" font-size="11">calls per second (log scale)</text>
</svg>
"#,
        LEFT + WIDTH + 80.0,
        LEFT + WIDTH / 2.0,
        bottom + 30.0
    )
}
