//! What the ambulance daemon and its diagnosis worker say to each other.
//!
//! The worker (`ambulance worker`, see `ambulance_service::worker`) is a separate, jailed
//! process that reads hostile guest memory; everything it sends back is untrusted input to
//! the daemon, and everything the daemon sends is what the worker trusts. Both ends read
//! and write these messages through this crate alone, which is small on purpose: the
//! fuzzer that attacks the protocol links it without the daemon.
//!
//! On the Unix stream socket that is the worker's standard input:
//!
//! 1. daemon → worker: one byte with the RAM descriptor attached (`SCM_RIGHTS`);
//! 2. daemon → worker: a [`Request`] as JSON, in one frame;
//! 3. worker → daemon: a [`Reply`] as JSON, in one frame.
//!
//! A frame is a little-endian `u32` length followed by that many bytes, at most
//! [`MAX_MESSAGE`].

use std::io::{Read, Write};
use std::path::PathBuf;

use ambulance_diagnose::Subject;
use ambulance_ram::RamRegion;
use ambulance_report::{Phase, Report};
use serde::{Deserialize, Serialize};

/// Largest frame either side accepts or sends.
pub const MAX_MESSAGE: usize = 256 << 20;

/// What the worker is asked to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    /// The guest, its failure, registers and registration, and the report's id.
    pub subject: Subject,
    /// Where guest RAM lies in the descriptor's file.
    pub regions: Vec<RamRegion>,
    /// The kernel ELF to read symbols and types from.
    pub debuginfo: Option<PathBuf>,
    /// Declarative rules.
    pub rules: Option<PathBuf>,
    /// Write an ELF core here (the daemon renames it into the store).
    pub core_path: Option<PathBuf>,
    /// Phases before the worker (freeze, worker start).
    pub timeline: Vec<Phase>,
}

/// The worker's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The report.
    Report(Box<Report>),
    /// Why there is none.
    Error(String),
}

/// Writes `bytes` as one frame.
pub fn write_frame(w: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|&len| len as usize <= MAX_MESSAGE)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "a message of {} bytes is larger than the {MAX_MESSAGE} a frame holds",
                    bytes.len()
                ),
            )
        })?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(bytes)
}

/// Reads one frame: its bytes, or an error for a length above [`MAX_MESSAGE`] (before
/// allocating for it) or a stream that ends inside the frame.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a message of {len} bytes is larger than the {MAX_MESSAGE} accepted"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_as_written() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"{\"error\":\"x\"}").unwrap();
        write_frame(&mut wire, b"").unwrap();
        assert_eq!(&wire[..4], &13u32.to_le_bytes());
        let mut r = &wire[..];
        assert_eq!(read_frame(&mut r).unwrap(), b"{\"error\":\"x\"}");
        assert_eq!(read_frame(&mut r).unwrap(), b"");
        assert_eq!(
            read_frame(&mut r).unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocating() {
        let wire = (MAX_MESSAGE as u32 + 1).to_le_bytes();
        let e = read_frame(&mut &wire[..]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn a_stream_cut_inside_a_frame_is_an_error() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"0123456789").unwrap();
        let e = read_frame(&mut &wire[..9]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_reply_keeps_its_wire_names() {
        let json = serde_json::to_string(&Reply::Error("no RAM".into())).unwrap();
        assert_eq!(json, r#"{"error":"no RAM"}"#);
    }
}
