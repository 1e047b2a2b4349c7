"""cmigrate: live-migrate running Docker containers between Linux hosts with CRIU."""

__version__ = "0.1.0"
