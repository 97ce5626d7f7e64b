//! The HTTP/1.1 message framing berth owns, one place for both directions (RFC 9112): how a
//! request's or a response's body ends (section 6.3), the chunked coding read (section 7.1)
//! and written, the hop-by-hop headers and what a Connection header says. berth's server
//! (downstream.rs) frames requests with it, its client (upstream.rs) responses, so a message
//! is framed one way whichever side reads it. By hand where httparse stops (it parses heads,
//! and its chunk-size parser is more lenient than a proxy may be: see `chunk_size`); hyper
//! frames bodies only while it owns the connection, which the proxy must keep (a restart
//! parks it mid-body, park.rs).

use std::io::Write as _;

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{self, HeaderMap};
use hyper::{Method, StatusCode};

use super::pieces;

/// How a message's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the connection closes (responses only).
    Close,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

impl Framing {
    /// Whether the body has been read to its end.
    pub(super) fn finished(self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunk::Done))
    }
}

/// What the framing headers say, read the same way for both directions: one
/// Transfer-Encoding line and only `chunked` (a coding this hop would drop, like the gzip of
/// `gzip, chunked`, would reach the next hop as a corrupted body; nginx refuses the others
/// too), else a Content-Length of digits only whose values agree; `None`: neither.
fn declared(headers: &HeaderMap) -> Result<Option<Framing>, Bad> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(te) = codings.next() {
        if codings.next().is_some() {
            return Err(Bad::CodingLines);
        }
        if !te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(Bad::Coding(String::from_utf8_lossy(te.as_bytes()).into()));
        }
        return Ok(Some(Framing::Chunked(Chunk::Size)));
    }
    let mut length: Option<u64> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.to_str().unwrap_or("").split(',') {
            let part = part.trim();
            // Digits only (RFC 9112 section 6.3): `+5` parses as a u64 but is not one.
            let n: u64 = part
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| part.parse().ok())
                .flatten()
                .ok_or_else(|| Bad::Length(String::from_utf8_lossy(v.as_bytes()).into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(Bad::Lengths);
            }
            length = Some(n);
        }
    }
    Ok(length.map(Framing::Length))
}

/// Framing headers no hop can read one way only.
#[derive(Debug, PartialEq, Eq)]
enum Bad {
    CodingLines,
    Coding(String),
    Length(String),
    Lengths,
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::CodingLines => write!(f, "Transfer-Encoding on more than one line"),
            Bad::Coding(te) => write!(f, "a Transfer-Encoding other than chunked ({te:?})"),
            Bad::Length(v) => write!(f, "a bad Content-Length {v:?}"),
            Bad::Lengths => write!(f, "Content-Length headers that disagree"),
        }
    }
}

/// How the body of a response with `status` to `method` ends (RFC 9112 section 6.3): a
/// Content-Length that a Transfer-Encoding overrides, or that a 204 may not have, is removed.
pub(super) fn response_framing(
    method: &Method,
    status: StatusCode,
    headers: &mut HeaderMap,
) -> Result<Framing, String> {
    if method == Method::CONNECT {
        return Err("a CONNECT tunnel is not proxied".into());
    }
    if status == StatusCode::NO_CONTENT {
        headers.remove(header::CONTENT_LENGTH);
    }
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Length(0));
    }
    match declared(headers).map_err(|e| e.to_string())? {
        Some(chunked @ Framing::Chunked(_)) => {
            headers.remove(header::CONTENT_LENGTH);
            Ok(chunked)
        }
        Some(framing) => Ok(framing),
        None => Ok(Framing::Close),
    }
}

/// How a request's body ends (RFC 9112 section 6.3), or the status refusing it: a request is
/// never delimited by the connection's end (none declared: no body). Stricter than the RFC
/// requires where another hop could read the request otherwise (nginx is too): both framing
/// headers at once, and a Transfer-Encoding on HTTP/1.0, are refused rather than repaired.
pub(super) fn request_framing(
    headers: &HeaderMap,
    http10: bool,
) -> Result<Framing, (StatusCode, String)> {
    match declared(headers) {
        Ok(Some(Framing::Chunked(_))) if http10 => Err((
            StatusCode::BAD_REQUEST,
            "Transfer-Encoding on an HTTP/1.0 request".into(),
        )),
        Ok(Some(Framing::Chunked(_))) if headers.contains_key(header::CONTENT_LENGTH) => Err((
            StatusCode::BAD_REQUEST,
            "both Content-Length and Transfer-Encoding".into(),
        )),
        Ok(framing) => Ok(framing.unwrap_or(Framing::Length(0))),
        // RFC 9112 section 6.1: a coding the server does not know is 501.
        Err(e @ Bad::Coding(_)) => Err((StatusCode::NOT_IMPLEMENTED, e.to_string())),
        Err(e) => Err((StatusCode::BAD_REQUEST, e.to_string())),
    }
}

