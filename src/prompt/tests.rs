use super::*;
use crate::parse::html;

#[track_caller]
fn check_quote(body: &str, marked: &str, extracted: &str) {
    let quoted = quote::split(body);
    assert_eq!(quoted.marked, marked, "marked");
    assert_eq!(quoted.extracted, extracted, "extracted");
}

#[test]
fn gmail_style_top_post_keeps_only_the_new_text() {
    check_quote(
        "Sounds good, see you then.\n\nOn Mon, 1 Jan 2024 at 10:00, Jane <jane@example.org> wrote:\n> Lunch on Friday?\n> Jane\n",
        "Sounds good, see you then.\n\n> On Mon, 1 Jan 2024 at 10:00, Jane <jane@example.org> wrote:\n> Lunch on Friday?\n> Jane",
        "Sounds good, see you then.",
    );
}

#[test]
fn an_emphasised_attribution_with_a_space_inside_the_emphasis_is_still_one() {
    // HTML conversion can leave `<b>… wrote: </b>` as `**… wrote: **`.
    check_quote(
        "Yes.\n\n**On Mon, 1 Jan 2024, Jane <jane@example.org> wrote: **\n> Lunch?\n",
        "Yes.\n\n> **On Mon, 1 Jan 2024, Jane <jane@example.org> wrote: **\n> Lunch?",
        "Yes.",
    );
    check_quote(
        "Yes.\n\nOn Mon, 1 Jan 2024, Jane Doe <jane@example.org>\n__wrote: __\n> Lunch?\n",
        "Yes.\n\n> On Mon, 1 Jan 2024, Jane Doe <jane@example.org>\n> __wrote: __\n> Lunch?",
        "Yes.",
    );
}

#[test]
fn wrapped_attribution_and_interleaved_answers() {
    check_quote(
        "On Mon, 1 Jan 2024 at 10:00, Jane Doe <jane@example.org>\nwrote:\n> Question one?\nAnswer one.\n> Question two?\nAnswer two.",
        "> On Mon, 1 Jan 2024 at 10:00, Jane Doe <jane@example.org>\n> wrote:\n> Question one?\nAnswer one.\n> Question two?\nAnswer two.",
        "Answer one.\nAnswer two.",
    );
}

#[test]
fn outlook_separators_quote_the_rest() {
    check_quote(
        "Fine.\n\n________________________________\nFrom: Bob\nSent: Monday\n\nOk?",
        "Fine.\n\n________________________________\n> From: Bob\n> Sent: Monday\n>\n> Ok?",
        "Fine.",
    );
    check_quote(
        "Approved.\n\n-----Original Message-----\nFrom: Bob\nSent: Monday\nSubject: Budget\n\nPlease approve.",
        "Approved.\n\n> -----Original Message-----\n> From: Bob\n> Sent: Monday\n> Subject: Budget\n>\n> Please approve.",
        "Approved.",
    );
    check_quote(
        "Yes.\n\n**From:** Bob <bob@example.org>\n**Sent:** Monday\n**To:** Agent\n\nShall we?",
        "Yes.\n\n> **From:** Bob <bob@example.org>\n> **Sent:** Monday\n> **To:** Agent\n>\n> Shall we?",
        "Yes.",
    );
}

#[test]
fn attribution_without_quote_marks_quotes_the_rest_and_plain_mail_is_untouched() {
    check_quote(
        "Thanks!\nAm 01.01.2024 um 10:00 schrieb Jane <jane@example.org>:\nHallo",
        "Thanks!\n> Am 01.01.2024 um 10:00 schrieb Jane <jane@example.org>:\n> Hallo",
        "Thanks!",
    );
    check_quote(
        "From now on we meet on Mondays.\nOn Friday I wrote the plan.",
        "From now on we meet on Mondays.\nOn Friday I wrote the plan.",
        "From now on we meet on Mondays.\nOn Friday I wrote the plan.",
    );
}

#[test]
fn html_keeps_structure_and_drops_noise() {
    let html = r#"<html><head><title>T</title><style>p{color:red}</style><script>alert(1)</script></head>
<body><p>Hello <a href="https://example.com/x">the link</a></p>
<ul><li>one</li><li>two</li></ul>
<table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr></table>
<blockquote>quoted words</blockquote>
<img src="https://t.example.com/open.gif?u=1" width="1" height="1">
<img src="https://list-manage.com/track/open.php?u=2">
<img src="https://cdn.example.com/logo.png" alt="Logo">
<img src="data:image/png;base64,AAAA" alt="">
<img src="cid:part1@x" alt="Chart">
<img src="https://cdn.example.com/spacer.gif">
<a href="https://example.com/banner"><img src="https://cdn.example.com/banner.png"></a>
</body></html>"#;
    let markdown = html::to_markdown(html);
    for kept in [
        "[the link](https://example.com/x)",
        "one",
        "two",
        "| k | v |",
        "> quoted words",
        "![Logo](https://cdn.example.com/logo.png)",
        "[image: Chart]",
    ] {
        assert!(
            markdown.contains(kept),
            "{kept:?} missing from:\n{markdown}"
        );
    }
    for dropped in [
        "alert",
        "color:red",
        "open.gif",
        "track/open",
        "data:",
        "T\n",
    ] {
        assert!(
            !markdown.contains(dropped),
            "{dropped:?} kept in:\n{markdown}"
        );
    }
    assert!(markdown.contains("- one\n- two"), "{markdown}");
}

