"""Integrations: one package per library, each with a patch.py."""
