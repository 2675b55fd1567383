//! An error as the operator reads it: what failed, then why, each cause in its chain once.
//! An error's first line says what failed; its further lines, if any, say what to do. The
//! first lines of the error and its causes make one line (`what failed: cause: deeper
//! cause`) and the advice follows it, outermost first. A cause whose text is already shown
//! (an error that writes its source into its own message) is not repeated.

use std::error::Error;

/// `err` with its causes, for a fatal error or a failed check.
pub fn with_causes(err: &dyn Error) -> String {
    let mut out = String::new();
    let mut advice = Vec::new();
    // Every text written so far, whole, to tell a cause that is already shown.
    let mut shown = String::new();
    let mut next = Some(err);
    while let Some(err) = next {
        let said = err.to_string();
        if !said.is_empty() && !shown.contains(&said) {
            let (first, rest) = match said.split_once('\n') {
                Some((first, rest)) => (first, Some(rest)),
                None => (said.as_str(), None),
            };
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(first);
            advice.extend(rest.map(str::to_owned));
            shown.push_str(&said);
            shown.push('\n');
        }
        next = err.source();
    }
    for lines in advice {
        out.push('\n');
        out.push_str(&lines);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Failed {
        #[error("cannot serve metrics on 127.0.0.1:9464\n  set metrics.addr to a free address")]
        Own(#[source] io::Error),
        #[error("cannot read /etc/x: {0}")]
        Repeats(#[source] io::Error),
        #[error("cannot start")]
        Nested(#[source] Box<Failed>),
        #[error(transparent)]
        Transparent(Box<Failed>),
    }

    fn refused() -> io::Error {
        io::Error::new(io::ErrorKind::AddrInUse, "address in use")
    }

    #[test]
    fn causes_follow_what_failed_and_advice_stays_last() {
        assert_eq!(
            with_causes(&Failed::Own(refused())),
            "cannot serve metrics on 127.0.0.1:9464: address in use\n  set metrics.addr to a free address"
        );
        assert_eq!(
            with_causes(&Failed::Nested(Box::new(Failed::Own(refused())))),
            "cannot start: cannot serve metrics on 127.0.0.1:9464: address in use\n  set metrics.addr to a free address"
        );
    }

    #[test]
    fn a_cause_the_message_already_gives_is_not_repeated() {
        let err = Failed::Repeats(refused());
        assert_eq!(with_causes(&err), "cannot read /etc/x: address in use");
        let err = Failed::Nested(Box::new(Failed::Repeats(refused())));
        assert_eq!(
            with_causes(&err),
            "cannot start: cannot read /etc/x: address in use"
        );
        let err = Failed::Transparent(Box::new(Failed::Own(refused())));
        assert_eq!(
            with_causes(&err),
            "cannot serve metrics on 127.0.0.1:9464: address in use\n  set metrics.addr to a free address"
        );
    }
}
