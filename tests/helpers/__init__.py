"""Plain code the tests share (fakes, made-up data and runs); fixtures live in tests/conftest.py."""
