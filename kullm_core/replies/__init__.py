"""The one lifecycle of a streamed reply on its way to a chat, behind a small platform seam.

- `ReplyFold`: reply events folded into what the user should see (pure);
- `ReplySink` / `ChatPlatform`: what a platform implements;
- `ReplyRegistry`: reply records with owner-checked leases in Redis;
- `Deliveries`: claim, submit, follow, fold, drive the sink; leases, adoption, stop, /stop.
"""

from kullm_core.redis_text import owner_id
from kullm_core.replies.deliveries import Deliveries
from kullm_core.replies.fold import ReplyFold, fold
from kullm_core.replies.registry import ReplyRegistry
from kullm_core.replies.sink import ChatPlatform, ReplySink, Save
from kullm_core.replies.tuning import DeliveryTuning

__all__ = [
    "ChatPlatform", "Deliveries", "DeliveryTuning", "ReplyFold", "ReplyRegistry", "ReplySink",
    "Save", "fold", "owner_id",
]
