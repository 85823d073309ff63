def pytest_generate_tests(metafunc):
    """A test class that sets `codecs = [...]` runs every contract test once per codec."""
    codecs = getattr(metafunc.cls, "codecs", None)
    if codecs and "codec" in metafunc.fixturenames:
        metafunc.parametrize("codec", codecs, ids=[c.name for c in codecs])
