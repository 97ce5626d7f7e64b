//! A restart that keeps its connections (`systemctl restart berth-proxy`): systemd stops this
//! process before it starts the next, so the two cannot overlap as they do on a reload
//! (handover.rs). Instead, with `--fd-store`, on SIGTERM each connection that is at a clean
//! point is parked in systemd's file descriptor store (`FDSTORE=1`; the unit's
//! `FileDescriptorStoreMax=`), which systemd keeps across a restart and passes to the next
//! proxy with the listening sockets (`LISTEN_FDNAMES`). Where each one was is written to a
//! note beside the saved route. The next proxy takes them back and goes on:
//!
//! - a kept-alive connection between requests: served again;
//! - a request sent to its backend, body and all, with no answer yet (a long poll): its
//!   answer read from the same backend connection, then the connection served again;
//! - a response body on its way (an SSE stream, a download): the rest of it, relayed from the
//!   same backend connection, framed as before, then the connection is served again;
//! - an upgraded connection (WebSocket): both sides joined again.
//!
//! So a restart waits only for what cannot be parked (a request whose body is still on its
//! way, or held for a backend), not for streams or long polls; and nothing that was parked
//! sees the restart. A plain `systemctl stop` releases the store: the parked
//! connections close, as a stop closes them anyway.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Stored descriptors' names start with this, then the parking process's token.
const PREFIX: &str = "park-";
/// The notes' names: `parked-<token>.json` beside the saved route.
const NOTE_PREFIX: &str = "parked-";

/// Where a response body from the backend is (upstream.rs's framing, as written down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum BodyAt {
    /// This many bytes are left.
    Length(u64),
    /// Chunked, before a chunk-size line.
    ChunkSize,
    /// Chunked, in a chunk's data, this many bytes left.
    ChunkData(u64),
    /// Chunked, after a chunk's data: its CRLF.
    ChunkEnd,
    /// Chunked, after the last chunk: trailer lines until an empty one.
    Trailers,
    /// Until the backend closes.
    Close,
}

/// How the rest of a body goes to the client (downstream.rs's framing, written down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum SentAs {
    Length,
    Chunked,
    Close,
}

/// A response body on its way from `backend`: where it is on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Stream {
    pub(super) backend: SocketAddr,
    pub(super) body: BodyAt,
    pub(super) sent_as: SentAs,
    /// The backend connection may carry another request after this body.
    pub(super) keep: bool,
    /// The client connection closes after this body.
    pub(super) close: bool,
}

/// What a parked connection was doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Kind {
    /// A client connection between requests (`fresh`: before its first one).
    Idle {
        #[serde(default)]
        fresh: bool,
    },
    /// A response body on its way (its backend connection parked too).
    Stream(Stream),
    /// A request sent to a backend that has not begun to answer (a long poll; its backend
    /// connection parked too).
    Awaiting(Awaiting),
    /// An upgraded connection joined to `backend` (its connection parked too).
    Tunnel { backend: SocketAddr },
}

/// A request waiting for its answer's head from `backend`: what its answer needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Awaiting {
    pub(super) backend: SocketAddr,
    /// A HEAD request: its answer has no body.
    pub(super) head: bool,
    /// The client speaks HTTP/1.0.
    pub(super) http10: bool,
    /// The client connection closes after the answer.
    pub(super) close: bool,
    /// The weighted canary's bucket, for its cookie on the answer.
    pub(super) bucket: Option<u8>,
    /// What the client sent after its request (pipelined), not yet read by the server.
    #[serde(default)]
    pub(super) ahead: Vec<u8>,
}

/// One parked connection, as the note lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    n: u64,
    #[serde(flatten)]
    kind: Kind,
    /// The sockets' families (a passed descriptor is checked against it).
    #[serde(default)]
    client_v6: bool,
    #[serde(default)]
    backend_v6: bool,
}

