"""Failure and lifecycle policies, one small module each, each with its own table-driven test."""
