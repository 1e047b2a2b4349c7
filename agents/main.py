"""Entry point of cmigrate-agent (placeholder)."""
def main(argv=None) -> int:
    return 0
