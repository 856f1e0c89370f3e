"""progress_bar draws on a terminal and stays silent in pipes and files."""

import io

from shared.telemetry import progress_bar


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_silent_when_not_a_tty():
    out = io.StringIO()
    with progress_bar(10, "tokenize", stream=out) as bar:
        bar.update(10)
        assert bar.disable
    assert out.getvalue() == ""


def test_draws_on_a_tty():
    out = FakeTTY()
    with progress_bar(4, "evolve", stream=out) as bar:
        bar.update(4)
    text = out.getvalue()
    assert "evolve" in text and "4/4" in text


def test_explicit_disable_wins():
    out = io.StringIO()
    with progress_bar(2, "forced", stream=out, disable=False) as bar:
        bar.update(2)
    assert "2/2" in out.getvalue()
