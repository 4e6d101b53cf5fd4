"""Thin Ray actors: each builds one plain object and forwards calls. Only actors/, controller and cli import ray."""
