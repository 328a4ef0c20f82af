"""MMGR models package."""
