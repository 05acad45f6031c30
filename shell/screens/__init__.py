"""The shell's screens: the chat (the default screen), process monitor, modules, memfs browser, tool approval."""

from .approval import ApprovalScreen
from .chat import ChatScreen
from .memfs import MemfsScreen
from .modules import ModulesScreen
from .top import TopScreen

__all__ = ["ApprovalScreen", "ChatScreen", "MemfsScreen", "ModulesScreen", "TopScreen"]
