//! `report.html`: one self-contained page (inline CSS, no scripts, no network) that a person can
//! read at a glance: counts, per-clip decisions and reasons, the redaction verifier's results and
//! a contact sheet of the redacted frames with detections drawn as SVG boxes over them. Images are
//! referenced by their relative path (`../../frames/...`, from the version folder), so only redacted frames can appear, and the
//! page opens straight from the dataset folder.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{DatasetRecord, ManifestEntry, SelectionView, escape_xml as esc};

/// What the report is drawn from.
#[derive(Debug)]
pub struct ReportInput<'a> {
    /// The dataset record (without `files` and `seal`, which are computed after the report).
    pub record: &'a DatasetRecord,
    /// Emitted frames in manifest order.
    pub entries: &'a [&'a ManifestEntry],
    /// The selection lines.
    pub selection: &'a [SelectionView],
    /// Most frames per clip in the contact sheet.
    pub frames_per_clip: usize,
}

const CSS: &str = r#"
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2430;--mute:#667085;--line:#e4e7ec;--ok:#157f3b;--okbg:#e7f6ec;--no:#b42318;--nobg:#fdecea;--warn:#9a6700;--warnbg:#fff4d6}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
header{background:#1d2430;color:#fff;padding:20px 32px}header h1{margin:0 0 4px;font-size:22px}header p{margin:0;color:#c8ced8;font-size:13px}
code{font:12px/1.3 ui-monospace,"DejaVu Sans Mono",monospace;background:rgba(127,127,127,.14);padding:1px 4px;border-radius:4px;word-break:break-all}
main{padding:20px 32px;max-width:1400px}h2{font-size:17px;margin:28px 0 10px}h3{font-size:15px;margin:18px 0 8px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}.card b{display:block;font-size:26px}.card span{color:var(--mute);font-size:13px}
table{border-collapse:collapse;background:var(--card);border:1px solid var(--line);border-radius:10px;overflow:hidden;width:100%}
th,td{text-align:left;padding:7px 10px;border-bottom:1px solid var(--line);vertical-align:top;font-size:14px}th{background:#eef0f4;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;white-space:nowrap;padding:1px 8px;border-radius:99px;font-size:12px;font-weight:600}
.ok{background:var(--okbg);color:var(--ok)}.no{background:var(--nobg);color:var(--no)}.warn{background:var(--warnbg);color:var(--warn)}
.bar{height:10px;background:#3b82f6;border-radius:5px;min-width:2px}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:10px;overflow:hidden}
.frame{position:relative;line-height:0}.frame img{width:100%;height:auto;display:block}
.frame svg{position:absolute;left:0;top:0;width:100%;height:100%}
figcaption{padding:6px 10px;font-size:12px;color:var(--mute);display:flex;justify-content:space-between;gap:8px}
.muted{color:var(--mute)}
code.id{word-break:normal;white-space:nowrap}
"#;

/// A stable colour per class name.
fn colour(class: &str) -> String {
    let h = blake3::hash(class.as_bytes());
    let hue = u16::from_le_bytes([h.as_bytes()[0], h.as_bytes()[1]]) % 360;
    format!("hsl({hue},85%,55%)")
}

fn badge(ok: bool, yes: &str, no: &str) -> String {
    if ok {
        format!("<span class=\"badge ok\">{yes}</span>")
    } else {
        format!("<span class=\"badge no\">{no}</span>")
    }
}

/// Renders the page.
pub fn render(input: &ReportInput<'_>) -> String {
    let r = input.record;
    let mut by_clip: BTreeMap<&str, Vec<&ManifestEntry>> = BTreeMap::new();
    for e in input.entries {
        by_clip.entry(e.video_id.as_str()).or_default().push(e);
    }
    let faces: u64 = input
        .entries
        .iter()
        .map(|e| u64::from(e.redaction.faces_masked))
        .sum();
    let dets: u64 = input
        .entries
        .iter()
        .map(|e| e.detections.len() as u64)
        .sum();
    let verified = input
        .entries
        .iter()
        .filter(|e| e.redaction.verifier.passed)
        .count();
    let included = r.counts.decisions.get("include").copied().unwrap_or(0);
    let excluded = r.counts.decisions.get("exclude").copied().unwrap_or(0);

    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n<title>ClearFrame dataset report</title>\n<style>");
    s.push_str(CSS);
    s.push_str("</style>\n</head>\n<body>\n<header><h1>ClearFrame dataset report</h1>\n");
    let _ = writeln!(
        s,
        "<p>Merkle root <code>{}</code> · consent as of {} · clearframe {}</p></header>\n<main>",
        esc(&r.merkle_root),
        esc(&r.as_of),
        esc(&r.clearframe_version)
    );

    // Counts.
    s.push_str("<h2>Summary</h2>\n<div class=\"cards\">\n");
    for (n, label) in [
        (included, "clips included"),
        (excluded, "clips excluded"),
        (r.failed_clips.len() as u64, "clips failed"),
        (r.frames, "frames emitted"),
        (r.withheld.len() as u64, "frames withheld"),
        (dets, "detections"),
        (faces, "faces masked"),
        (verified as u64, "frames verified clean"),
    ] {
        let _ = writeln!(
            s,
            "<div class=\"card\"><b>{n}</b><span>{label}</span></div>"
        );
    }
    s.push_str("</div>\n");

    // Per clip.
    s.push_str("<h2>Clips</h2>\n<table>\n<tr><th>clip</th><th>decision</th><th>reasons</th><th>consent basis</th><th>frames</th><th>withheld</th><th>detections</th><th>faces masked</th><th>verifier</th></tr>\n");
    let mut seen = std::collections::BTreeSet::new();
    for line in input.selection {
        let vid = line.video_id.as_deref().unwrap_or("");
        seen.insert(vid);
        let failure = r.failed_clips.iter().find(|f| f.video_id == vid);
        let c = r.counts.clips.get(vid).cloned().unwrap_or_default();
        let decision = match (line.decision.as_str(), failure) {
            ("include", None) => "<span class=\"badge ok\">included</span>".to_string(),
            ("include", Some(_)) => {
                "<span class=\"badge warn\">included · failed</span>".to_string()
            }
            (d, _) => format!(
                "<span class=\"badge no\">{}</span>",
                esc(if d == "exclude" { "excluded" } else { d })
            ),
        };
        let mut reasons: Vec<String> = line.reasons.iter().map(|x| esc(x)).collect();
        if let Some(f) = failure {
            reasons.push(format!(
                "<b>failed</b> (<code>{}</code>): {}",
                f.code.as_str(),
                esc(&f.reason)
            ));
        }
        let basis = line.basis.as_ref().map_or_else(
            || "<span class=\"muted\">—</span>".into(),
            |b| {
                format!(
                    "{} <code class=\"id\">{}</code>",
                    esc(&b.kind),
                    esc(&b.event_id)
                )
            },
        );
        let clip_entries = by_clip.get(vid).map_or(&[][..], Vec::as_slice);
        let bad = clip_entries
            .iter()
            .filter(|e| !e.redaction.verifier.passed)
            .count();
        let verifier = if clip_entries.is_empty() {
            "<span class=\"muted\">—</span>".into()
        } else {
            badge(
                bad == 0,
                &format!(
                    "{} / {} clean",
                    clip_entries.len() - bad,
                    clip_entries.len()
                ),
                &format!("{bad} failed"),
            )
        };
        let _ = writeln!(
            s,
            "<tr><td><code class=\"id\">{}</code></td><td>{decision}</td><td>{}</td><td>{basis}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{verifier}</td></tr>",
            esc(&line.label()),
            if reasons.is_empty() {
                "<span class=\"muted\">—</span>".into()
            } else {
                reasons.join("<br>")
            },
            c.frames,
            c.withheld,
            c.detections,
            c.faces_masked
        );
    }
    s.push_str("</table>\n");
    if !r.counts.excluded_by_reason.is_empty() {
        s.push_str("<h2>Excluded by the consent gate</h2>\n<p class=\"muted\">The dataset names no excluded clip; the work folder's selection does.</p>\n<table>\n<tr><th>reason</th><th>clips</th></tr>\n");
        for (code, n) in &r.counts.excluded_by_reason {
            let _ = writeln!(
                s,
                "<tr><td><code>{}</code></td><td class=\"n\">{n}</td></tr>",
                esc(code)
            );
        }
        s.push_str("</table>\n");
    }

    // Classes.
    s.push_str("<h2>Detections per class</h2>\n");
    if r.counts.classes.is_empty() {
        s.push_str("<p class=\"muted\">No detections.</p>\n");
    } else {
        let max = r.counts.classes.values().copied().max().unwrap_or(1).max(1);
        s.push_str("<table>\n<tr><th>class</th><th>count</th><th style=\"width:60%\"></th></tr>\n");
        for (class, n) in &r.counts.classes {
            let _ = writeln!(
                s,
                "<tr><td><span class=\"badge\" style=\"background:{}\">&nbsp;</span> {}</td><td class=\"n\">{n}</td><td><div class=\"bar\" style=\"width:{:.1}%;background:{}\"></div></td></tr>",
                colour(class),
                esc(class),
                *n as f64 / max as f64 * 100.0,
                colour(class)
            );
        }
        s.push_str("</table>\n");
    }

    // Contact sheet.
    s.push_str("<h2>Contact sheet</h2>\n");
    if by_clip.is_empty() {
        s.push_str("<p class=\"muted\">No frames were emitted.</p>\n");
    }
    for (clip, entries) in &by_clip {
        let n = entries.len();
        let k = input.frames_per_clip.max(1).min(n);
        let _ = writeln!(
            s,
            "<h3><code>{}</code> <span class=\"muted\">— {k} of {n} frames</span></h3>\n<div class=\"sheet\">",
            esc(clip)
        );
        for i in 0..k {
            let e = entries[if k == 1 { 0 } else { i * (n - 1) / (k - 1) }];
            let font = (e.height as f32 / 16.0).max(10.0);
            let _ = write!(
                s,
                "<figure><div class=\"frame\"><img src=\"{}\" width=\"{}\" height=\"{}\" alt=\"{} frame {}\"><svg viewBox=\"0 0 {} {}\" preserveAspectRatio=\"none\">",
                esc(&format!("../../{}", e.path)),
                e.width,
                e.height,
                esc(clip),
                e.frame,
                e.width,
                e.height
            );
            for d in &e.detections {
                let c = colour(&d.class);
                let (x, y) = (d.bbox.x0, d.bbox.y0);
                let (w, h) = (
                    (d.bbox.x1 - d.bbox.x0).max(0.0),
                    (d.bbox.y1 - d.bbox.y0).max(0.0),
                );
                let _ = write!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"3\" vector-effect=\"non-scaling-stroke\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"{font:.0}\" font-family=\"sans-serif\" font-weight=\"700\" fill=\"{c}\" stroke=\"#000\" stroke-width=\"0.6\" paint-order=\"stroke\">{} {:.0}%</text>",
                    x + 3.0,
                    (y + font).min(e.height as f32 - 3.0),
                    esc(&d.class),
                    d.score * 100.0
                );
            }
            let _ = writeln!(
                s,
                "</svg></div><figcaption><span>frame {} · {:.2}s · faces masked: {}</span>{}</figcaption></figure>",
                e.frame,
                e.timestamp_s,
                e.redaction.faces_masked,
                badge(
                    e.redaction.verifier.passed,
                    "verified",
                    &format!("{} faces left", e.redaction.verifier.faces_found)
                )
            );
        }
        s.push_str("</div>\n");
    }

    // Withheld and failed.
    if !r.withheld.is_empty() {
        s.push_str("<h2>Withheld frames</h2>\n<table>\n<tr><th>clip</th><th>frame</th><th>reason</th></tr>\n");
        for w in &r.withheld {
            let _ = writeln!(
                s,
                "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td>{}</td></tr>",
                esc(&w.video_id),
                w.frame,
                esc(&w.reason)
            );
        }
        s.push_str("</table>\n");
    }
    let unlisted: Vec<_> = r
        .failed_clips
        .iter()
        .filter(|f| !seen.contains(f.video_id.as_str()))
        .collect();
    if !unlisted.is_empty() {
        s.push_str("<h2>Failed clips</h2>\n<ul>\n");
        for f in unlisted {
            let _ = writeln!(
                s,
                "<li><code>{}</code>: {}</li>",
                esc(&f.video_id),
                esc(&f.reason)
            );
        }
        s.push_str("</ul>\n");
    }
    let _ = writeln!(
        s,
        "<h2>Inputs</h2>\n<table>\n<tr><th>catalog blake3</th><td><code>{}</code></td></tr>\n<tr><th>ledger blake3</th><td><code>{}</code></td></tr>\n<tr><th>Merkle construction</th><td><code>{}</code></td></tr>\n</table>\n<p class=\"muted\">Check this folder with <code>clearframe verify</code>.</p>\n</main>\n</body>\n</html>",
        esc(&r.catalog_blake3),
        esc(&r.ledger_blake3),
        esc(&r.merkle)
    );
    s
}
