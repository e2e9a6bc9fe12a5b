//! Quoted replies: tells the new text of a mail from the text it quotes, so an agent reads what
//! the sender wrote now and can still see what they answered.
//!
//! Pure. Works on text (plain bodies, or HTML already converted to markdown, where Gmail's
//! `gmail_quote` blockquotes and Apple's `type=cite` have become `>` lines).

use std::borrow::Cow;

/// A body split into what the sender wrote and what they quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quoted {
    /// The body with every quoted line as a markdown blockquote (`> `), attributions included.
    pub marked: String,
    /// Only the sender's new text, trimmed.
    pub extracted: String,
}

/// Splits `body` into new and quoted text.
///
/// Quoted are: lines starting with `>`; an attribution ("On … wrote:", also split over two
/// lines, and its common translations) directly before `>` lines; and everything after an
/// Outlook separator (`-----Original Message-----`, or a `From:` line followed by `Sent:`/`Date:`
/// within a few lines) or after an attribution that no `>` lines follow, because those clients
/// put the whole earlier mail below the reply without marking it line by line.
pub fn split(body: &str) -> Quoted {
    // Leading blank lines (a body that starts with an empty line) carry nothing.
    let lines: Vec<&str> = body
        .lines()
        .skip_while(|line| line.trim().is_empty())
        .collect();
    let mut quoted = vec![false; lines.len()];
    let mut idx = 0;
    while idx < lines.len() {
        let line = lines[idx];
        if is_quote_line(line) {
            quoted[idx] = true;
            idx += 1;
            continue;
        }
        if let Some(attribution_len) = attribution_at(&lines, idx) {
            let after = idx + attribution_len;
            let next_text = (after..lines.len()).find(|&next| !lines[next].trim().is_empty());
            let inline_quote = next_text.is_some_and(|next| is_quote_line(lines[next]));
            let end = if inline_quote { after } else { lines.len() };
            quoted[idx..end].iter_mut().for_each(|flag| *flag = true);
            idx = end;
            continue;
        }
        if is_outlook_separator(&lines, idx) {
            quoted[idx..].iter_mut().for_each(|flag| *flag = true);
            break;
        }
        idx += 1;
    }

    let mut marked = String::with_capacity(body.len() + lines.len() * 2);
    let mut extracted = String::new();
    for (line, is_quoted) in lines.iter().zip(&quoted) {
        if *is_quoted {
            if line.trim_start().starts_with('>') {
                marked.push_str(line);
            } else if line.trim().is_empty() {
                marked.push('>');
            } else {
                marked.push_str("> ");
                marked.push_str(line);
            }
        } else {
            marked.push_str(line);
            extracted.push_str(line);
            extracted.push('\n');
        }
        marked.push('\n');
    }
    Quoted {
        marked: marked.trim_end().to_owned(),
        extracted: strip_blank_runs(trim_trailing_rules(&extracted)),
    }
}

/// Clients put a rule (`____`, `---`, `- - -` once converted from `<hr>`) above the quoted
/// mail; at the end of the new text it belongs to the quote.
fn trim_trailing_rules(text: &str) -> &str {
    let mut text = text.trim();
    loop {
        let (rest, last) = text.rsplit_once('\n').unwrap_or(("", text));
        let is_rule = last.trim().len() >= 3
            && last
                .trim()
                .chars()
                .all(|c| matches!(c, '-' | '_' | '*' | '=' | ' '));
        if !is_rule {
            break;
        }
        text = rest.trim();
    }
    text
}

fn is_quote_line(line: &str) -> bool {
    line.trim_start().starts_with('>')
}