#[test]
fn gmail_quote_div_becomes_quoted_text() {
    let html = r#"<div dir="ltr">Works for me.</div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon, Jan 1, 2024 at 10:00 AM Jane &lt;<a href="mailto:jane@example.org">jane@example.org</a>&gt; wrote:<br></div><blockquote class="gmail_quote">Shall we meet?</blockquote></div>"#;
    let quoted = quote::split(&html::to_markdown(html));
    assert_eq!(quoted.extracted, "Works for me.", "{}", quoted.marked);
    assert!(
        quoted.marked.contains("> Shall we meet?"),
        "{}",
        quoted.marked
    );
}

#[test]
fn hostile_html_nesting_falls_back_to_flat_text() {
    let deep = format!(
        "{}deep text{}",
        "<div>".repeat(100_000),
        "</div>".repeat(100_000)
    );
    assert!(html::to_markdown(&deep).contains("deep text"));
    let misnested = "<b><i><u><s>x".repeat(20_000);
    assert!(html::to_markdown(&misnested).contains('x'));
    let unclosed_script = "<script>".repeat(10_000);
    let _ = html::to_markdown(&unclosed_script);
    let shallow = format!("{}ok{}", "<div>".repeat(50), "</div>".repeat(50));
    assert_eq!(html::to_markdown(&shallow), "ok");
    // Just under the limit the structured converter runs, within a test thread's stack.
    let near_limit = format!(
        "{}<a href=\"https://example.com/\">near</a>",
        "<blockquote><div><ul><li><table><tr><td><span><b>".repeat(33)
    );
    assert!(html::to_markdown(&near_limit).contains("[near](https://example.com/)"));
}

#[test]
fn templates_render_and_validate() {
    let parsed = crate::parse::parse(
        b"From: Jane <jane@example.org>\r\nTo: agent@example.com\r\nSubject: Hi\r\n\r\nHello {{body}}\r\n",
    );
    let rendered = render_email(
        &Templates::default(),
        &parsed,
        "2026-04-16T12:00:00.000+00:00",
    );
    assert_eq!(
        rendered.prompt,
        "**From:** Jane <jane@example.org>\n**To:** agent@example.com\n**Date:** 2026-04-16T12:00:00.000+00:00\n**Subject:** Hi\n\nHello {{body}}\n"
    );
    let entry = |prompt, sent_by_inbox| ThreadEntry {
        prompt,
        sent_by_inbox,
    };
    let received = [entry("first", false), entry("second", false)];
    let thread = render_thread(&Templates::default(), "Hi", &received, false);
    assert!(thread.starts_with("# Thread: Hi\n"), "{thread}");
    assert!(
        thread.contains("## Email 1 of 2\n\nfirst\n\n---\n\n## Email 2 of 2\n\nsecond"),
        "{thread}"
    );
    assert!(!thread.contains("left out"), "{thread}");
    let answered = [entry("question", false), entry("answer", true)];
    let both_sides = render_thread(&Templates::default(), "Hi", &answered, false);
    assert!(
        both_sides.contains(
            "## Email 1 of 2\n\nquestion\n\n---\n\n## Email 2 of 2\n*Sent by this inbox: the agent's own reply.*\n\nanswer"
        ),
        "{both_sides}"
    );
    let cut = render_thread(&Templates::default(), "Hi", &received, true);
    assert!(
        cut.contains("\nOlder emails of this thread are left out: only the newest 2 are shown"),
        "{cut}"
    );

    assert!(Templates::from_sources(None, None, None).is_ok());
    let custom =
        Templates::from_sources(Some("{{subject}} / {{extracted_text}}".into()), None, None)
            .expect("valid");
    assert_eq!(
        render_email(&custom, &parsed, "d").prompt,
        "Hi / Hello {{body}}"
    );
    let err = Templates::from_sources(Some("{{sender}}".into()), None, None).expect_err("unknown");
    assert!(
        err.to_string().contains("prompt.md") && err.to_string().contains("sender"),
        "{err}"
    );
    assert!(Templates::from_sources(None, Some("{{emails".into()), None).is_err());
}

#[test]
fn outlook_html_reply_header_quotes_the_earlier_mail() {
    let html = r#"<div>Approved, go ahead.</div><div id="appendonsend"></div><hr style="display:inline-block;width:98%"><div id="divRplyFwdMsg" dir="ltr"><font face="Calibri"><b>From:</b> Bob &lt;bob@example.org&gt;<br><b>Sent:</b> Monday, January 1, 2024 10:00 AM<br><b>To:</b> Agent<br><b>Subject:</b> Budget</font></div><div>Please approve the budget.</div>"#;
    let quoted = quote::split(&html::to_markdown(html));
    assert_eq!(quoted.extracted, "Approved, go ahead.", "{}", quoted.marked);
    assert!(
        quoted.marked.contains("> Please approve the budget."),
        "{}",
        quoted.marked
    );
}
