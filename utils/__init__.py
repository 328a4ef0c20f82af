"""MMGR utils package."""
