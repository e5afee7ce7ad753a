"""Runs a command on a pseudo-terminal (as a person at a terminal would see it) and copies
everything it draws to stdout; exits with the command's exit code."""

import os
import pty
import sys


def main():
    output = []

    def read(fd):
        data = os.read(fd, 65536)
        output.append(data)
        return data

    status = pty.spawn(sys.argv[1:], read)
    sys.stdout.buffer.write(b"".join(output))
    sys.stdout.flush()
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
