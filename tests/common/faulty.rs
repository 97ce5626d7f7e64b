//! A faulty network in front of a real service (moto): an HTTP/1.1 stand-in on 127.0.0.1 that
//! answers the first requests with 500, or every answer late, and forwards the rest unchanged,
//! one request per connection. S3 answering 500s, or slower than berth waits, is not something
//! moto does by itself.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Faulty {
    pub url: String,
    /// Requests seen so far.
    pub requests: Arc<AtomicUsize>,
    /// Their heads (request line and headers), as they came.
    pub heads: Arc<Mutex<Vec<String>>>,
}

impl Faulty {
    /// In front of `upstream_port`: the first `fail_first` requests get 500, and every answer
    /// waits `delay` first.
    pub fn start(upstream_port: u16, fail_first: usize, delay: Duration) -> Faulty {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let (seen, kept) = (requests.clone(), heads.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (seen, kept) = (seen.clone(), kept.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, upstream_port, fail_first, delay, &seen, &kept);
                });
            }
        });
        Faulty {
            url,
            requests,
            heads,
        }
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve(
    client: TcpStream,
    upstream_port: u16,
    fail_first: usize,
    delay: Duration,
    seen: &AtomicUsize,
    heads: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    // The head, with `Connection: close` instead of whatever the client asked: one request per
    // connection keeps the forwarding a plain copy.
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if !lower.starts_with("connection:") {
            head.push_str(&line);
        }
    }
    heads.lock().unwrap().push(head.clone());
    head.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let n = seen.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(delay);
    let mut client = client;
    if n < fail_first {
        let xml = "<Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error>";
        write!(
            client,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        )?;
        return Ok(());
    }
    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port))?;
    upstream.write_all(head.as_bytes())?;
    upstream.write_all(&body)?;
    std::io::copy(&mut upstream, &mut client)?;
    Ok(())
}
