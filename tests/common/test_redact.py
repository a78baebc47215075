"""The one masking rule (hyperhive.common.redact), table-driven."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hyperhive.common import nats_auth
from hyperhive.common.redact import MASK, is_secret_key, mask, mask_data, mask_diff

SEED = nats_auth.new_seed().decode()
ANTHROPIC = "sk-ant-api03-" + "A1b2C3d4" * 8
OAUTH = "sk-ant-oat01-" + "Zz9Yy8Xx" * 8

KEYS = [
    # (key, secret?)
    ("EXTRA_TOKEN", True),
    ("API_TOKEN", True),
    ("ANTHROPIC_API_KEY", True),
    ("CLAUDE_CODE_OAUTH_TOKEN", True),
    ("apiKey", True),
    ("APIKey", True),
    ("key", True),
    ("client_secret", True),
    ("DB_PASSWORD", True),
    ("passwd", True),
    ("NATS_NKEY", True),
    ("seed", True),
    ("Authorization", True),
    ("aws.secret_access_key", True),
    ('"GITHUB_TOKEN"', True),
    ("model", False),
    ("command", False),
    ("keyboard", False),
    ("monkey", False),
    ("input_tokens", False),  # a count of tokens
    ("max_tokens", False),
    ("idempotency_key", False),
    ("HIVE_NATS_SEED_FILE", False),  # where a secret is, not what
    ("operatorTokenFile", False),
    ("token_path", False),
]


@pytest.mark.parametrize(("key", "secret"), KEYS)
def test_secret_key_names(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


CASES = [
    # (name, text, must be gone, must stay)
    (
        "mcp env inline table: every value",
        '[mcp_servers.t]\ncommand = "tools-mcp"\n'
        'env = { EXTRA_TOKEN = "s3cr3t-value", REGION = "eu-west-9" }\n',
        ["s3cr3t-value", "eu-west-9"],
        ['command = "tools-mcp"', f'EXTRA_TOKEN = "{MASK}"', f'REGION = "{MASK}"'],
    ),
    (
        "mcp env table: every value, not the next table's",
        "[mcp_servers.t.env]\nREGION = \"eu-west-9\"\nTOKEN = 'q'\n"
        '\n[mcp_servers.u]\ncommand = "u-mcp"\n',
        ["eu-west-9", "'q'"],
        [f'REGION = "{MASK}"', 'command = "u-mcp"'],
    ),
    (
        "dotted env key",
        '[mcp_servers.t]\nenv.REGION = "eu-west-9"\nargs = ["--verbose"]\n',
        ["eu-west-9"],
        ['args = ["--verbose"]'],
    ),
    (
        "root dotted env key",
        'mcp_servers.t.env.REGION = "eu-west-9"\nmodel = "opus"\n',
        ["eu-west-9"],
        ['model = "opus"'],
    ),
    (
        "secret-named keys anywhere, plain keys kept",
        'model = "opus"\npassword = "hunter2"\napi_key: abc123\n',
        ["hunter2", "abc123"],
        ['model = "opus"'],
    ),
    (
        "multi-line secret string",
        'prompt = "hi"\nclient_secret = """\nline-one\nline-two\n"""\nmodel = "x"\n',
        ["line-one", "line-two"],
        ['prompt = "hi"', 'model = "x"'],
    ),
    (
        "nix env attrset over several lines",
        'environment.variables = {\n  REGION = "eu-west-9";\n  PLAIN = "p";\n};\n'
        'networking.hostName = "h";\n',
        ["eu-west-9", '"p"'],
        ['networking.hostName = "h";'],
    ),
    (
        "json env object",
        '{"mcpServers": {"t": {"command": "c", "env": {"REGION": "eu-west-9"}}}}',
        ["eu-west-9"],
        ['"command": "c"'],
    ),
    (
        "shell and log style",
        f"starting with ANTHROPIC_API_KEY={ANTHROPIC} HIVE_NATS_SEED_FILE=/run/hive/a.seed",
        [ANTHROPIC, ANTHROPIC[:20]],
        ["HIVE_NATS_SEED_FILE=/run/hive/a.seed"],
    ),
    (
        "an Anthropic key in prose",
        f"the key is {ANTHROPIC}, keep it",
        [ANTHROPIC[8:]],
        ["sk-ant-" + MASK, "keep it"],
    ),
    (
        "an OAuth token in prose",
        f"oauth: {OAUTH}",
        [OAUTH[8:]],
        [],
    ),
    ("a NATS seed", f"seed on disk: {SEED}", [SEED, SEED[2:20]], ["(nkey seed)"]),
    (
        "claude's credentials file",
        '{"claudeAiOauth": {"accessToken": "opaque-access-1", "refreshToken": "opaque-2",'
        ' "expiresAt": 1767225600000, "scopes": ["user:inference"]}}',
        ["opaque-access-1", "opaque-2"],
        ['"expiresAt": 1767225600000', '"scopes": ["user:inference"]'],
    ),
    (
        "a bearer header",
        "curl -H 'Authorization: Bearer abcdefghijklmnopqrstuvwxyz'",
        ["abcdefghijklmnopqrstuvwxyz"],
        ["curl -H"],
    ),
    (
        "a URL's password",
        "connect postgres://hive:pa55word@db:5432/hive",
        ["pa55word"],
        ["postgres://hive:", "@db:5432/hive"],
    ),
    (
        "a GitHub token",
        "GH ghp_" + "a" * 36,
        ["a" * 36],
        ["ghp_" + MASK],
    ),
    (
        "a PEM private key",
        "k:\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\nAAAAB3NzaC1yc2E\n"
        "-----END OPENSSH PRIVATE KEY-----\nafter",
        ["b3BlbnNzaC1rZXk", "AAAAB3NzaC1yc2E"],
        ["-----END OPENSSH PRIVATE KEY-----", "after"],
    ),
    (
        "nothing secret: unchanged",
        'model = "claude-opus"\nallowed_tools = ["Bash", "Read"]\n# a comment: fine\n',
        [],
        ['model = "claude-opus"\nallowed_tools = ["Bash", "Read"]\n# a comment: fine\n'],
    ),
]


@pytest.mark.parametrize(
    ("text", "gone", "kept"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_mask(text: str, gone: list[str], kept: list[str]) -> None:
    masked = mask(text)
    for secret in gone:
        assert secret not in masked, masked
    for visible in kept:
        assert visible in masked, masked
    assert mask(masked) == masked  # masking twice changes nothing


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def _diff(tmp_path: Path, before: str, after: str, funcname: bool = True) -> str:
    """The diff approvals would show (with or without its function-context setting)."""
    from hyperhive.approvals.gitops import TABLE_FUNCNAME

    repo = tmp_path / "r"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "agent.toml").write_text(before)
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    (repo / "agent.toml").write_text(after)
    extra = ["-c", TABLE_FUNCNAME] if funcname else []
    return _git(repo, *extra, "diff", "--no-color")


LONG_ENV = "".join(f'V{i} = "value-{i}"\n' for i in range(12))


@pytest.mark.parametrize("funcname", [True, False], ids=["table-context", "plain-git"])
def test_mask_diff_deep_in_an_env_table(tmp_path: Path, funcname: bool) -> None:
    """A hunk that starts far below ``[mcp_servers.t.env]`` still masks its
    values; the operator still sees which key changed."""
    before = 'model = "a"\n\n[mcp_servers.t]\ncommand = "c"\n\n[mcp_servers.t.env]\n' + LONG_ENV
    after = before.replace('V9 = "value-9"', 'V9 = "changed-9"')
    diff = _diff(tmp_path, before, after, funcname)
    masked = mask_diff(diff)
    assert "value-" not in masked and "changed-9" not in masked, masked
    assert f'-V9 = "{MASK}"' in masked and f'+V9 = "{MASK}"' in masked


def test_mask_diff_keeps_plain_changes(tmp_path: Path) -> None:
    before = (
        'model = "a"\nprompt = "p"\n\n[mcp_servers.t]\ncommand = "c"\n'
        'env = { EXTRA_TOKEN = "s3cr3t-value" }\n'
    )
    after = before.replace('model = "a"', 'model = "b"').replace("s3cr3t-value", "n3w-s3cr3t")
    masked = mask_diff(_diff(tmp_path, before, after))
    assert '-model = "a"' in masked and '+model = "b"' in masked
    assert "s3cr3t" not in masked
    assert f'+env = {{ EXTRA_TOKEN = "{MASK}" }}' in masked


def test_mask_diff_new_env_table_on_one_side() -> None:
    diff = (
        "diff --git a/agent.toml b/agent.toml\n--- a/agent.toml\n+++ b/agent.toml\n"
        "@@ -1,2 +1,5 @@\n"
        ' model = "a"\n'
        " [mcp_servers.t]\n"
        "+[mcp_servers.t.env]\n"
        '+REGION = "eu-west-9"\n'
        '+ALSO = "x"\n'
    )
    masked = mask_diff(diff)
    assert "eu-west-9" not in masked and '"x"' not in masked
    assert ' model = "a"' in masked


def test_mask_data() -> None:
    data = {
        "body": f"use {ANTHROPIC}",
        "env": {"REGION": "eu-west-9"},
        "client_secret": "plain-looking",
        "idempotency_key": "k-1",
        "n": 3,
        "items": [{"password": "p"}],
        "usage": {"input_tokens": 5, "cache_read_input_tokens": 2, "max_tokens": 9},
    }
    assert mask_data(data) == {
        "body": "use sk-ant-" + MASK,
        "env": {"REGION": MASK},
        "client_secret": MASK,
        "idempotency_key": "k-1",
        "n": 3,
        "items": [{"password": MASK}],
        "usage": {"input_tokens": 5, "cache_read_input_tokens": 2, "max_tokens": 9},
    }