/// The note a parking proxy leaves.
#[derive(Debug, Serialize, Deserialize)]
struct Note {
    token: String,
    entries: Vec<Entry>,
}

/// A connection taken back: what it was doing, its client side and (for streams and
/// tunnels) its backend side.
#[derive(Debug)]
pub(super) struct Resumed {
    pub(super) kind: Kind,
    pub(super) client: std::net::TcpStream,
    pub(super) backend: Option<std::net::TcpStream>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ParkError {
    #[error("cannot write the note of parked connections {path}")]
    Note {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("systemd did not take the descriptors of parked connection {n} (FDSTORE)")]
    Store { n: u64, source: std::io::Error },
}

/// The connections parked by this process, until they go to systemd at its end.
#[derive(Debug)]
pub(super) struct Lot {
    /// The note's directory; `None`: parking is off (no `--fd-store`, or no `--state`).
    dir: Option<PathBuf>,
    /// Set once the proxy parks what it can (read on the request path: one relaxed load of a
    /// line that is written once).
    requested: AtomicBool,
    token: String,
    parked: Mutex<Vec<(Entry, OwnedFd, Option<OwnedFd>)>>,
}

impl Lot {
    /// A lot whose note goes in `dir` (the saved route's directory); `None`: parking off.
    pub(super) fn new(dir: Option<PathBuf>) -> Lot {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Lot {
            dir,
            token: format!("{:x}{nanos:08x}", std::process::id()),
            requested: AtomicBool::new(false),
            parked: Mutex::default(),
        }
    }

    /// From now on, connections park at their next clean point.
    pub(super) fn request(&self) {
        if self.enabled() {
            self.requested.store(true, Ordering::Relaxed);
        }
    }

    pub(super) fn requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// Whether connections can be parked here at all.
    pub(super) fn enabled(&self) -> bool {
        self.dir.is_some()
    }

    /// Takes a connection to be handed to systemd at the end.
    pub(super) fn park(
        &self,
        kind: Kind,
        client: tokio::net::TcpStream,
        backend: Option<tokio::net::TcpStream>,
    ) -> std::io::Result<()> {
        let v6 = |s: &tokio::net::TcpStream| s.local_addr().map(|a| a.is_ipv6());
        let client_v6 = v6(&client)?;
        let backend_v6 = match &backend {
            Some(b) => v6(b)?,
            None => false,
        };
        let client: OwnedFd = client.into_std()?.into();
        let backend: Option<OwnedFd> = match backend {
            Some(b) => Some(b.into_std()?.into()),
            None => None,
        };
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let n = parked.len() as u64;
        let entry = Entry {
            n,
            kind,
            client_v6,
            backend_v6,
        };
        parked.push((entry, client, backend));
        Ok(())
    }

    /// How many connections of each kind are parked.
    pub(super) fn counts(&self) -> Counts {
        let parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        count(parked.iter().map(|(e, _, _)| &e.kind))
    }

