"""OpenAI's error shape, and the status each typed llmos error maps to over HTTP."""

from __future__ import annotations

import math

from fastapi.responses import JSONResponse

from llmos.kernel.errors import (InvalidRequestError, KernelShutdownError, LlmosError, ModelFormatError,
                                 PromptTooLongError, QueueFullError, StorageError, UnknownAdapterError,
                                 UnknownModelError)
from llmos.kernel.modules.store import ModuleError


def json_error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def error_response(exc: LlmosError) -> JSONResponse:
    param = getattr(exc, "param", None)
    if isinstance(exc, PermissionError):  # a capability not granted: `missing` lets a client ask its user
        missing = sorted(getattr(exc, "missing", ()))
        return JSONResponse({"error": {"message": str(exc), "type": "permission_error", "param": param,
                                       "code": exc.code, "missing": missing}}, status_code=403)
    if isinstance(exc, PromptTooLongError):
        return json_error(413, str(exc), "invalid_request_error", param, exc.code)
    if isinstance(exc, (UnknownModelError, UnknownAdapterError)):
        return json_error(404, str(exc), "invalid_request_error", "model", exc.code)
    if isinstance(exc, LookupError):  # unknown session, tool, ...: the thing named does not exist
        return json_error(404, str(exc), "invalid_request_error", param, exc.code)
    if isinstance(exc, StorageError):
        return json_error(507, str(exc), "server_error", None, exc.code)
    if isinstance(exc, QueueFullError):
        return json_error(429, str(exc), "rate_limit_error", None, exc.code,
                          headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))})
    if isinstance(exc, KernelShutdownError):
        return json_error(503, str(exc), "server_error", None, exc.code)
    if isinstance(exc, (InvalidRequestError, ModelFormatError, ModuleError)):  # a file that is not a model or
        # module: the owner's input
        return json_error(400, str(exc), "invalid_request_error", param, exc.code)
    return json_error(500, str(exc), "server_error", None, exc.code)
