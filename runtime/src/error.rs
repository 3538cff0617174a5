//! One error type for the whole runtime.
//!
//! Every error renders as a single line (no trailing newline, no nested
//! "caused by" chains) because the CLI prints it as `sifrun: error: <line>`.

use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit status used when sifrun itself fails before or while setting up the
/// container (as opposed to the container command failing).
pub const EXIT_RUNTIME_FAILURE: i32 = 255;
/// Exit status for a command that exists but cannot be executed (POSIX shells use 126).
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Exit status for a command that is not found (POSIX shells use 127).
pub const EXIT_NOT_FOUND: i32 = 127;

/// A runtime error: a human readable one-line message plus the process exit
/// status the CLI should use for it.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// Broad classification, mostly to pick the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad command line input (bad `--bind`, `--env`, ...).
    Usage,
    /// The image is missing, unreadable, not a SIF or not runnable.
    Image,
    /// A system call or external tool failed.
    System,
    /// The command to run does not exist inside the container.
    CommandNotFound,
    /// The command exists but cannot be executed.
    CommandNotExecutable,
}

impl Error {
    /// Creates an error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let message: String = message.into();
        // Keep the one-line promise even when a source error contains newlines.
        let message = message.replace('\n', " ");
        Error { kind, message }
    }

    /// Shorthand for an [`ErrorKind::Usage`] error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Usage, message)
    }

    /// Shorthand for an [`ErrorKind::Image`] error.
    pub fn image(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Image, message)
    }

    /// Shorthand for an [`ErrorKind::System`] error.
    pub fn system(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::System, message)
    }

    /// The error classification.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The one-line message (without the `sifrun: error:` prefix).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Exit status `sifrun exec` uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::CommandNotFound => EXIT_NOT_FOUND,
            ErrorKind::CommandNotExecutable => EXIT_NOT_EXECUTABLE,
            _ => EXIT_RUNTIME_FAILURE,
        }
    }

    /// Encodes the error for the child→parent error pipe.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let tag = match self.kind {
            ErrorKind::Usage => 'U',
            ErrorKind::Image => 'I',
            ErrorKind::System => 'S',
            ErrorKind::CommandNotFound => 'N',
            ErrorKind::CommandNotExecutable => 'X',
        };
        format!("{tag}{}", self.message).into_bytes()
    }

    /// Decodes what [`Error::encode`] produced; garbage becomes a system error.
    pub(crate) fn decode(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let mut chars = text.chars();
        let kind = match chars.next() {
            Some('U') => ErrorKind::Usage,
            Some('I') => ErrorKind::Image,
            Some('N') => ErrorKind::CommandNotFound,
            Some('X') => ErrorKind::CommandNotExecutable,
            Some('S') => ErrorKind::System,
            _ => return Error::system(format!("container setup failed: {text}")),
        };
        Error::new(kind, chars.as_str())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Adds a human context ("mounting /dev/loop3 on /x") to low level errors.
pub trait Context<T> {
    /// Wraps the error as a [`ErrorKind::System`] error: `<context>: <cause>`.
    fn context<C: fmt::Display>(self, context: C) -> Result<T>;
    /// Like [`Context::context`] but builds the text lazily.
    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context<C: fmt::Display>(self, context: C) -> Result<T> {
        self.map_err(|e| Error::system(format!("{context}: {}", describe(&e))))
    }

    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::system(format!("{}: {}", f(), describe(&e))))
    }
}

/// Renders an error cause; nix errors print as `EPERM: Operation not permitted`
/// which is fine, io errors get their `(os error N)` suffix removed for readability.
fn describe<E: fmt::Display>(e: &E) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(pos) => s[..pos].to_string(),
        None => s,
    }
}

/// `e` with every mention of `from` (an internal path such as
/// `/proc/self/fd/N`) replaced by `to` (the path the user gave).
pub fn rename_path(e: Error, from: &std::path::Path, to: &std::path::Path) -> Error {
    let message = e
        .message()
        .replace(&from.display().to_string(), &to.display().to_string());
    Error::new(e.kind(), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_through_pipe_encoding() {
        let e = Error::new(
            ErrorKind::CommandNotFound,
            "command not found in image: foo",
        );
        let d = Error::decode(&e.encode());
        assert_eq!(d.kind(), ErrorKind::CommandNotFound);
        assert_eq!(d.message(), "command not found in image: foo");
        assert_eq!(d.exit_code(), 127);
    }

    #[test]
    fn messages_are_single_line() {
        let e = Error::system("a\nb");
        assert_eq!(e.message(), "a b");
    }

    #[test]
    fn context_strips_os_error_suffix() {
        let r: std::result::Result<(), std::io::Error> =
            Err(std::io::Error::from_raw_os_error(libc::ENOENT));
        let e = r.context("opening x").unwrap_err();
        assert_eq!(e.message(), "opening x: No such file or directory");
    }
}
