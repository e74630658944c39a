"""Repository-wide pytest setup (tests/ and interop/): the skip allowlist of tests/helpers/skips.py."""

pytest_plugins = ["tests.helpers.skips"]
