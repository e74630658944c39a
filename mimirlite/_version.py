"""The one place the version lives: ``pyproject.toml`` reads it (setuptools dynamic version),
``mimirlite.__version__``, ``mimirlite --version`` and identify's agent version import it."""

__version__ = "0.1.0"
