//! HTML mail bodies → markdown for prompts: links, lists, tables and blockquotes kept; scripts,
//! styles, the head and tracking pixels dropped.
//!
//! Pure and total. The converter (htmd over html5ever) walks the DOM recursively, so hostile
//! nesting is measured first and too deep a document falls back to mail-parser's flat
//! HTML-to-text, which keeps no structure but cannot exhaust the stack.

use htmd::element_handler::{HandlerResult, Handlers};
use htmd::options::{BulletListMarker, HrStyle, Options};
use htmd::{Element, HtmlToMarkdown};

/// Deepest element nesting handed to the recursive converter. Real mail rarely passes 40
/// (table layouts inside table layouts); a thread's stack holds this many frames with room left.
const MAX_DEPTH: usize = 200;

/// HTML larger than this is converted flat: html5ever's tree builder is linear in most input but
/// a few hostile patterns (misnested formatting elements) cost more per byte.
const MAX_STRUCTURED_BYTES: usize = 2 << 20;

/// Converts an HTML body to markdown. Never fails; at worst the result is flat text.
pub fn to_markdown(html: &str) -> String {
    if html.len() > MAX_STRUCTURED_BYTES || nesting_depth_exceeds(html, MAX_DEPTH) {
        return mail_parser::decoders::html::html_to_text(html);
    }
    let options = Options {
        bullet_list_marker: BulletListMarker::Dash,
        ul_bullet_spacing: 1,
        ol_number_spacing: 1,
        hr_style: HrStyle::Dashes,
        ..Options::default()
    };
    let converter = HtmlToMarkdown::builder()
        .options(options)
        .skip_tags(vec![
            "head", "script", "style", "noscript", "template", "title", "meta", "link", "object",
            "embed", "iframe", "svg", "math", "form", "button", "input", "select", "textarea",
        ])
        .add_handler(vec!["img"], image_handler)
        .add_handler(vec!["a"], link_handler)
        .build();
    match converter.convert(html) {
        Ok(markdown) => tidy(&markdown),
        Err(_) => mail_parser::decoders::html::html_to_text(html),
    }
}

/// Tracking pixels, images without alt text and inline data blobs say nothing to a reader: they
/// are dropped, and other images keep their alt text (and link, when it is a URL).
fn image_handler(handlers: &dyn Handlers, element: Element<'_>) -> Option<HandlerResult> {
    let attr = |name: &str| {
        element
            .attrs
            .iter()
            .find(|attr| attr.name.local.as_ref().eq_ignore_ascii_case(name))
            .map(|attr| attr.value.to_string())
    };
    let src = attr("src").unwrap_or_default();
    let tiny = |value: Option<String>| {
        value.is_some_and(|value| {
            let value = value.trim().trim_end_matches("px");
            value == "0" || value == "1"
        })
    };
    let style = attr("style").unwrap_or_default().to_ascii_lowercase();
    let hidden = style.replace(' ', "").contains("display:none")
        || style.replace(' ', "").contains("visibility:hidden");
    if tiny(attr("width")) || tiny(attr("height")) || hidden || is_tracker_url(&src) {
        return None;
    }
    // An image says nothing to a reader but its alt text: without one it is left out, and an
    // inline one (cid:, data:) has no link worth giving.
    let alt = attr("alt").unwrap_or_default();
    if alt.trim().is_empty() {
        return None;
    }
    let scheme = src.trim_start().to_ascii_lowercase();
    if scheme.starts_with("data:") || scheme.starts_with("cid:") {
        return Some(HandlerResult::from(format!("[image: {}]", alt.trim())));
    }
    handlers.fallback(element)
}

/// A link around nothing readable (typically an image left out above) is left out too.
fn link_handler(handlers: &dyn Handlers, element: Element<'_>) -> Option<HandlerResult> {
    let link = handlers.fallback(element)?;
    (!link.content.trim_start().starts_with("[](")).then_some(link)
}

/// URL shapes of open-tracking beacons from common mailing services.
fn is_tracker_url(src: &str) -> bool {
    const PATTERNS: &[&str] = &[
        "/track/open",
        "/trk/open",
        "/open.gif",
        "/open.php",
        "/wf/open",
        "/e/o/",
        "/pixel.gif",
        "/pixel.png",
        "/beacon",
        "/o.gif",
        "tracking.gif",
        "list-manage.com/track",
        "mandrillapp.com/track",
        "sendgrid.net/wf/open",
        "mailtrack.io",
        "mixmax.com/api/track",
        "google-analytics.com/collect",
        "hubspotemail.net/e2t/to",
        "t.sidekickopen",
        "emltrk.com",
        "/email/open",
    ];
    let src = src.to_ascii_lowercase();
    PATTERNS.iter().any(|pattern| src.contains(pattern))
}

/// Trims trailing spaces and collapses runs of blank lines that layout tables leave behind.
fn tidy(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len());
    let mut blank_run = 0;
    for line in markdown.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim().to_owned()
}

/// An upper estimate of the element nesting html5ever will build, stopping as soon as it passes
/// `limit`. Elements that never nest (void elements) or that an opening sibling closes
/// implicitly (`p`, `li`, table cells) do not count; an end tag closes the innermost open
/// element of its name, as the tree builder does.
fn nesting_depth_exceeds(html: &str, limit: usize) -> bool {
    const NOT_NESTING: &[&str] = &[
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr", "p", "li", "dt", "dd", "td", "th", "tr", "option", "tbody", "thead",
        "tfoot", "colgroup", "!doctype", "param",
    ];
    let bytes = html.as_bytes();
    let mut open: Vec<String> = Vec::new();
    let mut idx = 0;
    while let Some(offset) = bytes
        .get(idx..)
        .and_then(|rest| rest.iter().position(|&b| b == b'<'))
    {
        idx += offset + 1;
        if bytes.get(idx..idx + 3) == Some(b"!--") {
            match html.get(idx..).and_then(|rest| rest.find("-->")) {
                Some(end) => {
                    idx += end + 3;
                    continue;
                }
                None => break,
            }
        }
        let closing = bytes.get(idx) == Some(&b'/');
        let name_start = if closing { idx + 1 } else { idx };
        let name: String = bytes
            .get(name_start..)
            .unwrap_or_default()
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'!' || **b == b'-')
            .take(32)
            .map(|b| char::from(b.to_ascii_lowercase()))
            .collect();
        if name.is_empty() {
            continue;
        }
        let tag_end = bytes
            .get(idx..)
            .and_then(|rest| rest.iter().position(|&b| b == b'>'))
            .map_or(bytes.len(), |end| idx + end);
        let self_closing = tag_end > 0 && bytes.get(tag_end - 1) == Some(&b'/');
        if closing {
            if let Some(position) = open.iter().rposition(|tag| *tag == name) {
                open.truncate(position);
            }
        } else if !self_closing && !NOT_NESTING.contains(&name.as_str()) {
            // Raw-text elements hold no tags; skip to their end tag.
            if matches!(name.as_str(), "script" | "style" | "textarea" | "title") {
                let end_tag = format!("</{name}");
                idx = bytes
                    .get(tag_end..)
                    .unwrap_or_default()
                    .windows(end_tag.len())
                    .position(|window| window.eq_ignore_ascii_case(end_tag.as_bytes()))
                    .map_or(bytes.len(), |end| tag_end + end);
                continue;
            }
            open.push(name);
            if open.len() > limit {
                return true;
            }
        }
        idx = tag_end;
    }
    false
}
