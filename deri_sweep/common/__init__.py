"""Plumbing shared by every layer: the strict config loader, safe file storage, provenance."""
