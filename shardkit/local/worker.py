"""The body of a local Lambda worker process. Stdlib only, and self-contained.

The executor runs this file (``python -P worker.py REGION/FUNCTION:VERSION``) in the function's
unpacked code directory. ``-P`` keeps this file's own directory off ``sys.path``; the worker puts
the code directory first instead, so the function's own code - including the copy of shardkit in
its package - is what runs, exactly as in Lambda (whose task root is first on the path).

Protocol on two inherited pipe fds (stdout and stderr stay free for the function's logs): frames
of a 4-byte big-endian length and a JSON document. The worker first sends ``{"ready": true}`` (or
an init error), then answers each ``{"event", "request_id", "deadline"}`` with ``{"ok": true,
"result"}`` or ``{"ok": false, "error": {"errorType", "errorMessage", "stackTrace"}}``.
"""

import importlib
import json
import os
import struct
import sys
import time
import traceback


class Context:
    """The parts of Lambda's context object that handlers use."""

    def __init__(self, request_id, deadline):
        self.aws_request_id = request_id
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.invoked_function_arn = os.environ.get("SHARDKIT_FUNCTION_ARN", "")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self._deadline = deadline

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.time()) * 1000))


def _read_exact(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recv(fd):
    (size,) = struct.unpack(">I", _read_exact(fd, 4))
    return json.loads(_read_exact(fd, size))


def _send(fd, message):
    data = json.dumps(message).encode()
    os.write(fd, struct.pack(">I", len(data)) + data)


def _error(exc):
    return {
        "errorType": type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


def main():
    sys.path.insert(0, os.getcwd())  # the task root, as Lambda's runtime has it
    rfd, wfd = (int(x) for x in os.environ.pop("SHARDKIT_WORKER_FDS").split(","))
    module_name, _, attr = os.environ["_HANDLER"].rpartition(".")
    try:
        handler = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # reported to the caller as an init error, as Lambda does
        _send(wfd, {"ready": False, "error": _error(exc)})
        return
    _send(wfd, {"ready": True})
    while True:
        try:
            request = _recv(rfd)
        except EOFError:
            return
        context = Context(request["request_id"], request["deadline"])
        try:
            result = handler(request["event"], context)
            reply = {"ok": True, "result": result}
            json.dumps(reply)  # an answer Lambda could not serialise is an error, as there
        except Exception as exc:
            reply = {"ok": False, "error": _error(exc)}
        sys.stdout.flush()
        sys.stderr.flush()
        _send(wfd, reply)


if __name__ == "__main__":  # run as a file; never imported
    main()
