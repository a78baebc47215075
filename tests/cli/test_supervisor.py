"""The supervisor's rules (backoff, cap, state file) on stand-in parts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hyperhive.cli import supervisor
from hyperhive.cli.supervisor import GaveUp, Part, RestartPolicy, Supervisor
from hyperhive.common.errors import Unavailable


class Fake:
    """A part that is down when told, and whose starts may fail."""

    def __init__(self) -> None:
        self.down: str | None = None
        self.starts = 0
        self.fail: str | None = None

    def exited(self) -> str | None:
        return self.down

    def restart(self) -> None:
        self.starts += 1
        if self.fail:
            raise Unavailable(self.fail)
        self.down = None


def _part(name: str, fake: Fake, server: bool = True) -> Part:
    return Part(
        name=name, exited=fake.exited, restart=fake.restart, server=server, hint="see x.log"
    )


@pytest.fixture
def lines() -> list[str]:
    return []


def _supervisor(tmp_path: Path, lines: list[str], **policy: float) -> Supervisor:
    return Supervisor(tmp_path, RestartPolicy(**policy), out=lines.append)  # type: ignore[arg-type]


def test_backoff_doubles_up_to_the_cap():
    policy = RestartPolicy(backoff_s=0.5, backoff_cap_s=5.0)
    assert [policy.delay(n) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 4.0, 5.0]


def test_first_restart_is_immediate_and_one_line(tmp_path, lines):
    sup = _supervisor(tmp_path, lines)
    fake = Fake()
    sup.add(_part("nats", fake))
    sup.check()
    assert fake.starts == 0 and lines == []
    fake.down = "killed by SIGKILL"
    sup.check()
    assert fake.starts == 1
    assert lines == [
        "hive up: nats killed by SIGKILL; restarted (restart 1 of 5 allowed within 60s)"
    ]
    assert (tmp_path / "logs" / "up.log").read_text().rstrip().endswith(lines[0])
    state = supervisor.read_state(tmp_path)
    assert state["nats"]["restarts"] == 1
    assert state["nats"]["last_exit"] == "killed by SIGKILL"
    assert state["nats"]["state"] == "running"


def test_a_second_restart_waits_its_backoff(tmp_path, lines):
    sup = _supervisor(tmp_path, lines, backoff_s=60.0)
    fake = Fake()
    sup.add(_part("nats", fake))
    fake.down = "killed by SIGKILL"
    sup.check()
    fake.down = "killed by SIGKILL"
    sup.check()
    assert fake.starts == 1  # waiting
    assert supervisor.read_state(tmp_path)["nats"]["state"] == "restarting"


def test_a_server_at_its_cap_gives_up_with_one_line(tmp_path, lines):
    sup = _supervisor(tmp_path, lines, limit=2, backoff_s=0.0)
    fake = Fake()
    sup.add(_part("postgres", fake))
    fake.fail = "PostgreSQL did not start: bad data dir"
    fake.down = "postmaster (pid 1) is gone"
    sup.check()
    sup.check()
    assert fake.starts == 2
    assert len(lines) == 2 and all("trying again" in line for line in lines)
    with pytest.raises(GaveUp) as gave_up:
        sup.check()
    message = str(gave_up.value)
    assert message.startswith("postgres cannot be kept up (2 restarts within 60s; last: failed")
    assert "bad data dir" in message
    assert message.endswith("; stopping the hive. See x.log, then run `hive up` again")
    assert "\n" not in message
    assert supervisor.read_state(tmp_path)["postgres"]["state"] == "given up"


def test_a_service_at_its_cap_is_left_down(tmp_path, lines):
    sup = _supervisor(tmp_path, lines, limit=1, backoff_s=0.0)
    fake = Fake()
    sup.add(_part("broker", fake, server=False))
    fake.down = "exited with code 1"
    sup.check()
    fake.down = "exited with code 1"
    sup.check()  # no exception: a service does not stop the hive
    sup.check()
    assert fake.starts == 1
    assert lines[-1].startswith("hive up: broker exited with code 1; restarted 1 times within 60s")
    assert len(lines) == 2


def test_state_of_a_dead_hive_up_is_ignored(tmp_path, lines):
    sup = _supervisor(tmp_path, lines)
    sup.add(_part("nats", Fake()))
    assert "nats" in supervisor.read_state(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    path = tmp_path / supervisor.STATE_FILE
    path.write_text(path.read_text().replace(f'"pid": {os.getpid()}', f'"pid": {dead.pid}'))
    assert supervisor.read_state(tmp_path) == {}
    sup.forget()
    assert not path.exists()


@pytest.mark.parametrize(
    ("code", "text"),
    [(-9, "killed by SIGKILL"), (1, "exited with code 1"), (None, "exited")],
)
def test_describe_returncode(code, text):
    assert supervisor.describe_returncode(code) == text
