//! `[templates]`: the directory of prompt templates replacing the embedded ones. Nothing to
//! validate here: the files are read and checked where they are loaded, at startup.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplatesConfig {
    /// A directory with `prompt.md`, `thread_prompt.md` and `thread_entry.md` replacing the
    /// embedded templates (a file left out keeps its default); read and checked at startup.
    pub dir: Option<String>,
}
