//! What people read: the API server shows the status message and the warnings to whoever
//! ran `kubectl`, and truncates long warnings. So each image gets one line of at most
//! [`MAX_LINE_CHARS`] characters, a reply at most [`MAX_LINES`] of them, and the details
//! (transport errors, every reason) go to the log and the audit annotations. The log's
//! lines keep the backend's reasons whole, each up to [`MAX_LOGGED_REASON_CHARS`].

use crate::workload::ContainerImage;

/// Longest warning the API server passes on whole.
pub const MAX_LINE_CHARS: usize = 256;
/// Lines in a message, or warnings in a reply; what is beyond is counted in a last line.
pub const MAX_LINES: usize = 12;
/// Longest audit annotation value.
pub const MAX_ANNOTATION_CHARS: usize = 1024;
/// Longest backend reason the log keeps whole.
pub const MAX_LOGGED_REASON_CHARS: usize = 4096;
/// Longest line about one image in the log (a few reasons of the longest kind).
pub const MAX_LOGGED_LINE_CHARS: usize = 4 * MAX_LOGGED_REASON_CHARS;
/// Longest image reference shown whole in a line; longer ones lose their middle.
const MAX_IMAGE_CHARS: usize = 160;
/// Marks where text was cut.
const ELLIPSIS: char = '\u{2026}';

/// Control characters (newlines from a backend's reasons, say) would break the one line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `text` cut to `max` characters, the cut marked with `…`.
pub fn truncated(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push(ELLIPSIS);
    cut
}

/// `image` with its middle elided when it is too long to leave room for the verdict.
fn shown_image(image: &str) -> String {
    let count = image.chars().count();
    if count <= MAX_IMAGE_CHARS {
        return image.to_owned();
    }
    // Keep the registry and repository at the front and the tag or digest at the end.
    let head: String = image.chars().take(MAX_IMAGE_CHARS / 2 - 1).collect();
    let tail: String = image.chars().skip(count - MAX_IMAGE_CHARS / 2).collect();
    format!("{head}{ELLIPSIS}{tail}")
}

/// One line about one image: `<kind> "<container>": image <image> <text>`.
pub fn image_line(image: &ContainerImage, text: &str) -> String {
    line(&format!(
        "{} {:?}: image {} {}",
        image.kind.as_str(),
        one_line(&image.container),
        shown_image(&one_line(&image.image)),
        text
    ))
}

/// The line about one image as the log keeps it: as [`image_line`], but with the image
/// whole and the text cut only past [`MAX_LOGGED_LINE_CHARS`].
pub fn logged_image_line(image: &ContainerImage, text: &str) -> String {
    truncated(
        &one_line(&format!(
            "{} {:?}: image {} {}",
            image.kind.as_str(),
            image.container,
            image.image,
            text
        )),
        MAX_LOGGED_LINE_CHARS,
    )
}

/// A backend reason as the log keeps it: at most [`MAX_LOGGED_REASON_CHARS`].
pub fn logged_reason(reason: &str) -> String {
    truncated(reason, MAX_LOGGED_REASON_CHARS)
}

/// Any text as one line of at most [`MAX_LINE_CHARS`].
pub fn line(text: &str) -> String {
    truncated(&one_line(text), MAX_LINE_CHARS)
}

/// At most [`MAX_LINES`] lines: past that, the last says how many more there are.
pub fn at_most_lines(mut lines: Vec<String>, what: &str) -> Vec<String> {
    if lines.len() > MAX_LINES {
        let more = lines.len() - (MAX_LINES - 1);
        lines.truncate(MAX_LINES - 1);
        lines.push(format!(
            "{ELLIPSIS} and {more} more {what} (the webhook's log has them all)"
        ));
    }
    lines
}

/// An audit annotation value: one line, bounded.
pub fn annotation(text: &str) -> String {
    truncated(&one_line(text), MAX_ANNOTATION_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::ContainerKind;

    fn image(name: &str) -> ContainerImage {
        ContainerImage {
            container: "app".into(),
            kind: ContainerKind::Init,
            image: name.into(),
            reference: None,
        }
    }

    #[test]
    fn a_short_line_is_kept_whole() {
        assert_eq!(
            image_line(
                &image("registry.example/app:1.4"),
                "is not pinned by digest"
            ),
            "init container \"app\": image registry.example/app:1.4 is not pinned by digest"
        );
    }

    #[test]
    fn long_reasons_are_cut_to_one_line_of_256_characters() {
        let reasons = format!("is denied: {}\nsecond line", "CVE-2026-0001, ".repeat(40));
        let line = image_line(&image("registry.example/app@sha256:abc"), &reasons);
        assert_eq!(line.chars().count(), MAX_LINE_CHARS);
        assert!(!line.contains('\n'));
        assert!(line.ends_with('…'), "{line}");
        assert!(line.starts_with(
            "init container \"app\": image registry.example/app@sha256:abc is denied: CVE-2026-0001, "
        ));
    }

    #[test]
    fn a_huge_image_reference_keeps_both_ends_and_room_for_the_verdict() {
        let name = format!(
            "registry.example/{}/app@sha256:{}",
            "deep/".repeat(60),
            "e".repeat(64)
        );
        let line = image_line(&image(&name), "is denied: unsigned");
        assert!(line.chars().count() <= MAX_LINE_CHARS, "{line}");
        assert!(line.contains("image registry.example/deep/"), "{line}");
        assert!(
            line.ends_with(&format!("{} is denied: unsigned", "e".repeat(64))),
            "{line}"
        );
    }

    #[test]
    fn the_logged_line_keeps_long_reasons_and_is_bounded() {
        let reason = format!("CVE-2026-0001 {}", "x".repeat(600));
        let line = logged_image_line(
            &image("registry.example/app@sha256:abc"),
            &format!("is denied: {reason}\nsee the report"),
        );
        assert_eq!(
            line,
            format!("init container \"app\": image registry.example/app@sha256:abc is denied: {reason} see the report")
        );
        let huge = logged_reason(&"y".repeat(10_000));
        assert_eq!(huge.chars().count(), MAX_LOGGED_REASON_CHARS);
        assert!(huge.ends_with('…'));
        let line = logged_image_line(&image("r.example/app"), &"z".repeat(40_000));
        assert_eq!(line.chars().count(), MAX_LOGGED_LINE_CHARS);
    }

    #[test]
    fn many_lines_end_with_a_count_of_the_rest() {
        let lines: Vec<String> = (0..20).map(|i| format!("line {i}")).collect();
        let kept = at_most_lines(lines, "images");
        assert_eq!(kept.len(), MAX_LINES);
        assert_eq!(kept[10], "line 10");
        assert_eq!(
            kept[11],
            "… and 9 more images (the webhook's log has them all)"
        );
        let few = at_most_lines(vec!["a".into(), "b".into()], "images");
        assert_eq!(few, ["a", "b"]);
    }

    #[test]
    fn annotations_are_bounded() {
        let text = "x".repeat(5000);
        assert_eq!(annotation(&text).chars().count(), MAX_ANNOTATION_CHARS);
        assert_eq!(annotation("a\nb"), "a b");
    }
}
