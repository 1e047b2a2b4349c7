"""cmigrate: live-migrate running Docker containers between Linux hosts with CRIU."""

from transport.version import __version__

__all__ = ["__version__", "migrate"]


def migrate(container: str, source: str, destination: str, **options):
    """Live-migrate ``container`` from ``source`` to ``destination``; see :func:`migrate.migration.migrate`."""
    from migrate.migration import migrate as _migrate
    return _migrate(container, source, destination, **options)
