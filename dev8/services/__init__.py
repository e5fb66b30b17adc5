"""The managed services: the process actor, built-ins (sshd, code-server) and the checks
made before anything starts."""
