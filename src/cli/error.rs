//! Why a command failed, its exit code and its line on stderr.

/// Why a command failed; decides the exit code and the message on stderr.
#[derive(Debug)]
pub enum CliError {
    /// Exit 2.
    Usage(String),
    /// Exit 1; the message is printed as is (e.g. `key not found: a`).
    NotFound(String),
    /// Exit 1 (cas compare failed).
    CompareFailed(String),
    /// Exit 1: `config validate` found an invalid file (the message is the
    /// summary, printed as `error: ...`), or `config upload` was not
    /// accepted (the file, the vote, or its content was refused).
    Invalid(String),
    /// Exit 3 (exit 1 for NOT_FOUND).
    Rpc(tonic::Status),
    /// Exit 3: no endpoint could be reached.
    Connect(String),
    /// Writing the output failed (a closed pipe exits 0 quietly).
    Io(std::io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::NotFound(_) | CliError::CompareFailed(_) | CliError::Invalid(_) => 1,
            CliError::Rpc(s) if s.code() == tonic::Code::NotFound => 1,
            CliError::Rpc(_) | CliError::Connect(_) => 3,
            CliError::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
            CliError::Io(_) => 3,
        }
    }

    /// The line for stderr, if any.
    pub fn message(&self) -> Option<String> {
        match self {
            CliError::Usage(m) | CliError::Invalid(m) => Some(format!("error: {m}")),
            CliError::NotFound(m) | CliError::CompareFailed(m) => Some(m.clone()),
            CliError::Rpc(s) => Some(format!("error: {}: {}", code_name(s.code()), s.message())),
            CliError::Connect(m) => Some(format!("error: UNAVAILABLE: {m}")),
            CliError::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe => None,
            CliError::Io(e) => Some(format!("error: writing output: {e}")),
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Rpc(s)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Io(e)
    }
}

/// The canonical gRPC name of a status code, as in `INVALID_ARGUMENT`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
