//! A listener that poses as a PostgreSQL server to catch passwords: it asks
//! every client for its password in the clear (as a real server may), keeps
//! what it is sent and refuses the login. It stands for a place that
//! whoever may write a secret's value could name, to test that a password
//! only goes where it is meant to.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// PostgreSQL's request codes in a startup packet's second word.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

#[derive(Debug)]
pub struct PasswordCatcher {
    pub port: u16,
    caught: Arc<Mutex<Vec<String>>>,
}

impl PasswordCatcher {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let caught = Arc::new(Mutex::new(Vec::new()));
        let keep = caught.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Ok(password) = ask_for_password(stream) {
                    keep.lock().unwrap().push(password);
                }
            }
        });
        PasswordCatcher { port, caught }
    }

    /// Every password a client has sent so far.
    pub fn caught(&self) -> Vec<String> {
        self.caught.lock().unwrap().clone()
    }
}

fn word(stream: &mut TcpStream) -> std::io::Result<u32> {
    let mut bytes = [0u8; 4];
    stream.read_exact(&mut bytes)?;
    Ok(u32::from_be_bytes(bytes))
}

fn ask_for_password(mut stream: TcpStream) -> std::io::Result<String> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    // The startup packet, after any requests for TLS or GSS encryption,
    // each answered "no".
    loop {
        let length = word(&mut stream)? as usize;
        let code = word(&mut stream)?;
        if code == SSL_REQUEST || code == GSSENC_REQUEST {
            stream.write_all(b"N")?;
            continue;
        }
        let mut rest = vec![0u8; length.saturating_sub(8)];
        stream.read_exact(&mut rest)?;
        break;
    }
    // AuthenticationCleartextPassword.
    stream.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])?;
    let mut kind = [0u8; 1];
    stream.read_exact(&mut kind)?;
    let length = word(&mut stream)? as usize;
    let mut password = vec![0u8; length.saturating_sub(4)];
    stream.read_exact(&mut password)?;
    if kind[0] != b'p' {
        return Err(std::io::Error::other("not a password message"));
    }
    password.pop(); // its NUL
    // ErrorResponse: FATAL 28P01, as a refused password.
    let mut fields = Vec::new();
    for (tag, text) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "28P01"),
        (b'M', "password authentication failed"),
    ] {
        fields.push(tag);
        fields.extend_from_slice(text.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut error = vec![b'E'];
    error.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    error.extend_from_slice(&fields);
    stream.write_all(&error)?;
    Ok(String::from_utf8_lossy(&password).into_owned())
}
