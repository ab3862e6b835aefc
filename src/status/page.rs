//! `GET /`: the status page (docs/status.md "The page"), one self-contained HTML file
//! (`page.html`: inline CSS and vanilla JS, no build chain) compiled into the binary, and
//! the Content-Security-Policy it is served with (pure).
//!
//! The policy allows exactly the page's own inline `<script>` and `<style>` by their
//! SHA-256 (CSP level 2 hashes), fetches to the same origin, and nothing else: no other
//! script, no frames, no forms, no plugins. So even if a charger id or a vendor string
//! carried markup, it could not run; the page also only ever sets `textContent`.

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The page, as served.
pub const PAGE: &str = include_str!("page.html");

/// The text between the first `<open>` and the next `</close>` tag of `html`.
fn inline<'a>(html: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = html.find(open)? + open.len();
    let len = html[start..].find(close)?;
    Some(&html[start..start + len])
}

fn sha256_source(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The Content-Security-Policy for `html`: its one inline script and one inline style
/// allowed by hash, `connect-src 'self'` for the poll, everything else `'none'`.
pub fn csp(html: &str) -> String {
    let hash = |open, close| inline(html, open, close).map_or("'none'".into(), sha256_source);
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash("<script>", "</script>"),
        hash("<style>", "</style>"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_pages_own_script_and_style_by_hash_and_nothing_else() {
        let p = csp("<style>b{}</style><script>go()</script>");
        assert!(p.starts_with("default-src 'none'; "), "{p}");
        assert!(
            p.contains(&format!("script-src {};", sha256_source("go()"))),
            "{p}"
        );
        assert!(
            p.contains(&format!("style-src {};", sha256_source("b{}"))),
            "{p}"
        );
        assert!(!p.contains("unsafe"), "{p}");
        assert_eq!(csp("<p>no script</p>").matches("'none'").count(), 6);
    }

    #[test]
    fn a_hash_is_the_base64_sha256_of_the_exact_text() {
        // echo -n 'alert(1)' | openssl dgst -sha256 -binary | base64
        assert_eq!(
            sha256_source("alert(1)"),
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"
        );
    }

    #[test]
    fn the_page_has_one_script_and_one_style_and_never_writes_markup_from_data() {
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        assert!(!PAGE.contains("innerHTML"));
        assert!(!PAGE.contains("insertAdjacentHTML"));
        assert!(!PAGE.contains("document.write"));
        assert!(PAGE.contains("name=\"viewport\""));
    }
}
