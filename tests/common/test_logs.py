"""Structured logs: one JSON object per line with the record's fields."""

import json
import logging

from hyperhive.common.config import LogSettings
from hyperhive.common.logs import setup_logging


def test_json_lines_carry_extra_fields(capsys):
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging(LogSettings(level="INFO", format="json"), "broker")
        logging.getLogger("hyperhive.test").info("sent", extra={"agent": "a", "id": 7})
        lines = [json.loads(x) for x in capsys.readouterr().err.strip().splitlines()]
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert lines[0]["msg"] == "starting" and lines[0]["service"] == "broker"
    assert lines[-1]["msg"] == "sent"
    assert lines[-1]["agent"] == "a" and lines[-1]["id"] == 7
    assert lines[-1]["level"] == "info" and lines[-1]["logger"] == "hyperhive.test"


def test_secrets_are_masked_in_both_formats(capsys):
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    seed = "SU" + "A" * 56
    try:
        for fmt in ("json", "text"):
            setup_logging(LogSettings(level="INFO", format=fmt), "lifecycle")
            logging.getLogger("hyperhive.test").warning(
                "build failed: env = { EXTRA_TOKEN = %r }", "s3cr3t-value", extra={"seed": seed}
            )
        err = capsys.readouterr().err
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert err.count("EXTRA_TOKEN") == 2 and err.count("seed") >= 2
    assert "s3cr3t-value" not in err and seed not in err