/// One piece of a body read from `buf` by its framing (which it advances).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Piece {
    Data(Bytes),
    /// The body's end (a chunked body's trailers are read and not passed on).
    End,
    /// `buf` holds no whole piece: read more.
    More,
}

/// The next piece of a body from `buf`; trailers longer than `max_trailers` are refused.
pub(super) fn decode(
    framing: &mut Framing,
    buf: &mut BytesMut,
    max_trailers: usize,
) -> Result<Piece, String> {
    loop {
        match *framing {
            Framing::Length(0) | Framing::Chunked(Chunk::Done) => return Ok(Piece::End),
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(Piece::More);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                *framing = Framing::Length(left - n as u64);
                return Ok(Piece::Data(take(buf, n)));
            }
            Framing::Close => {
                if buf.is_empty() {
                    return Ok(Piece::More);
                }
                let n = buf.len();
                return Ok(Piece::Data(take(buf, n)));
            }
            Framing::Chunked(Chunk::Size) => match chunk_size(buf)? {
                Some((used, 0)) => {
                    buf.advance(used);
                    *framing = Framing::Chunked(Chunk::Trailers);
                }
                Some((used, size)) => {
                    buf.advance(used);
                    *framing = Framing::Chunked(Chunk::Data(size));
                }
                None => return Ok(Piece::More),
            },
            Framing::Chunked(Chunk::Data(left)) => {
                if buf.is_empty() {
                    return Ok(Piece::More);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let left = left - n as u64;
                *framing = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                return Ok(Piece::Data(take(buf, n)));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if buf.len() < 2 {
                    return Ok(Piece::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("a chunk not ended by CRLF".into());
                }
                buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => {
                // Trailer fields are not forwarded; the empty line ends the body.
                let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if buf.len() > max_trailers {
                        return Err("trailers over the head limit".into());
                    }
                    return Ok(Piece::More);
                };
                // Each trailer line is a field (`name: value`), not any bytes: a looser
                // reading could take another hop's next message for a trailer.
                if eol > 0 && !trailer_field(&buf[..eol]) {
                    return Err("a malformed trailer field".into());
                }
                buf.advance(eol + 2);
                if eol == 0 {
                    *framing = Framing::Chunked(Chunk::Done);
                }
            }
        }
    }
}

/// One chunk of `data` into `out` (none for no data: an empty chunk would end the body).
pub(super) fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, with no trailers.
pub(super) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A chunk-size line at the start of `buf` (RFC 9112 section 7.1): its length with the CRLF,
/// and the size; `None` while incomplete. By hand, because httparse's takes a bare LF, a line
/// without digits and control bytes in an extension, any of which another hop may read as a
/// different boundary.
pub(super) fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, &'static str> {
    const MAX_LINE: usize = 1024;
    let Some(lf) = buf.iter().take(MAX_LINE).position(|b| *b == b'\n') else {
        if buf.len() >= MAX_LINE {
            return Err("a chunk-size line over 1 KiB");
        }
        return Ok(None);
    };
    let Some(line) = buf[..lf].strip_suffix(b"\r") else {
        return Err("a chunk-size line ended by a bare LF");
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("a chunk-size line without a size");
    }
    if digits > 16 {
        return Err("a chunk size over 64 bits");
    }
    let ext = &line[digits..];
    let ext_ok = ext.iter().all(|b| *b == b'\t' || (b' '..0x7f).contains(b))
        && matches!(ext.trim_ascii_start().first(), None | Some(b';'));
    if !ext_ok {
        return Err("a bad chunk extension");
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| "a bad chunk size")?;
    let size = u64::from_str_radix(text, 16).map_err(|_| "a bad chunk size")?;
    Ok(Some((lf + 1, size)))
}

/// Whether `line` (without its CRLF) is a field line: a token, a colon, then a value without
/// control bytes but HTAB (RFC 9110 section 5).
pub(super) fn trailer_field(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|b| *b == b':') else {
        return false;
    };
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    colon > 0
        && line[..colon].iter().all(tchar)
        && line[colon + 1..]
            .iter()
            .all(|b| *b == b'\t' || (b' '..=b'~').contains(b) || *b >= 0x80)
}

