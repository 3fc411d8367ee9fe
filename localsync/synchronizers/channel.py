"""0.1's path of :mod:`localsync.channel.synchronizer`."""

from localsync.channel.synchronizer import ChannelSynchronizer, create_channel_synchronizer
from localsync.errors import ChannelError

__all__ = ["ChannelError", "ChannelSynchronizer", "create_channel_synchronizer"]
