//! The mail as markdown for an LLM: `prompt` (one mail) and `thread_prompt` (its thread, oldest
//! first), rendered from the templates in `templates/` with quoted text marked.
//!
//! Pure: templates arrive as text (embedded defaults, or files `app` read from `templates.dir`).
//! The template language is deliberately tiny, so a user can edit a template without learning
//! an engine and a broken one is caught at startup:
//! - `{{name}}` is replaced by the value of `name`;
//! - a line whose placeholders all render empty is left out (so `**Cc:** {{cc}}` disappears when
//!   there is no Cc);
//! - a line starting with `{{?name}}` is kept only when `name` is not empty, and the guard itself
//!   renders as nothing.

pub mod quote;

use crate::parse::{Mailbox, ParsedMessage};

pub const PROMPT_TEMPLATE: &str = include_str!("../templates/prompt.md");
pub const THREAD_PROMPT_TEMPLATE: &str = include_str!("../templates/thread_prompt.md");
pub const THREAD_ENTRY_TEMPLATE: &str = include_str!("../templates/thread_entry.md");

const PROMPT_FIELDS: &[&str] = &[
    "from",
    "to",
    "cc",
    "reply_to",
    "date",
    "subject",
    "body",
    "extracted_text",
    "attachments",
];
const THREAD_FIELDS: &[&str] = &["subject", "count", "emails", "earlier_left_out"];
const ENTRY_FIELDS: &[&str] = &["position", "count", "prompt", "sent_by_inbox"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("template {file}: unknown placeholder `{{{{{name}}}}}`; known: {known}")]
    UnknownPlaceholder {
        file: &'static str,
        name: String,
        known: String,
    },
    #[error("template {file}: `{{{{` without a closing `}}}}`")]
    Unclosed { file: &'static str },
}

/// One template's text; checked against the placeholders it may use when loaded.
#[derive(Debug, Clone)]
struct Template {
    source: String,
}

/// The three templates a prompt is rendered from.
#[derive(Debug, Clone)]
pub struct Templates {
    prompt: Template,
    thread_prompt: Template,
    thread_entry: Template,
}

impl Default for Templates {
    /// The templates compiled in from `templates/`; their validity is a unit test.
    fn default() -> Self {
        Self {
            prompt: Template {
                source: PROMPT_TEMPLATE.to_owned(),
            },
            thread_prompt: Template {
                source: THREAD_PROMPT_TEMPLATE.to_owned(),
            },
            thread_entry: Template {
                source: THREAD_ENTRY_TEMPLATE.to_owned(),
            },
        }
    }
}

impl Templates {
    /// Templates from user-supplied text (a `None` keeps the embedded default).
    ///
    /// # Errors
    /// [`Error`] naming the file and the placeholder it cannot fill.
    pub fn from_sources(
        prompt: Option<String>,
        thread_prompt: Option<String>,
        thread_entry: Option<String>,
    ) -> Result<Self, Error> {
        let defaults = Self::default();
        let pick = |file: &'static str, text: Option<String>, default: Template, known: &[&str]| {
            let template = text.map_or(default, |source| Template { source });
            check(file, &template.source, known)?;
            Ok::<_, Error>(template)
        };
        Ok(Self {
            prompt: pick("prompt.md", prompt, defaults.prompt, PROMPT_FIELDS)?,
            thread_prompt: pick(
                "thread_prompt.md",
                thread_prompt,
                defaults.thread_prompt,
                THREAD_FIELDS,
            )?,
            thread_entry: pick(
                "thread_entry.md",
                thread_entry,
                defaults.thread_entry,
                ENTRY_FIELDS,
            )?,
        })
    }
}

/// What the prompt of one mail shows.
pub struct Rendered {
    pub prompt: String,
    /// Only the sender's new text (quoted replies left out).
    pub extracted_text: String,
}

