//! Opening one subscriber connection on a generator thread's runtime: a non-blocking TCP
//! connect from the chosen source address, the WebSocket upgrade (or the SSE `GET`), and the
//! response head. What arrives after the head stays in the returned buffer for the
//! connection's read loop.

use crate::wire::{self, Endpoint};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::net::Ipv4Addr;

/// Connects (bound to `src`), upgrades, and returns the stream with any bytes read past the
/// 101 response head.
pub async fn handshake(
    ep: &Endpoint,
    src: Option<Ipv4Addr>,
    read_buf: usize,
) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let stream = connect(ep, src).await?;
    upgrade(stream, ep, read_buf).await
}

/// The TCP connect: started non-blocking, then writability and `SO_ERROR` say how it went.
async fn connect(ep: &Endpoint, src: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    let sock = wire::start_connect(ep.addr, src, true)?;
    let std: std::net::TcpStream = sock.into();
    let stream = TcpStream::from_std(std)?;
    stream.writable(false).await?;
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd; `err`/`len` are valid out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if err != 0 {
        return Err(std::io::Error::from_raw_os_error(err));
    }
    Ok(stream)
}

/// Sends the upgrade request and reads until the response head is complete.
async fn upgrade(
    mut stream: TcpStream,
    ep: &Endpoint,
    read_buf: usize,
) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let (r, _) = stream.write_all(wire::upgrade_request(ep)).await;
    r?;
    let mut buf: Vec<u8> = Vec::with_capacity(read_buf.max(512));
    loop {
        let len = buf.len();
        if buf.capacity() - len < 256 {
            buf.reserve(4096);
        }
        let (r, slice) = stream.read(buf.slice_mut(len..)).await;
        buf = slice.into_inner();
        if r? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed during upgrade",
            ));
        }
        if let Some(res) = wire::parse_upgrade_response(&buf, ep.sse) {
            let head = res.map_err(std::io::Error::other)?;
            buf.drain(..head);
            return Ok((stream, buf));
        }
    }
}
