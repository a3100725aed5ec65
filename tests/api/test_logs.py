"""Log forging (api/logs.py): control characters in logged paths, ids and headers are escaped."""

import logging

import pytest

from api.logs import escape
from tests.api.conftest import running_app

FORGED = "/x\n2026-11-30 22:00:00,000 INFO api: job FORGED"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("data"), workers=0, api_keys="k") as client:
        yield client


def test_a_path_with_a_newline_cannot_start_a_forged_line(secured, caplog):
    with caplog.at_level(logging.INFO):
        assert secured.get("/x%0a2026-11-30 22:00:00,000 INFO api: job FORGED%00%1b[31m").status_code == 401
    line = next(r.getMessage() for r in caplog.records if "401 for" in r.getMessage())
    assert "\n" not in line and "\x00" not in line and "\x1b" not in line
    assert "/x\\n2026-11-30 22:00:00,000 INFO api: job FORGED\\x00\\x1b[31m" in line


def test_every_logger_escapes_arguments_and_bare_messages(caplog):
    with caplog.at_level(logging.INFO):
        logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", FORGED, "1.1", 404)
        logging.getLogger("api.jobs").info("job %s: %r", "a\rb", {"k": "v"})
        logging.getLogger("rq.worker").info(f"bare {FORGED}")
    messages = [r.getMessage() for r in caplog.records]
    assert all("\n" not in m and "\r" not in m for m in messages)
    assert messages[0].endswith('"GET /x\\n2026-11-30 22:00:00,000 INFO api: job FORGED HTTP/1.1" 404')
    assert messages[1] == "job a\\rb: {'k': 'v'}"


def test_escape_leaves_ordinary_text_alone():
    text = "model iris: created [4, 8, 3] — ünïcode"
    assert escape(text) is text
    assert escape("a\u2028b\x7fc\x85") == "a\\u2028b\\x7fc\\x85"
