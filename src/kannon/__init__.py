"""Kannon: a cloud-native transactional mail sender (package root; owns the version string)."""

__version__ = "0.1.0"
