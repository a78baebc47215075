"""Joining a machine to the hive as a node (``hive join-token``, ``hive node --join``)."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["JoinReply", "JoinRequest", "JoinToken", "JoinTokenRequest", "join_proof"]

MAX_TOKEN_TTL_S = 24 * 3600.0


class JoinTokenRequest(msgspec.Struct, kw_only=True):
    """The operator asks for a token (``hive.admin.nodes.join_token``)."""

    ttl_s: Annotated[float, msgspec.Meta(gt=0, le=MAX_TOKEN_TTL_S)] = 600.0


class JoinToken(msgspec.Struct, kw_only=True):
    """A one-time join token: the seed of a NATS user that may only publish
    ``hive.system.nodes.join``; it is refused after ``expires_at`` or once used."""

    token: str  # the seed (SU...): a secret, shown to the operator only
    public_key: str  # the token's id (its user's public key)
    user: str  # join-<...>
    expires_at: float  # unix time


class JoinRequest(msgspec.Struct, kw_only=True):
    """A new machine asks to become node ``name`` (``hive.system.nodes.join``).

    ``node_key`` is the public key of the seed the machine made for its node
    agent (the seed never leaves it); ``signature`` (base64) is
    :func:`join_proof` signed with the token's seed, so only its holder can
    use the token, whoever else may publish on the subject.
    """

    name: str
    node_key: str
    token_key: str
    signature: str
    hostname: str = ""
    revision: str = ""


class JoinReply(msgspec.Struct, kw_only=True):
    node: str
    user: str  # node-<name>: the NATS user the node agent connects as
    inbox_prefix: str  # _INBOX.node-<name>: the only inbox it may read


def join_proof(name: str, node_key: str, token_key: str) -> bytes:
    """The bytes a join request signs: what it asks for, bound to its token."""
    return b"\0".join([b"hyperhive-join-v1", name.encode(), node_key.encode(), token_key.encode()])
