"""Agents acting on one host: the source (freeze, dump, send) and the destination (receive, recreate, restore)."""
