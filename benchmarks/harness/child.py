"""Fallback child when no C compiler exists: same contract as child.c, plus interpreter start-up."""

import os
import signal
import sys
import time

now = time.time_ns()
if len(sys.argv) > 2 and sys.argv[2] == "--ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
os.write(fd, f"{os.getpid()} {now}\n".encode())
os.close(fd)
while True:
    signal.pause()
