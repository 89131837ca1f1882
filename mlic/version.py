"""mlic's version, in a module of its own: exported files record it without importing the package."""
__version__ = "0.1.0"