    /// Writes the note, then hands every parked descriptor to systemd; how many connections.
    /// The note first: a next proxy that finds descriptors finds their note too.
    pub(super) fn store(&self) -> Result<usize, ParkError> {
        let Some(dir) = &self.dir else { return Ok(0) };
        let parked = std::mem::take(&mut *self.parked.lock().unwrap_or_else(|e| e.into_inner()));
        if parked.is_empty() {
            return Ok(0);
        }
        let note = Note {
            token: self.token.clone(),
            entries: parked.iter().map(|(e, _, _)| e.clone()).collect(),
        };
        let path = dir.join(format!("{NOTE_PREFIX}{}.json", self.token));
        write_note(&path, &note).map_err(|source| ParkError::Note {
            path: path.clone(),
            source,
        })?;
        for (entry, client, backend) in &parked {
            let n = entry.n;
            let store = |side: &str, fd: &OwnedFd| {
                let name = format!("{PREFIX}{}-{n}-{side}", self.token);
                sd_notify::notify_with_fds(
                    &[
                        sd_notify::NotifyState::FdStore,
                        sd_notify::NotifyState::FdName(&name),
                        // Kept even if the peer hangs up meanwhile: the next proxy sees it.
                        sd_notify::NotifyState::Custom("FDPOLL=0"),
                    ],
                    &[fd.as_fd()],
                )
                .map_err(|source| ParkError::Store { n, source })
            };
            store("c", client)?;
            if let Some(b) = backend {
                store("b", b)?;
            }
        }
        Ok(parked.len())
    }
}

/// How many parked connections of each kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts {
    /// Between requests.
    pub(super) idle: usize,
    /// A response body on its way.
    pub(super) streams: usize,
    /// A request waiting for its answer.
    pub(super) waiting: usize,
    /// Upgraded (WebSocket).
    pub(super) tunnels: usize,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} idle, {} with a body on its way, {} waiting for an answer, {} upgraded",
            self.idle, self.streams, self.waiting, self.tunnels
        )
    }
}

fn count<'a>(kinds: impl Iterator<Item = &'a Kind>) -> Counts {
    let mut c = Counts::default();
    for k in kinds {
        match k {
            Kind::Idle { .. } => c.idle += 1,
            Kind::Stream(_) => c.streams += 1,
            Kind::Awaiting(_) => c.waiting += 1,
            Kind::Tunnel { .. } => c.tunnels += 1,
        }
    }
    c
}

/// What was taken back, by kind.
pub(super) fn counted(resumed: &[Resumed]) -> Counts {
    count(resumed.iter().map(|r| &r.kind))
}

/// Written to a temporary file and renamed (0600: the note names the backends).
fn write_note(path: &Path, note: &Note) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(note).map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A descriptor systemd passed, by its name.
#[derive(Debug)]
pub(super) struct Passed {
    pub(super) index: usize,
    pub(super) name: String,
}

/// The descriptors systemd passed from the store: those named as parked ones.
pub(super) fn passed(names: Option<&str>) -> Vec<Passed> {
    names
        .unwrap_or("")
        .split(':')
        .enumerate()
        .filter(|(_, n)| n.starts_with(PREFIX))
        .map(|(index, name)| Passed {
            index,
            name: name.to_string(),
        })
        .collect()
}

