//! How an error reads to a person: its own message, then each cause, joined by ": ", so that
//! an IMDS failure says "instance metadata at http://...: ...: connection refused" instead of
//! a Debug dump. Errors keep their cause as `source` and do not repeat it in their message;
//! where one still does, the repeat is skipped here.

use std::error::Error;

/// The error and its causes on one line.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = e.source();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("reading {path}")]
        Read {
            path: String,
            source: std::io::Error,
        },
        #[error("old style: {source}")]
        Repeats { source: std::io::Error },
        #[error(transparent)]
        Wrapped(#[from] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("inner step")]
    struct Inner {
        source: std::io::Error,
    }

    fn refused() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused")
    }

    #[test]
    fn causes_follow_the_message_once() {
        let e = Outer::Read {
            path: "/etc/x".into(),
            source: refused(),
        };
        assert_eq!(chain(&e), "reading /etc/x: connection refused");
        let e = Outer::Repeats { source: refused() };
        assert_eq!(chain(&e), "old style: connection refused");
        let e = Outer::from(Inner { source: refused() });
        assert_eq!(chain(&e), "inner step: connection refused");
    }
}
