"""cmigrate: live-migrate running Docker containers between Linux hosts with CRIU."""

from transport.version import __version__

__all__ = ["__version__", "migrate", "migrate_many", "evacuate", "balance"]


def migrate(container: str, source: str, destination: str, **options):
    """Live-migrate ``container`` from ``source`` to ``destination``; see :func:`migrate.migration.migrate`."""
    from migrate.migration import migrate as _migrate
    return _migrate(container, source, destination, **options)


def migrate_many(pairs, **options):
    """Many migrations, a few at a time; see :func:`migrate.fleet.migrate_many`."""
    from migrate.fleet import migrate_many as _many
    return _many(pairs, **options)


def evacuate(host: str, targets, **options):
    """Move every running container off ``host`` to ``targets``; see :func:`migrate.fleet.evacuate`."""
    from migrate.fleet import evacuate as _evacuate
    return _evacuate(host, targets, **options)


def balance(hosts, **options):
    """Even out the hosts' load with the fewest moves; see :func:`migrate.fleet.balance`."""
    from migrate.fleet import balance as _balance
    return _balance(hosts, **options)