/// Takes back the connections parked by the proxies before this one: each note in `dir`
/// with the descriptors systemd passed under its token (`take` gets the passed descriptor at
/// an index, of an IPv6 socket or not). Every passed name is removed from systemd's store (else it would pass them
/// again, and keep each connection open for good), and the notes deleted. A descriptor
/// without a note, or a note without its descriptors, is let go.
pub(super) fn take_back(
    dir: Option<&Path>,
    passed: &[Passed],
    mut take: impl FnMut(usize, bool) -> Option<std::net::TcpStream>,
) -> Vec<Resumed> {
    for p in passed {
        let removed = sd_notify::notify(&[
            sd_notify::NotifyState::FdStoreRemove,
            sd_notify::NotifyState::FdName(&p.name),
        ]);
        if let Err(e) = removed {
            tracing::warn!(name = %p.name, error = %e, "cannot remove a parked descriptor from systemd's store");
        }
    }
    let Some(dir) = dir else { return vec![] };
    let mut notes = vec![];
    if let Ok(list) = std::fs::read_dir(dir) {
        for entry in list.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(NOTE_PREFIX) && name.ends_with(".json") {
                notes.push(entry.path());
            }
        }
    }
    let mut resumed = vec![];
    for path in notes {
        let note = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Note>(&b).map_err(|e| e.to_string()));
        let _ = std::fs::remove_file(&path);
        let note = match note {
            Ok(n) => n,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "a note of parked connections is unreadable: its connections are let go");
                continue;
            }
        };
        for entry in note.entries {
            let at = |side: &str| {
                let name = format!("{PREFIX}{}-{}-{side}", note.token, entry.n);
                passed.iter().find(|p| p.name == name).map(|p| p.index)
            };
            let Some(client) = at("c").and_then(|i| take(i, entry.client_v6)) else {
                continue; // the client hung up meanwhile, or systemd let it go
            };
            let backend = match entry.kind {
                Kind::Idle { .. } => None,
                _ => match at("b").and_then(|i| take(i, entry.backend_v6)) {
                    Some(b) => Some(b),
                    None => continue,
                },
            };
            resumed.push(Resumed {
                kind: entry.kind,
                client,
                backend,
            });
        }
    }
    resumed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(n: u64, kind: Kind) -> Entry {
        Entry {
            n,
            kind,
            client_v6: false,
            backend_v6: false,
        }
    }

    #[test]
    fn a_note_lists_each_kind_and_reads_back() {
        let stream = Stream {
            backend: "127.0.0.1:9000".parse().unwrap(),
            body: BodyAt::ChunkData(12),
            sent_as: SentAs::Chunked,
            keep: true,
            close: false,
        };
        let tunnel = Kind::Tunnel {
            backend: "[::1]:9001".parse().unwrap(),
        };
        let note = Note {
            token: "1f".into(),
            entries: vec![
                entry(0, Kind::Idle { fresh: false }),
                entry(1, Kind::Stream(stream)),
                entry(2, tunnel),
            ],
        };
        let text = serde_json::to_string(&note).unwrap();
        assert!(text.contains(r#""kind":"stream""#), "{text}");
        let back: Note = serde_json::from_str(&text).unwrap();
        assert_eq!(back.entries, note.entries);
        let c = count(back.entries.iter().map(|e| &e.kind));
        assert_eq!(
            c.to_string(),
            "1 idle, 1 with a body on its way, 0 waiting for an answer, 1 upgraded"
        );
    }

    #[test]
    fn only_parked_names_are_taken_from_what_systemd_passed() {
        let p = passed(Some(
            "berth-proxy.socket:berth-proxy.socket:park-1f-0-c:park-1f-1-b",
        ));
        let got: Vec<_> = p.iter().map(|p| (p.index, p.name.as_str())).collect();
        assert_eq!(got, [(2, "park-1f-0-c"), (3, "park-1f-1-b")]);
        assert!(passed(None).is_empty());
    }

    #[test]
    fn connections_come_back_by_their_notes_and_the_notes_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut sockets: Vec<Option<std::net::TcpStream>> = (0..3)
            .map(|_| Some(std::net::TcpStream::connect(addr).unwrap()))
            .collect();
        let note = Note {
            token: "ab".into(),
            entries: vec![
                entry(0, Kind::Idle { fresh: false }),
                entry(1, Kind::Tunnel { backend: addr }),
                // Its backend side was never passed: let go.
                entry(2, Kind::Tunnel { backend: addr }),
            ],
        };
        write_note(&dir.path().join("parked-ab.json"), &note).unwrap();
        std::fs::write(dir.path().join("parked-cd.json"), b"not json").unwrap();
        let names = "berth-proxy.socket:park-ab-0-c:park-ab-1-c:park-ab-1-b:park-ab-2-c";
        let p = passed(Some(names));
        // Index 1..4 are the three sockets made above, and one more.
        sockets.push(Some(std::net::TcpStream::connect(addr).unwrap()));
        let resumed = take_back(Some(dir.path()), &p, |i, v6| {
            assert!(!v6);
            sockets[i - 1].take()
        });
        let kinds: Vec<_> = resumed.iter().map(|r| r.kind.clone()).collect();
        assert_eq!(
            kinds,
            [Kind::Idle { fresh: false }, Kind::Tunnel { backend: addr }]
        );
        assert!(resumed[0].backend.is_none() && resumed[1].backend.is_some());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "notes deleted"
        );
    }
}
