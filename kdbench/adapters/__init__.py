"""Thin adapters over third-party libraries, each imported lazily."""
