"""Connections: the tracker actor, and the idle detector that reads it."""
