"""PID-1 duties: reaping orphans, the signal policy, the final sweep and the exit codes."""
