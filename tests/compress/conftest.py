from tests.compress.contract import declares


def pytest_generate_tests(metafunc):
    """A test class that sets `codecs = [...]` runs every contract test once per codec that
    owes it: a check marked `@declared(promise)` only for the codecs that make the promise."""
    codecs = getattr(metafunc.cls, "codecs", None)
    if codecs and "codec" in metafunc.fixturenames:
        owed = [c for c in codecs if declares(metafunc.function, c)]
        metafunc.parametrize("codec", owed, ids=[c.name for c in owed])
