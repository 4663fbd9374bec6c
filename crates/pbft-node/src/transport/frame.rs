//! Framing: each frame is a 4-byte big-endian length followed by that many bytes. A length of zero or above the
//! configured maximum is garbage: it is refused before anything is allocated for it.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes in a frame's length prefix.
pub const HEADER_LEN: usize = 4;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced an empty frame.
    #[error("zero-length frame")]
    Empty,
    /// The length prefix announced more than the maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLong { len: u64, max: usize },
    /// The stream ended or failed (including in the middle of a frame).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Whether the peer sent something no honest replica sends (as opposed to the connection failing).
    pub fn is_garbage(&self) -> bool {
        matches!(self, FrameError::Empty | FrameError::TooLong { .. })
    }
}

/// Checks a frame length against the limit.
pub fn check_len(len: u64, max: usize) -> Result<usize, FrameError> {
    match usize::try_from(len) {
        Ok(0) => Err(FrameError::Empty),
        Ok(len) if len <= max => Ok(len),
        _ => Err(FrameError::TooLong { len, max }),
    }
}

/// Reads one frame. `Ok(None)` is a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        let read = reader.read(&mut header[filled..]).await?;
        if read == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        filled += read;
    }
    let len = check_len(u64::from(u32::from_be_bytes(header)), max)?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(Bytes::from(body)))
}

/// Writes one frame (without flushing). The caller has checked that `frame` is not empty and fits the limit, so
/// its length fits the 4-byte prefix.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(frame.len()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "frame longer than u32::MAX",
        )
    })?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(frame).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_lengths_are_garbage() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello").await.unwrap();
        write_frame(&mut wire, &[7u8; 16]).await.unwrap();
        let mut reader = wire.as_slice();
        assert_eq!(
            read_frame(&mut reader, 16).await.unwrap().unwrap(),
            &b"hello"[..]
        );
        assert_eq!(
            read_frame(&mut reader, 16).await.unwrap().unwrap(),
            &[7u8; 16][..]
        );
        assert!(read_frame(&mut reader, 16).await.unwrap().is_none());

        let mut reader: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut reader, 16).await,
            Err(FrameError::Empty)
        ));
        // Refused from the header alone: no body follows, and none is waited for.
        let mut reader: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        let err = read_frame(&mut reader, 16).await.unwrap_err();
        assert!(err.is_garbage(), "{err}");

        let mut reader: &[u8] = &[0, 0];
        let err = read_frame(&mut reader, 16).await.unwrap_err();
        assert!(
            !err.is_garbage(),
            "a truncated stream is a failed connection, not garbage"
        );
        let mut reader: &[u8] = &[0, 0, 0, 3, 1];
        assert!(!read_frame(&mut reader, 16).await.unwrap_err().is_garbage());
    }
}
