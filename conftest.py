"""Root of the test suite: loads the server fixtures each backend's tests share."""

import pkgutil

import tests.fixtures

# Every module in tests/fixtures/ is a pytest plugin (servers started for the run).
pytest_plugins = [f"tests.fixtures.{module.name}" for module in pkgutil.iter_modules(tests.fixtures.__path__)]
