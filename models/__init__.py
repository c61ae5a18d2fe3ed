"""SQLAlchemy models (one per module) and the session factory."""

from models.attempt import Attempt
from models.base import Base
from models.broadcast import Broadcast, BroadcastRecipient
from models.campaign import Campaign
from models.dead_letter import DeadLetter
from models.message import Message
from models.statuses import CampaignStatus, MessageStatus, SkipReason
from models.suppression import Suppression

__all__ = [
    "Attempt",
    "Base",
    "Broadcast",
    "BroadcastRecipient",
    "Campaign",
    "CampaignStatus",
    "DeadLetter",
    "Message",
    "MessageStatus",
    "SkipReason",
    "Suppression",
]
