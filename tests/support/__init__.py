"""Helpers tests share: real processes started and always cleaned up."""
