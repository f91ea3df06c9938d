"""Persistent interpreter loop of a sandbox session (runs *inside* the sandbox).

Started as ``python -c <this file's source> <result-fd>`` with only the standard library
available. Code blocks arrive on stdin framed as a 4-byte big-endian length followed by UTF-8
text; after each block a JSON frame ``{"exit_code": n}`` with the same framing is written to
the result fd. A block's stdout and stderr go to the ordinary pipes and are flushed before its
frame is sent, so the parent has them once it sees the frame.
"""

import json
import os
import struct
import sys
import traceback

HEADER = struct.Struct(">I")


def read_exact(fd, size):
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def exit_status(code):
    """The process exit status ``sys.exit(code)`` would have produced."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def run_block(source, namespace):
    try:
        exec(compile(source, "<session>", "exec"), namespace)
    except SystemExit as exc:
        return exit_status(exc.code)
    except BaseException as exc:
        # Skip this loop's own frame so the traceback starts in the snippet.
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        traceback.print_exception(type(exc), exc, tb)
        return 1
    return 0


def main():
    result_fd = int(sys.argv[1])
    os.set_inheritable(result_fd, False)
    command_fd = os.dup(0)
    # The snippet itself gets no stdin, exactly like a one-shot run.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    while True:
        try:
            (size,) = HEADER.unpack(read_exact(command_fd, HEADER.size))
            source = read_exact(command_fd, size).decode("utf-8")
        except EOFError:
            return
        status = run_block(source, namespace)
        sys.stdout.flush()
        sys.stderr.flush()
        frame = json.dumps({"exit_code": status}).encode()
        write_all(result_fd, HEADER.pack(len(frame)) + frame)


if __name__ == "__main__":
    main()
