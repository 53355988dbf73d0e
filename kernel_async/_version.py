"""The package's version, in one place (hatch reads it for the build; CHANGELOG.md says what
each version added)."""

__version__ = "0.3.0.dev0"
