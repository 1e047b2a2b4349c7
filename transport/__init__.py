"""Moving bytes and running commands: SSH sessions, framed control messages, compressed streams."""
