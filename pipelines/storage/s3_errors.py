"""Translate botocore errors into the project's errors at the S3 adapter boundary.

5xx answers, throttling and network failures become RetryableError; other 4xx answers and client
mistakes become PermanentError. A multipart upload found gone while resuming it is an
UploadGoneError, so the caller can start the object again. Only the S3 adapters use this.
"""

from __future__ import annotations

from typing import Final

from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from pipelines.errors import ExportError, PermanentError, RetryableError

# Answers that mean "try again later" whatever their HTTP status.
RETRYABLE_CODES: Final = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling"}
)
# Request timeout and too-many-requests are 4xx but transient.
RETRYABLE_STATUSES: Final = frozenset({408, 429})
# The answer for an upload that was aborted or completed.
NO_SUCH_UPLOAD: Final = "NoSuchUpload"


class UploadGoneError(PermanentError):
    """The multipart upload no longer exists: it was aborted or completed."""


def translate_s3_error(exc: Exception, action: str) -> ExportError:
    """Map a botocore error to RetryableError (5xx, throttling, network) or PermanentError."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        message = f"{action} failed: {code or status} {error.get('Message', '')}".rstrip()
        if code in RETRYABLE_CODES or status >= 500 or status in RETRYABLE_STATUSES:
            return RetryableError(message)
        return PermanentError(message)
    if isinstance(exc, ConnectionError | HTTPClientError):
        return RetryableError(f"{action} failed: {exc}")
    return PermanentError(f"{action} failed: {exc}")


def translate_upload_error(exc: Exception, action: str) -> ExportError:
    """Translate as `translate_s3_error`, but a missing multipart upload is an UploadGoneError."""
    if is_upload_gone(exc):
        return UploadGoneError(f"{action} failed: the multipart upload no longer exists")
    return translate_s3_error(exc, action)


def is_upload_gone(exc: BaseException) -> bool:
    """Return whether a botocore error says the multipart upload was aborted or completed."""
    return (
        isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == NO_SUCH_UPLOAD
    )
