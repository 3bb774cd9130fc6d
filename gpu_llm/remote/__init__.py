"""Standalone scripts the deploy copies to hosts and runs there (stdlib + their one named dependency)."""
