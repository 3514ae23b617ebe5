"""TaskkernelError and its subclasses: the one exception hierarchy of the service.

Each class carries a stable `code` (the API's `error` field) and an HTTP `status`; the API maps
them to responses in exactly one place (taskkernel.api.errors). Errors in *user* code are never
exceptions here: they are cells with status "error".
"""

from __future__ import annotations


class TaskkernelError(Exception):
    """Root of every error taskkernel raises on purpose."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str = "", **details):
        super().__init__(message or self.__class__.__doc__)
        self.message = message or (self.__class__.__doc__ or "").strip()
        self.details = details

    def to_dict(self) -> dict:
        return {"error": self.code, "message": self.message, **self.details}


class ConfigurationError(TaskkernelError):
    """The configuration cannot work."""

    code = "configuration_error"


class BadRequest(TaskkernelError):
    """The request is malformed."""

    code = "bad_request"
    status = 400


class InvalidJSON(BadRequest):
    """The request body is not valid JSON."""

    code = "invalid_json"


class InvalidField(BadRequest):
    """A field of the request is missing or has the wrong type."""

    code = "invalid_field"


class RequestTooLarge(TaskkernelError):
    """The request body is larger than the API takes (max_request_bytes)."""

    code = "request_too_large"
    status = 413


class UnsupportedMediaType(TaskkernelError):
    """Request bodies must be JSON (Content-Type: application/json)."""

    code = "unsupported_media_type"
    status = 415


class Forbidden(TaskkernelError):
    """The client's address is not allowed."""

    code = "forbidden"
    status = 403


class HostNotAllowed(Forbidden):
    """Without a token, only loopback Host names are answered (a guard against DNS rebinding)."""

    code = "host_not_allowed"


class CrossSiteRequest(Forbidden):
    """A page of another site may not create or drive notebooks."""

    code = "cross_site_request"


class QuotaExceeded(TaskkernelError):
    """A notebook quota is reached."""

    code = "quota_exceeded"
    status = 429


class TooManySubscribers(TaskkernelError):
    """This API process serves as many feed streams as it can."""

    code = "too_many_subscribers"
    status = 503


class UnknownEngine(BadRequest):
    """No engine of that name is defined."""

    code = "unknown_engine"


class NotFound(TaskkernelError):
    """No such resource."""

    code = "not_found"
    status = 404


class NotebookNotFound(NotFound):
    """No such notebook."""

    code = "notebook_not_found"

    def __init__(self, notebook_id: str):
        super().__init__(f"no notebook {notebook_id!r}", notebook_id=notebook_id)
        self.notebook_id = notebook_id


class CellNotFound(NotFound):
    """No such cell."""

    code = "cell_not_found"

    def __init__(self, cell_id: str):
        super().__init__(f"no cell {cell_id!r}", cell_id=cell_id)
        self.cell_id = cell_id


class VariableNotFound(NotFound):
    """The notebook has no such variable."""

    code = "variable_not_found"


class NotSupportedByEngine(BadRequest):
    """The notebook's engine cannot do this: push, pull, checkpoint and restore need a Python
    namespace, which an engine running another Jupyter kernel (kernelspec = ...) does not have."""

    code = "not_supported_by_engine"


class NoCheckpoint(NotFound):
    """The notebook has no checkpoint."""

    code = "no_checkpoint"


class Unauthorized(TaskkernelError):
    """A valid token is required."""

    code = "unauthorized"
    status = 401


class NoWorkerAvailable(TaskkernelError):
    """No idle worker became free in time."""

    code = "no_worker_available"
    status = 503


class EngineUnavailable(TaskkernelError):
    """The notebook's engine did not answer in time."""

    code = "engine_unavailable"
    status = 504


class EngineDied(EngineUnavailable):
    """The notebook's engine process exited (a crash, a kill, memory); its namespace is lost."""

    code = "engine_died"
    status = 503


class EngineRefused(TaskkernelError):
    """The engine process answered a namespace request with an error; `code` is set per instance."""

    status = 400

    def __init__(self, message: str, code: str = "operation_failed", **details):
        super().__init__(message, **details)
        self.code = code


class NotebookGone(TaskkernelError):
    """The notebook is being deleted or its worker is gone."""

    code = "notebook_gone"
    status = 409


class NoInputPending(TaskkernelError):
    """No cell of the notebook waits for input (input_reply without an input_request)."""

    code = "no_input_pending"
    status = 409


class RedisUnavailable(TaskkernelError):
    """Redis is unavailable."""

    code = "redis_unavailable"
    status = 503


class SubmitUncertain(RedisUnavailable):
    """Redis failed while a cell was being recorded: it may have been, and may run."""

    def __init__(self, message: str, *, notebook_id: str, cell_id: str):
        super().__init__(message, notebook_id=notebook_id, cell_id=cell_id, recorded="unknown")
        self.notebook_id, self.cell_id = notebook_id, cell_id


class IdempotencyKeyReused(TaskkernelError):
    """This Idempotency-Key already submitted a cell with other code."""

    code = "idempotency_key_reused"
    status = 422


class RedisOutOfMemory(TaskkernelError):
    """Redis is full (its maxmemory is reached): nothing was written and nothing was evicted."""

    code = "redis_out_of_memory"
    status = 507  # Insufficient Storage: the request may succeed once memory is freed


class NoLease(TaskkernelError):
    """The notebook was not opened with a lease, so there is none to renew."""

    code = "no_lease"
    status = 409


# --- files in a notebook's directory (taskkernel.files) -------------------------------------------

class InvalidPath(BadRequest):
    """A file path must be relative, without '..', '.', empty parts or NUL."""

    code = "invalid_path"


class UnsafePath(BadRequest):
    """The path leads through or to a symlink, a device, a FIFO or a socket: never followed or opened."""

    code = "unsafe_path"


class IsADirectory(BadRequest):
    """The path names a directory: list it with a trailing '/'."""

    code = "is_a_directory"


class NotADirectory(BadRequest):
    """The path (or a part of it) is not a directory."""

    code = "not_a_directory"


class FileNotFound(NotFound):
    """No such file or directory in the notebook."""

    code = "file_not_found"


class FileTooLarge(TaskkernelError):
    """The file is larger than the per-file cap (max_file_bytes)."""

    code = "file_too_large"
    status = 413


class NotebookStorageFull(TaskkernelError):
    """The notebook's files would exceed its cap (max_notebook_files_bytes)."""

    code = "notebook_storage_full"
    status = 413


class RangeNotSatisfiable(TaskkernelError):
    """The requested byte range lies outside the file."""

    code = "range_not_satisfiable"
    status = 416


class NamespaceError(TaskkernelError):
    """An operation failed in the engine for a reason the caller should see; `code` becomes the
    API's error code (through the worker's answer and WORKER_ERRORS)."""

    status = 400

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class ApiError(TaskkernelError):
    """The API (or a proxy in front of it) answered with something other than a 2xx JSON answer."""

    def __init__(self, status: int, body: dict):
        super().__init__(body.get("message", f"HTTP {status}"), **{k: v for k, v in body.items() if k != "message"})
        self.status = status
        self.code = body.get("error", "http_error")


# error codes a worker may answer with -> the exception the API raises (any other: EngineUnavailable)
WORKER_ERRORS = {"variable_not_found": VariableNotFound, "no_checkpoint": NoCheckpoint,
                 "notebook_gone": NotebookGone, "bad_request": BadRequest, "not_supported": BadRequest,
                 "operation_failed": EngineRefused, "notebook_storage_full": NotebookStorageFull,
                 "not_supported_by_engine": NotSupportedByEngine}