/// The hop-by-hop headers (RFC 9110 section 7.6.1, and the old Proxy-Connection): they
/// describe one connection, not the message. The one list for both directions: berth's
/// client leaves them out of a response (Connection and Transfer-Encoding are read first),
/// and forward.rs removes them from a request.
pub(super) const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What a message's Connection headers say (downstream.rs reads the requests' with it).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Tokens {
    close: bool,
    keep_alive: bool,
    /// `upgrade`: the message asks to switch protocols (with its Upgrade header).
    pub(super) upgrade: bool,
}

impl Tokens {
    /// Reads one Connection header's value; `false` when it names other headers too
    /// (`upgrade` among them).
    pub(super) fn read(&mut self, value: &[u8]) -> bool {
        let mut only_ours = true;
        for t in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if !t.is_empty() {
                self.upgrade |= t.eq_ignore_ascii_case(b"upgrade");
                only_ours = false;
            }
        }
        only_ours
    }

    /// Whether the connection may carry another message after this one: `close` wins, and
    /// HTTP/1.0 keeps it only when asked to.
    pub(super) fn keeps_alive(self, http11: bool) -> bool {
        !self.close && (http11 || self.keep_alive)
    }
}

/// The first `n` bytes of `buf` as their own Bytes. Copied (they are few, mostly), so the
/// buffer stays whole and is reused for the next read without a new allocation.
fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    let data = pieces::copy(&buf[..n]);
    buf.advance(n);
    if buf.is_empty() {
        buf.clear();
    }
    data
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use hyper::header::{HeaderName, HeaderValue};

    use super::*;

    #[test]
    fn framing_follows_rfc_9112() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            m
        };
        let ok = StatusCode::OK;
        let cl = [("content-length", "5")];
        assert_eq!(
            response_framing(&Method::HEAD, ok, &mut h(&cl)),
            Ok(Framing::Length(0))
        );
        for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            assert_eq!(
                response_framing(&Method::GET, status, &mut h(&cl)),
                Ok(Framing::Length(0))
            );
        }
        assert_eq!(
            response_framing(&Method::GET, ok, &mut h(&cl)),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            response_framing(&Method::GET, ok, &mut h(&[("content-length", "5, 5")])),
            Ok(Framing::Length(5))
        );
        assert!(response_framing(&Method::GET, ok, &mut h(&[("content-length", "5, 6")])).is_err());
        assert!(response_framing(&Method::GET, ok, &mut h(&[("content-length", "x")])).is_err());
        assert_eq!(
            response_framing(&Method::GET, ok, &mut h(&[])),
            Ok(Framing::Close)
        );
        // Transfer-Encoding wins, and the Content-Length it overrides is not passed on.
        let mut both = h(&[("transfer-encoding", "Chunked"), ("content-length", "9")]);
        assert_eq!(
            response_framing(&Method::GET, ok, &mut both),
            Ok(Framing::Chunked(Chunk::Size))
        );
        assert!(!both.contains_key(header::CONTENT_LENGTH));
        // Codings this hop would drop, and chunked on two lines, are refused.
        for te in [&["gzip, chunked"][..], &["gzip"], &["chunked", "chunked"]] {
            let mut m = h(&[]);
            for v in te {
                m.append(header::TRANSFER_ENCODING, HeaderValue::from_static(v));
            }
            assert!(
                response_framing(&Method::GET, ok, &mut m).is_err(),
                "{te:?}"
            );
        }
        // A 204 has no body, and no Content-Length either (RFC 9110 section 8.6).
        let mut no_content = h(&cl);
        assert_eq!(
            response_framing(&Method::GET, StatusCode::NO_CONTENT, &mut no_content),
            Ok(Framing::Length(0))
        );
        assert!(no_content.is_empty());
    }

    #[test]
    fn a_requests_framing_is_read_strictly_or_refused_with_its_status() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert_eq!(request_framing(&h(&[]), false), Ok(Framing::Length(0)));
        assert_eq!(
            request_framing(&h(&[("content-length", "12")]), false),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            request_framing(&h(&[("transfer-encoding", "chunked")]), false),
            Ok(Framing::Chunked(Chunk::Size))
        );
        for (pairs, http10, code) in [
            (&[("transfer-encoding", "chunked")][..], true, 400),
            (
                &[("transfer-encoding", "chunked"), ("content-length", "3")],
                false,
                400,
            ),
            (&[("transfer-encoding", "gzip, chunked")], false, 501),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                false,
                400,
            ),
            (
                &[("content-length", "3"), ("content-length", "4")],
                false,
                400,
            ),
            (&[("content-length", "-1")], false, 400),
        ] {
            let got = request_framing(&h(pairs), http10).map_err(|(c, _)| c.as_u16());
            assert_eq!(got, Err(code), "{pairs:?}");
        }
    }

    #[test]
    fn bodies_decode_piece_by_piece_and_stop_at_their_end() {
        let mut framing = Framing::Chunked(Chunk::Size);
        let mut buf = BytesMut::from(&b"5;x=1\r\nhel"[..]);
        assert_eq!(
            decode(&mut framing, &mut buf, 64),
            Ok(Piece::Data(Bytes::from_static(b"hel")))
        );
        assert_eq!(decode(&mut framing, &mut buf, 64), Ok(Piece::More));
        buf.extend_from_slice(b"lo\r\n0\r\nX-Sum: 1\r\n\r\nNEXT");
        assert_eq!(
            decode(&mut framing, &mut buf, 64),
            Ok(Piece::Data(Bytes::from_static(b"lo")))
        );
        assert_eq!(decode(&mut framing, &mut buf, 64), Ok(Piece::End));
        assert_eq!(&buf[..], b"NEXT", "the next message is left");

        let mut framing = Framing::Length(3);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(
            decode(&mut framing, &mut buf, 64),
            Ok(Piece::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(decode(&mut framing, &mut buf, 64), Ok(Piece::End));
        assert_eq!(&buf[..], b"def");

        // Trailers past the limit, and a chunk not ended by CRLF, are errors.
        let mut framing = Framing::Chunked(Chunk::Trailers);
        let mut buf = BytesMut::from(&[b'x'; 100][..]);
        assert!(decode(&mut framing, &mut buf, 64).is_err());
        let mut framing = Framing::Chunked(Chunk::Size);
        let mut buf = BytesMut::from(&b"1\r\nabc"[..]);
        assert!(matches!(
            decode(&mut framing, &mut buf, 64),
            Ok(Piece::Data(_))
        ));
        assert!(decode(&mut framing, &mut buf, 64).is_err());

        let mut out = Vec::new();
        encode_chunk(&mut out, b"hello");
        encode_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
    }

    #[test]
    fn trailer_lines_are_fields() {
        assert!(trailer_field(b"X-Sum: abc"));
        assert!(trailer_field(b"x:"));
        for bad in [&b"\0\0"[..], b"0", b": v", b"X Y: v", b"X: a\0b"] {
            assert!(!trailer_field(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn chunk_size_lines_are_read_strictly() {
        assert_eq!(chunk_size(b"1a\r\nxx"), Ok(Some((4, 26))));
        assert_eq!(chunk_size(b"0;name=value\r\n"), Ok(Some((14, 0))));
        assert_eq!(chunk_size(b"5 ;a\r\n"), Ok(Some((6, 5))));
        assert_eq!(chunk_size(b"5;ext"), Ok(None));
        for bad in [
            &b"5\n"[..],
            b"5;a\nb\r\n",
            b";ext\r\n",
            b"\r\n",
            b"x\r\n",
            b"5 x\r\n",
            b"5;a\rb\r\n",
            b"11111111111111111\r\n",
        ] {
            assert!(
                chunk_size(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(chunk_size(&[b'5'; 2048]).is_err(), "over 1 KiB");
    }

    #[test]
    fn keep_alive_by_version_and_connection_header() {
        let with = |values: &[&str]| {
            let mut t = Tokens::default();
            let ours = values.iter().all(|v| t.read(v.as_bytes()));
            (t, ours)
        };
        assert!(Tokens::default().keeps_alive(true));
        assert!(!Tokens::default().keeps_alive(false));
        assert!(!with(&["close"]).0.keeps_alive(true));
        assert!(with(&["Keep-Alive"]).0.keeps_alive(false));
        assert!(!with(&["keep-alive", " Close "]).0.keeps_alive(true));
        assert!(!with(&["keep-alive", "close"]).0.keeps_alive(false));
        // Only a Connection that names other headers is kept, for them to be removed.
        assert!(with(&["keep-alive", "close", ""]).1);
        let (t, ours) = with(&["keep-alive, x-trace"]);
        assert!(!ours && t.keeps_alive(false));
    }
}
