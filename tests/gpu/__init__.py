"""The GPU suite (tests/gpu/README.md). A package, so that its conftest does not shadow tests/conftest.py: without
this file both would be the top-level module `conftest`, and `from conftest import ...` in tests/ would break."""
