"""Every type that crosses a process boundary, as ``msgspec.Struct``.

Encoded as JSON so ``nats sub 'hive.>'`` stays readable. New fields always
get defaults; a field's type never changes; readers ignore unknown fields.
"""

from hyperhive.common.wire.approvals import *  # noqa: F403
from hyperhive.common.wire.base import *  # noqa: F403
from hyperhive.common.wire.broker import *  # noqa: F403
from hyperhive.common.wire.events import *  # noqa: F403
from hyperhive.common.wire.join import *  # noqa: F403
from hyperhive.common.wire.lifecycle import *  # noqa: F403
from hyperhive.common.wire.node import *  # noqa: F403
from hyperhive.common.wire.page import *  # noqa: F403
from hyperhive.common.wire.states import *  # noqa: F403
