"""Errors a user can see. Each carries a message and a hint saying what to do next.

This module is a leaf: it imports nothing of ours. The CLI turns these into one red panel, the
server into the OpenAI error body (``status`` / ``type`` / ``code`` below say how).
"""

from __future__ import annotations


class ImpetusError(Exception):
    """Base of every error we expect and explain."""

    status: int = 400
    type: str = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, hint: str | None = None, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.param = param

    def __str__(self) -> str:
        return self.message


class ConfigError(ImpetusError):
    """Bad settings: config.toml, IMPETUS_* variables or flags."""


class InvalidModelName(ImpetusError):
    """A model reference that cannot be parsed."""

    code = "invalid_model"


class ModelNotFound(ImpetusError):
    """A name that is neither local nor in the catalog."""

    status = 404
    code = "model_not_found"

    def __init__(self, message: str, hint: str | None = None, *, suggestions: tuple[str, ...] = ()):
        super().__init__(message, hint, param="model")
        self.suggestions = suggestions


class UnsupportedFormat(ImpetusError):
    """A model format we recognise but cannot run (CoreML, ONNX, PyTorch checkpoints)."""

    code = "unsupported_format"


class CorruptModel(ImpetusError):
    """A model file that fails verification or cannot be parsed."""

    code = "corrupt_model"


class DownloadError(ImpetusError):
    """A pull that failed: network, missing repository or file, disk space."""

    status = 502
    type = "server_error"
    code = "download_failed"


class InsufficientDisk(DownloadError):
    status = 507
    code = "insufficient_storage"


class ContextLengthExceeded(ImpetusError):
    """A prompt longer than the loaded context. The wording is what Cline matches on."""

    code = "context_length_exceeded"

    def __init__(self, n_ctx: int, n_prompt: int):
        super().__init__(
            f"This model's maximum context length is {n_ctx} tokens. "
            f"However, your messages resulted in {n_prompt} tokens.",
            "Shorten the conversation or serve the model with a larger --ctx.",
            param="messages",
        )
        self.n_ctx = n_ctx
        self.n_prompt = n_prompt


class Forbidden(ImpetusError):
    """A request refused for where it comes from (a foreign Host header, a web page's Origin)."""

    status = 403
    code = "forbidden"


class UnsupportedMediaType(ImpetusError):
    """A body that is not sent as JSON where JSON is required."""

    status = 415
    code = "unsupported_media_type"


class RequestCancelled(ImpetusError):
    """The client went away before its request started; nobody reads this answer."""

    status = 499
    code = "client_closed_request"


class ContextUnavailable(ImpetusError):
    """A client asks for more context (num_ctx) than the model can have on this machine."""

    code = "context_length_exceeded"

    def __init__(self, model: str, wanted: int, most: int):
        super().__init__(
            f"{model} cannot have a {wanted}-token context here: at most {most} tokens fit "
            "its training and the memory budget.",
            f"Ask for num_ctx {most} or less, or raise --memory-budget.",
            param="num_ctx",
        )


class InsufficientMemory(ImpetusError):
    """A model that cannot fit in the memory budget, even after evicting idle models."""

    status = 503
    type = "server_error"
    code = "insufficient_memory"

    def __init__(self, message: str, hint: str | None = None, *, retry_after: int = 5):
        super().__init__(message, hint)
        self.retry_after = retry_after


class Overloaded(ImpetusError):
    """A request that could not start within the queue bound."""

    status = 503
    type = "server_error"
    code = "overloaded"

    def __init__(self, message: str, hint: str | None = None, *, retry_after: int = 2):
        super().__init__(message, hint)
        self.retry_after = retry_after


class EngineError(ImpetusError):
    """A backend failure while loading or generating."""

    status = 500
    type = "server_error"
    code = "engine_error"


class BackendUnavailable(ImpetusError):
    """llama-cpp-python or mlx-lm is not importable on this machine."""

    status = 501
    type = "server_error"
    code = "backend_unavailable"


class ServerUnreachable(ImpetusError):
    """The CLI or TUI could not reach a running `impetus serve`."""

    status = 503
    type = "server_error"
    code = "server_unreachable"