/// Markdown emphasis that HTML conversion leaves around header labels (`**From:**`). Borrowed
/// when there is none: every line of every body passes through here.
fn plain(line: &str) -> Cow<'_, str> {
    let trimmed = line.trim().trim_start_matches(['*', '_']);
    if trimmed.contains("**") || trimmed.contains("__") {
        Cow::Owned(trimmed.replace("**", "").replace("__", ""))
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// Whether `plain(line)` can end with the colon every attribution ends with: a cheap test that
/// spares the other lines the lowercasing and joining below. After the colon `plain` can only
/// have removed emphasis marks and whitespace, in any order (`wrote: **`).
fn may_end_attribution(line: &str) -> bool {
    line.trim_end_matches(|c: char| c.is_whitespace() || matches!(c, '*' | '_'))
        .ends_with(':')
}

/// The number of lines of an attribution starting at `idx`, if one starts there.
fn attribution_at(lines: &[&str], idx: usize) -> Option<usize> {
    let first = plain(lines[idx]);
    if first.is_empty() || first.len() > 400 {
        return None;
    }
    if may_end_attribution(lines[idx]) && is_attribution(&first) {
        return Some(1);
    }
    // Clients wrap long attributions: "On Mon, 1 Jan 2024 at 10:00, Jane Doe <jane@…>\nwrote:".
    let second = lines
        .get(idx + 1)
        .filter(|line| may_end_attribution(line))
        .map(|line| plain(line))?;
    if second.len() <= 200
        && starts_attribution(&first)
        && is_attribution(&format!("{first} {second}"))
    {
        return Some(2);
    }
    None
}

const ATTRIBUTION_STARTS: &[&str] = &["on ", "am ", "le ", "el ", "il ", "op ", "em ", "den "];
/// Verbs of attributions; the line ends with `:` after them, sometimes after the author
/// ("Am … schrieb Jane <jane@example.org>:").
const ATTRIBUTION_VERBS: &[&str] = &[
    "wrote",
    "writes",
    "schrieb",
    "a écrit",
    "escribió",
    "ha scritto",
    "schreef",
    "escreveu",
    "skrev",
];

fn starts_attribution(line: &str) -> bool {
    let lower = line.to_lowercase();
    ATTRIBUTION_STARTS
        .iter()
        .any(|start| lower.starts_with(start))
}

fn is_attribution(line: &str) -> bool {
    let lower = line.to_lowercase();
    let lower = lower.trim_end();
    let Some(before_colon) = lower.strip_suffix(':') else {
        return false;
    };
    let verb_ends = ATTRIBUTION_VERBS
        .iter()
        .any(|verb| before_colon.trim_end().ends_with(verb));
    let verb_then_author = ATTRIBUTION_VERBS.iter().any(|verb| {
        before_colon
            .rfind(verb)
            .is_some_and(|at| before_colon[at..].ends_with('>'))
    });
    (verb_ends && (starts_attribution(lower) || lower.contains('@')))
        || (verb_then_author && starts_attribution(lower))
}

fn is_outlook_separator(lines: &[&str], idx: usize) -> bool {
    let line = plain(lines[idx]);
    // Every separator below starts with a dash or with From/Von/De.
    let first = line.chars().next().and_then(|c| c.to_lowercase().next());
    if !matches!(first, Some('-' | 'f' | 'v' | 'd')) {
        return false;
    }
    let lower = line.to_lowercase();
    let dashes = lower.trim_matches(|c: char| c == '-' || c.is_whitespace());
    if lower.starts_with("-----")
        && matches!(
            dashes,
            "original message"
                | "ursprüngliche nachricht"
                | "message d'origine"
                | "mensaje original"
        )
    {
        return true;
    }
    if lower.starts_with("from:") || lower.starts_with("von:") || lower.starts_with("de :") {
        return lines
            .iter()
            .skip(idx + 1)
            .take(4)
            .map(|next| plain(next).to_lowercase())
            .any(|next| {
                next.starts_with("sent:")
                    || next.starts_with("gesendet:")
                    || next.starts_with("date:")
            });
    }
    false
}

fn strip_blank_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            if blank {
                continue;
            }
            blank = true;
        } else {
            blank = false;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.trim_end().to_owned()
}