/// Renders one mail: a header block, the body with quoted text as blockquotes, the attachments.
pub fn render_email(templates: &Templates, parsed: &ParsedMessage, date: &str) -> Rendered {
    let list = |mailboxes: &[Mailbox]| {
        mailboxes
            .iter()
            .map(display_mailbox)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let body = parsed.body_as_text.as_deref().unwrap_or_default();
    let quoted = quote::split(body);
    let body = if quoted.marked.trim().is_empty() {
        "(no text body)".to_owned()
    } else {
        quoted.marked
    };
    let attachments = parsed
        .attachments
        .iter()
        .map(|attachment| {
            format!(
                "- {} ({}, {} bytes)",
                attachment.filename.as_deref().unwrap_or("(unnamed)"),
                attachment.content_type,
                attachment.size
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let from = parsed
        .from
        .as_ref()
        .map(display_mailbox)
        .unwrap_or_default();
    let subject = match parsed.subject.as_deref().map(str::trim) {
        Some(subject) if !subject.is_empty() => subject.to_owned(),
        _ => "(no subject)".to_owned(),
    };
    let prompt = render(
        &templates.prompt.source,
        &[
            ("from", &from),
            ("to", &list(&parsed.to)),
            ("cc", &list(&parsed.cc)),
            ("reply_to", &list(&parsed.reply_to)),
            ("date", date),
            ("subject", &subject),
            ("body", &body),
            ("extracted_text", &quoted.extracted),
            ("attachments", &attachments),
        ],
    );
    Rendered {
        prompt,
        extracted_text: quoted.extracted,
    }
}

/// One email of a thread as its prompt shows it.
#[derive(Debug, Clone, Copy)]
pub struct ThreadEntry<'a> {
    pub prompt: &'a str,
    /// The inbox sent it (an agent's reply): the model must read it as its own words, not as
    /// mail it received.
    pub sent_by_inbox: bool,
}

/// Renders a thread from its emails, oldest first (the current mail last); `earlier_left_out`
/// when the thread has older emails than these.
pub fn render_thread(
    templates: &Templates,
    subject: &str,
    entries: &[ThreadEntry<'_>],
    earlier_left_out: bool,
) -> String {
    let count = entries.len().to_string();
    let emails = entries
        .iter()
        .enumerate()
        .map(|(idx, entry)| {
            render(
                &templates.thread_entry.source,
                &[
                    ("position", &(idx + 1).to_string()),
                    ("count", &count),
                    ("prompt", entry.prompt.trim_end()),
                    (
                        "sent_by_inbox",
                        if entry.sent_by_inbox { "yes" } else { "" },
                    ),
                ],
            )
        })
        .collect::<Vec<_>>()
        .join("\n---\n\n");
    let subject = if subject.trim().is_empty() {
        "(no subject)"
    } else {
        subject.trim()
    };
    let mut out = render(
        &templates.thread_prompt.source,
        &[
            ("subject", subject),
            ("count", &count),
            ("emails", &emails),
            (
                "earlier_left_out",
                if earlier_left_out { "yes" } else { "" },
            ),
        ],
    );
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

fn display_mailbox(mailbox: &Mailbox) -> String {
    match &mailbox.name {
        Some(name) => format!("{name} <{}>", mailbox.address),
        None => mailbox.address.clone(),
    }
}

/// Every `{{name}}` in `source`, in order; `Err` on an unclosed `{{`.
fn placeholders(source: &str) -> Result<Vec<&str>, ()> {
    let mut names = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(())?;
        names.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    Ok(names)
}

fn check(file: &'static str, source: &str, known: &[&str]) -> Result<(), Error> {
    let names = placeholders(source).map_err(|()| Error::Unclosed { file })?;
    for name in names {
        let name = name.strip_prefix('?').unwrap_or(name);
        if !known.contains(&name) {
            return Err(Error::UnknownPlaceholder {
                file,
                name: name.to_owned(),
                known: known.join(", "),
            });
        }
    }
    Ok(())
}

/// Applies the rules in the module docs. Values are inserted verbatim, never re-scanned, so a
/// mail containing `{{body}}` cannot expand anything.
fn render(source: &str, values: &[(&str, &str)]) -> String {
    let value = |name: &str| {
        values
            .iter()
            .find(|(key, _)| *key == name)
            .map_or("", |(_, value)| *value)
    };
    let mut out =
        String::with_capacity(source.len() + values.iter().map(|(_, v)| v.len()).sum::<usize>());
    for line in source.split_inclusive('\n') {
        let mut line = line;
        if let Some(rest) = line.strip_prefix("{{?")
            && let Some(end) = rest.find("}}")
        {
            if value(rest[..end].trim()).is_empty() {
                continue;
            }
            line = &rest[end + 2..];
        }
        let Ok(names) = placeholders(line) else {
            out.push_str(line);
            continue;
        };
        if !names.is_empty() && names.iter().all(|name| value(name).is_empty()) {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find("}}") {
                Some(end) => {
                    out.push_str(value(after[..end].trim()));
                    rest = &after[end + 2..];
                }
                None => {
                    rest = &rest[start..];
                    break;
                }
            }
        }
        out.push_str(rest);
    }
    out
}

#[cfg(test)]
mod tests;
