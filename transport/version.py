"""cmigrate's version, at the bottom where every layer (and both ends of the agent protocol) can read it."""
__version__ = "0.1.0"
