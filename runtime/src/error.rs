//! One error type for the whole runtime.
//!
//! An [`Error`] keeps what a caller may need to decide on: its
//! [`ErrorKind`] (which picks the exit status), the OS error behind it
//! ([`Error::errno`]) and the file it is about ([`Error::path`]). It is
//! rendered as one line only where it is printed (the CLI's
//! `sifrun: error: <line>`, the Slurm helper's report to srun):
//! `<path>: <what happened>`, no trailing newline, no nested "caused by"
//! chains.

use std::any::Any;
use std::fmt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit status used when sifrun itself fails before or while setting up the
/// container (as opposed to the container command failing).
pub const EXIT_RUNTIME_FAILURE: i32 = 255;
/// Exit status for a command that exists but cannot be executed (POSIX shells use 126).
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Exit status for a command that is not found (POSIX shells use 127).
pub const EXIT_NOT_FOUND: i32 = 127;

/// A runtime error.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.message())]
pub struct Error {
    kind: ErrorKind,
    /// What happened, without the path (which [`Error::message`] puts first).
    text: String,
    path: Option<PathBuf>,
    errno: Option<Errno>,
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
        let text = message.replace('\n', " ");
        Error {
            kind,
            text,
            path: None,
            errno: None,
        }
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

    /// The same error, about `path` (unless it already names a path: the
    /// innermost one is the most precise).
    pub fn at(mut self, path: impl Into<PathBuf>) -> Self {
        if self.path.is_none() {
            self.path = Some(path.into());
        }
        self
    }

    /// The same error, caused by the OS error `errno`.
    pub fn with_errno(mut self, errno: Errno) -> Self {
        self.errno = Some(errno);
        self
    }

    /// The same error shown under the name `to` when it is about `from`
    /// (an internal path such as `/proc/self/fd/N` for the file the user
    /// named `to`).
    pub fn shown_as(mut self, from: &Path, to: &Path) -> Self {
        if self.path.as_deref() == Some(from) {
            self.path = Some(to.to_path_buf());
        }
        self
    }

    /// The error classification.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The file the error is about, when it is about one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The OS error behind it, when there is one.
    pub fn errno(&self) -> Option<Errno> {
        self.errno
    }

    /// The one-line message (without the `sifrun: error:` prefix):
    /// `<path>: <what happened>`.
    pub fn message(&self) -> String {
        match &self.path {
            Some(p) => format!("{}: {}", p.display(), self.text),
            None => self.text.clone(),
        }
    }

    /// Exit status `sifrun exec` uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::CommandNotFound => EXIT_NOT_FOUND,
            ErrorKind::CommandNotExecutable => EXIT_NOT_EXECUTABLE,
            _ => EXIT_RUNTIME_FAILURE,
        }
    }

    /// Encodes the error for the child→parent error pipe: the kind and the
    /// rendered line (the parent only reports it).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let tag = match self.kind {
            ErrorKind::Usage => 'U',
            ErrorKind::Image => 'I',
            ErrorKind::System => 'S',
            ErrorKind::CommandNotFound => 'N',
            ErrorKind::CommandNotExecutable => 'X',
        };
        format!("{tag}{}", self.message()).into_bytes()
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

/// Adds a human context ("mounting /dev/loop3 on /x") to low level errors,
/// keeping the OS error number when the cause has one.
pub trait Context<T> {
    /// Wraps the error as a [`ErrorKind::System`] error: `<context>: <cause>`.
    fn context<C: fmt::Display>(self, context: C) -> Result<T>;
    /// Like [`Context::context`] but builds the text lazily.
    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
    /// Like [`Context::context`], about `path`: `<path>: <what>: <cause>`.
    fn context_at(self, path: &Path, what: &str) -> Result<T>;
}

impl<T, E: fmt::Display + 'static> Context<T> for std::result::Result<T, E> {
    fn context<C: fmt::Display>(self, context: C) -> Result<T> {
        self.map_err(|e| caused_by(format!("{context}"), &e))
    }

    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| caused_by(format!("{}", f()), &e))
    }

    fn context_at(self, path: &Path, what: &str) -> Result<T> {
        self.map_err(|e| caused_by(what.to_string(), &e).at(path))
    }
}

/// `<what>: <cause>` as a system error, with the cause's errno and path.
fn caused_by<E: fmt::Display + 'static>(what: String, cause: &E) -> Error {
    let any = cause as &dyn Any;
    let inner = any.downcast_ref::<Error>();
    let errno = if let Some(e) = any.downcast_ref::<std::io::Error>() {
        e.raw_os_error().map(Errno::from_raw)
    } else if let Some(e) = any.downcast_ref::<Errno>() {
        Some(*e)
    } else {
        inner.and_then(Error::errno)
    };
    let mut error = Error::system(format!("{what}: {}", describe(cause)));
    error.errno = errno;
    error
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
    fn the_path_leads_and_can_be_shown_under_the_users_name() {
        let fd = Path::new("/proc/self/fd/7");
        let e = Error::image("not a SIF image").at(fd);
        assert_eq!(e.message(), "/proc/self/fd/7: not a SIF image");
        let e = e.shown_as(fd, Path::new("app.sif"));
        assert_eq!(e.to_string(), "app.sif: not a SIF image");
        assert_eq!(e.path(), Some(Path::new("app.sif")));
    }

    #[test]
    fn context_keeps_the_errno() {
        let r: std::result::Result<(), Errno> = Err(Errno::ENOTCONN);
        let e = r.context_at(Path::new("/x"), "reading").unwrap_err();
        assert_eq!(e.errno(), Some(Errno::ENOTCONN));
        assert_eq!(e.path(), Some(Path::new("/x")));
        let io: std::result::Result<(), std::io::Error> =
            Err(std::io::Error::from_raw_os_error(libc::EACCES));
        let outer = io.context("opening").context("setting up").unwrap_err();
        assert_eq!(outer.errno(), Some(Errno::EACCES));
    }

    #[test]
    fn context_strips_os_error_suffix() {
        let r: std::result::Result<(), std::io::Error> =
            Err(std::io::Error::from_raw_os_error(libc::ENOENT));
        let e = r.context("opening x").unwrap_err();
        assert_eq!(e.message(), "opening x: No such file or directory");
    }
}
