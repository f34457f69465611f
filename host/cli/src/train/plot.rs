//! `cairn simulate --plot FILE.svg`: the run's timeline with a mark at every save, for a tenant
//! choosing between policies. Batches run left to right, epochs are shaded bands with their
//! numbers, and each save is a mark coloured by the event that took it (batch, epoch, iteration),
//! with the end of training drawn as a line. Plain SVG written by hand: a few dozen elements do
//! not need a plotting crate, and the file opens in any browser.

use std::fmt::Write;

use cairn::policy::Event;

use super::{PlannedSave, TrainerSpec};

const WIDTH: f64 = 960.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 24.0;
const AXIS_Y: f64 = 150.0;
const TOP: f64 = 70.0;
const HEIGHT: f64 = 230.0;

/// The colour and lane of each event's marks (lanes keep a batch save and the epoch save of the
/// same batch apart).
fn style(event: Event) -> (&'static str, f64) {
    match event {
        Event::Batch => ("#1f77b4", AXIS_Y - 18.0),
        Event::Epoch => ("#ff7f0e", AXIS_Y - 40.0),
        Event::Iteration => ("#2ca02c", AXIS_Y - 62.0),
    }
}

/// The SVG document for `saves` over a run of `total_batches` shaped by `spec`, titled `title`.
pub fn svg(saves: &[PlannedSave], spec: &TrainerSpec, total_batches: u64, title: &str) -> String {
    let total = total_batches.max(1) as f64;
    let x = |batch: u64| LEFT + (WIDTH - LEFT - RIGHT) * batch as f64 / total;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{}</text>
<text x="{LEFT}" y="44" fill="#555">{}</text>
"##,
        escape(title),
        escape(&subtitle(saves, spec, total_batches)),
    );
    epochs(&mut s, spec, total_batches, &x);
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{AXIS_Y}" x2="{}" y2="{AXIS_Y}" stroke="#333"/>"##,
        x(total_batches)
    );
    ticks(&mut s, total_batches, &x);
    for save in saves {
        let (colour, y) = style(save.tick.event);
        let px = x(save.tick.timestamp.batch);
        let t = &save.tick.timestamp;
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{y}" x2="{px:.1}" y2="{AXIS_Y}" stroke="{colour}" stroke-opacity="0.35"/><circle cx="{px:.1}" cy="{y}" r="5" fill="{colour}"><title>{} save at epoch {}, batch {}: {}</title></circle>"##,
            save.tick.event,
            t.epoch,
            t.batch,
            escape(&save.path)
        );
    }
    let end = x(total_batches);
    let _ = writeln!(
        s,
        r##"<line x1="{end:.1}" y1="{TOP}" x2="{end:.1}" y2="{AXIS_Y}" stroke="#d62728" stroke-dasharray="4 3"/><text x="{end:.1}" y="{}" text-anchor="end" fill="#d62728">end of training</text>"##,
        TOP - 6.0
    );
    legend(&mut s);
    s.push_str("</svg>\n");
    s
}

fn subtitle(saves: &[PlannedSave], spec: &TrainerSpec, total_batches: u64) -> String {
    let count = |e: Event| saves.iter().filter(|s| s.tick.event == e).count();
    format!(
        "{} over {total_batches} batches ({} per epoch, max_duration {}): batch events {}, epoch events {}, iteration events {}",
        crate::plural::count(saves.len() as u64, "save", "saves"),
        spec.batches_per_epoch,
        spec.max_duration,
        count(Event::Batch),
        count(Event::Epoch),
        count(Event::Iteration)
    )
}

/// Alternate shading per epoch, numbered; with very many epochs only every k-th is numbered.
fn epochs(s: &mut String, spec: &TrainerSpec, total_batches: u64, x: &dyn Fn(u64) -> f64) {
    let per = spec.batches_per_epoch.max(1);
    let count = total_batches.div_ceil(per);
    let label_every = count.div_ceil(24).max(1);
    for e in 0..count {
        let (a, b) = (x(e * per), x(((e + 1) * per).min(total_batches)));
        if e % 2 == 0 {
            let _ = writeln!(
                s,
                r##"<rect x="{a:.1}" y="{TOP}" width="{:.1}" height="{}" fill="#f2f2f2"/>"##,
                b - a,
                AXIS_Y - TOP
            );
        }
        if e % label_every == 0 {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#777">ep{e}</text>"##,
                (a + b) / 2.0,
                TOP + 14.0
            );
        }
    }
}

/// About ten round batch numbers under the axis.
fn ticks(s: &mut String, total_batches: u64, x: &dyn Fn(u64) -> f64) {
    let step = nice_step(total_batches);
    let mut b = 0;
    while b <= total_batches {
        let px = x(b);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{AXIS_Y}" x2="{px:.1}" y2="{}" stroke="#333"/><text x="{px:.1}" y="{}" text-anchor="middle">{b}</text>"##,
            AXIS_Y + 5.0,
            AXIS_Y + 19.0
        );
        b += step;
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">batch</text>"##,
        (LEFT + WIDTH - RIGHT) / 2.0,
        AXIS_Y + 38.0
    );
}

/// 1, 2 or 5 times a power of ten, giving at most ~10 intervals.
fn nice_step(total: u64) -> u64 {
    let raw = (total / 10).max(1);
    let mut power = 1;
    while power * 10 <= raw {
        power *= 10;
    }
    [1, 2, 5, 10]
        .into_iter()
        .map(|m| m * power)
        .find(|step| *step >= raw)
        .unwrap_or(power * 10)
}

fn legend(s: &mut String) {
    let y = HEIGHT - 14.0;
    for (i, event) in [Event::Batch, Event::Epoch, Event::Iteration]
        .into_iter()
        .enumerate()
    {
        let (colour, _) = style(event);
        let lx = LEFT + 190.0 * i as f64;
        let _ = writeln!(
            s,
            r##"<circle cx="{lx}" cy="{}" r="5" fill="{colour}"/><text x="{}" y="{y}">{event} event save</text>"##,
            y - 4.0,
            lx + 10.0
        );
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
    fn steps_are_round() {
        assert_eq!(nice_step(8), 1);
        assert_eq!(nice_step(24), 2);
        assert_eq!(nice_step(100), 10);
        assert_eq!(nice_step(130), 20);
        assert_eq!(nice_step(4000), 500);
    }

    #[test]
    fn titles_are_escaped() {
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
