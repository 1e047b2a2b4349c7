"""cmigrate: live-migrate running Docker containers between Linux hosts with CRIU."""

__version__ = "0.1.0"


def migrate(container: str, source: str, destination: str, **options):
    """Live-migrate ``container`` from ``source`` to ``destination``; see :func:`migrate.migration.migrate`."""
    from migrate.migration import migrate as _migrate
    return _migrate(container, source, destination, **options)
