//! A note panel's Markdown as HTML. Notes are written by whoever may edit a board and read by
//! whoever may see it (a share link's visitor too), so nothing in a note may run: HTML written in
//! the note is shown as text, and a link or image goes only to `http`, `https`, `mailto` or a
//! path of this site.

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};

/// Whether a link target is one a note may carry: a web or mail address, or no scheme at all
/// (a path, a fragment). `javascript:`, `data:` and every other scheme are refused.
fn safe_target(url: &str) -> bool {
    // `//host` and `/\host` leave the site as surely as a scheme does.
    if url.starts_with("//") || url.starts_with("/\\") || url.starts_with('\\') {
        return false;
    }
    match url.find([':', '/', '?', '#']) {
        Some(i) if url.as_bytes()[i] == b':' => {
            matches!(url[..i].to_ascii_lowercase().as_str(), "http" | "https" | "mailto")
        }
        _ => true,
    }
}

fn defuse(url: CowStr<'_>) -> CowStr<'_> {
    // Browsers drop tabs and newlines inside a URL's scheme; judge the URL as they will read it.
    let cleaned: String = url.chars().filter(|c| !c.is_control() && !c.is_whitespace()).collect();
    if safe_target(&cleaned) { url } else { CowStr::Borrowed("#") }
}

/// The note as HTML, safe to put in the page as it is.
pub fn note_html(markdown: &str) -> String {
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    let events = Parser::new_ext(markdown, options).map(|event| match event {
        Event::Html(html) | Event::InlineHtml(html) => Event::Text(html),
        Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
            Event::Start(Tag::Link { link_type, dest_url: defuse(dest_url), title, id })
        }
        Event::Start(Tag::Image { link_type, dest_url, title, id }) => {
            Event::Start(Tag::Image { link_type, dest_url: defuse(dest_url), title, id })
        }
        other => other,
    });
    let mut html = String::with_capacity(markdown.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut html, events);
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_is_rendered_and_nothing_in_it_runs() {
        let html = note_html("# Runbook\n\n* **call** [ops](https://ops.example/pager)\n* [board](/boards/ops)\n");
        assert!(html.contains("<h1>Runbook</h1>"), "{html}");
        assert!(html.contains("<strong>call</strong>"), "{html}");
        assert!(html.contains(r#"<a href="https://ops.example/pager">ops</a>"#), "{html}");
        assert!(html.contains(r#"<a href="/boards/ops">board</a>"#), "{html}");
        for hostile in [
            "<script>alert(1)</script>",
            "<img src=x onerror=alert(1)>",
            "a <b onclick=alert(1)>b</b>",
            "[x](javascript:alert(1))",
            "[x](JaVaScRiPt:alert(1))",
            "[x](java\tscript:alert(1))",
            "[x](data:text/html,<script>alert(1)</script>)",
            "![x](javascript:alert(1))",
            "[x](//evil.example/)",
            "[x](/\\evil.example/)",
            "[x]\n\n[x]: vbscript:msgbox",
        ] {
            let html = note_html(hostile);
            assert!(!html.contains("<script") && !html.contains("<img src=x") && !html.contains("<b "), "{html}");
            // Every address left in the HTML is one a note may carry.
            for attr in ["href=\"", "src=\""] {
                for target in html.split(attr).skip(1) {
                    let url = &target[..target.find('"').unwrap()];
                    assert!(url == "#" || safe_target(url), "{hostile}: {html}");
                }
            }
        }
    }
}
