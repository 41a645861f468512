"""A guard that lets everyone do everything: for tests of the registry's own behaviour, never in izreg/."""

from __future__ import annotations


class OpenGuard:
    def check(self, request, repository, action):
        return None

    def authorize(self, request, access, repository):
        return None
