"""MMGR data package."""
